"""JUnit XML: one testcase per run, failing when the run has a finding at/above ``fail_on`` —
the same rule as ``check``'s exit code, so a CI dashboard and the exit status never disagree."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from adamdiag.results.report import SEVERITY_RANK, Report


def render_junit(report: Report, fail_on: str = "error") -> str:
    threshold = SEVERITY_RANK[fail_on]
    root = ET.Element("testsuites", name="adamdiag", tests=str(len(report.runs)))
    suite = ET.SubElement(root, "testsuite", name="adamdiag", tests=str(len(report.runs)))
    failures = 0
    for r in report.runs:
        case = ET.SubElement(suite, "testcase", classname="adamdiag.check", name=r.run)
        failing = [f for f in r.findings if SEVERITY_RANK[f.severity] >= threshold]
        if failing:
            failures += 1
            fail = ET.SubElement(case, "failure", message=f"{r.verdict}: {failing[0].message}", type=r.verdict)
            fail.text = "\n".join(f"{f.id} {f.severity} step={f.step} {f.message}" for f in failing)
        rest = [f for f in r.findings if f not in failing]
        if rest:  # below the threshold: shown, not failing
            ET.SubElement(case, "system-out").text = "\n".join(f"{f.id} {f.severity} {f.message}" for f in rest)
    for el in (root, suite):
        el.set("failures", str(failures))
        el.set("errors", "0")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")
