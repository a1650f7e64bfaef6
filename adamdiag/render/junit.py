"""JUnit XML: one testcase per run, failing when the run has error findings (CI dashboards)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from adamdiag.results.report import Report


def render_junit(report: Report) -> str:
    suite = ET.Element("testsuite", name="adamdiag", tests=str(len(report.runs)))
    failures = 0
    for r in report.runs:
        case = ET.SubElement(suite, "testcase", classname="adamdiag.scan", name=r.run)
        errors = [f for f in r.findings if f.severity == "error"]
        if errors:
            failures += 1
            fail = ET.SubElement(case, "failure", message=f"{r.verdict}: {errors[0].message}", type=r.verdict)
            fail.text = "\n".join(f"{f.id} step={f.step} {f.message}" for f in errors)
    suite.set("failures", str(failures))
    return ET.tostring(suite, encoding="unicode")
