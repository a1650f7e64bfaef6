"""Small formatting helpers shared by the renderers."""

from __future__ import annotations

from collections import Counter

from adamdiag.results.report import Finding, Report, RunReport

VERDICT_TEXT = {
    "v_collapse": "v collapse (second moment decayed, then gradients re-grew)",
    "lr_too_high": "learning rate too high",
    "bad_batch": "bad batch (one-step spike)",
    "nonfinite": "non-finite values (NaN/Inf)",
    "eps_too_large": "eps too large (Adam behaves like SGD)",
    "healthy": "healthy",
    "inconclusive": "inconclusive",
}


def fmt_step(step: int | None) -> str:
    return "-" if step is None else str(step)


def lead(run: RunReport) -> str:
    lt = run.lead_time
    return "-" if lt is None else f"{lt} steps"


def verdict_line(run: RunReport) -> str:
    """ "v collapse (...) — confidence high, also fits: lr_too_high, verified by replay"."""
    text = VERDICT_TEXT.get(run.verdict, run.verdict)
    bits = [f"confidence {run.confidence}"]
    if run.alternative:
        bits.append(f"also fits: {run.alternative}")
    if run.verdict_source == "replay":
        bits.append("decided by replay")
    return f"{text} — {', '.join(bits)}"


def tags_line(run: RunReport) -> str | None:
    """Which tags the diagnosis read: "loss 'train/loss', grad norm 'train/grad_norm'"."""
    if not run.loss_tags and not run.grad_norm_tag:
        return None
    parts = []
    if run.loss_tags:
        parts.append("loss " + ", ".join(f"'{t}'" for t in run.loss_tags))
    parts.append(f"grad norm '{run.grad_norm_tag}'" if run.grad_norm_tag else "no grad-norm tag")
    return ", ".join(parts)


def verification_lines(run: RunReport) -> list[str]:
    """The --verify replay in a few lines: where it started, how far, each variant's outcome."""
    v = run.verification
    if not v or "variants" not in v:
        return []
    head = (
        f"replayed from step {v['start_step']} for {v['horizon_steps']} steps "
        f"({'reproduces the log' if v['fidelity']['reproduced'] else 'does NOT reproduce the log'}); "
        f"confirms: {'yes' if v['confirms'] else 'no' if v['confirms'] is False else 'undecided'}"
        + (f", best: {v['best']}" if v.get("best") else "")
    )
    rows = []
    for x in v["variants"]:
        at = f" at step {x['blowup_step']}" if x.get("blowup_step") is not None else ""
        cut = " (cut short)" if x.get("truncated") else ""
        rows.append(f"{x['name']}: {x['outcome']}{at}{cut}")
    return [head, "; ".join(rows)]


def recommendation_line(run: RunReport) -> str | None:
    rec = run.recommendation
    if not rec:
        return None
    msg = rec.get("message") or rec.get("action", "")
    if rec.get("verify"):
        msg += f"\n  verify: {rec['verify']}"
    return msg


def elide(name: str, width: int) -> str:
    """``name`` cut to ``width`` characters in the middle: sweep runs differ at the end (seed,
    lr) and share the start, so both ends are kept."""
    if len(name) <= width:
        return name
    keep = max(width - 1, 2)
    head = keep // 3
    return name[:head] + "…" + name[len(name) - (keep - head) :]


def display_names(runs: list[str], width: int = 40) -> tuple[list[str], str]:
    """(short names, the common prefix stripped) for a table of runs.

    The common leading directories are stripped (never a whole name), then long names are elided
    in the middle; the width grows until no two different runs share a short name."""
    parts = [r.replace("\\", "/").rstrip("/").split("/") for r in runs]
    k = 0
    if len(runs) > 1:
        shortest = min(len(p) for p in parts) - 1
        while k < shortest and len({tuple(p[: k + 1]) for p in parts}) == 1:
            k += 1
    names = ["/".join(p[k:]) for p in parts]
    prefix = "/".join(parts[0][:k]) + "/" if k else ""
    longest = max((len(n) for n in names), default=0)
    w = width
    out = [elide(n, w) for n in names]
    while len(set(out)) < len(set(names)) and w < longest:
        w += 4
        out = [elide(n, w) for n in names]
    return out, prefix


def verdict_counts(report: Report) -> str:
    """``3 runs: 1 v_collapse, 1 lr_too_high, 1 healthy`` (most frequent first)."""
    counts = Counter(r.verdict for r in report.runs)
    body = ", ".join(f"{n} {v}" for v, n in counts.most_common())
    return f"{len(report.runs)} runs: {body}"


def repeated_findings(report: Report, min_runs: int = 3) -> dict[tuple[str, str, str], int]:
    """Non-error findings with the same id and message in at least ``min_runs`` runs -> run count.

    A 2000-run scan without checkpoints would otherwise print the same note 2000 times; the text
    renderer shows these once, with "× N"."""
    if len(report.runs) < min_runs:
        return {}
    c: Counter = Counter()
    for r in report.runs:
        seen = {(f.id, f.severity, f.message.replace(r.run, "<run>")) for f in r.findings if f.severity != "error"}
        c.update(seen)
    return {k: n for k, n in c.items() if n >= min_runs}


def input_problem_lines(finding: Finding, run: str) -> list[str] | None:
    """An AD902 "N input problem(s)" finding as one line per problem instead of the first few: the
    finding's evidence lists them (up to MAX_EVIDENCE_ITEMS). Problems that differ only in numbers (a
    CRC mismatch at 40 byte offsets of one file) are one line with "× N alike"; the same problem word for
    word in several files is one line naming the count, the first file and the last; a path inside the run
    is shown relative to it (the run heads the block). None for any other finding."""
    import re
    from collections import Counter

    listed = finding.evidence.get("warnings") if isinstance(finding.evidence, dict) else None
    if finding.id != "AD902" or not isinstance(listed, list) or not listed:
        return None
    m = re.match(r"(\d+) input problem", finding.message)
    if m is None:
        return None
    total = int(m.group(1))
    prefix = run.rstrip("/") + "/"

    def key(w: str) -> str:
        # the file stays part of the key (the same damage in two files is two lines); numbers do not
        where, _, what = w.partition(": ")
        return where + ": " + re.sub(r"\d+", "#", what) if what else re.sub(r"\d+", "#", w)

    msgs = [str(w).removeprefix(prefix) for w in listed]
    counts = Counter(key(w) for w in msgs)
    first: dict[str, str] = {}
    for w in msgs:
        first.setdefault(key(w), w)
    # The same problem, word for word, in several files (20 checkpoints that each need --trust-checkpoint
    # for the same class): one line naming how many files, the first and the last.
    files_of: dict[str, list[str]] = {}
    for k, n in counts.items():
        where, sep, what = first[k].partition(": ")
        if n == 1 and sep:
            files_of.setdefault(what, []).append(where)
    lines = [f"{total} input problem(s):"]
    for k, n in counts.items():
        where, _, what = first[k].partition(": ")
        files = files_of.get(what, []) if n == 1 else []
        if len(files) < 2:
            lines.append(first[k] if n == 1 else f"{first[k]} (× {n} alike)")
        elif where == files[0]:  # the group's line, where its first file was
            lines.append(f"{len(files)} files ({files[0]} … {files[-1]}): {what}")
    if total > len(listed):
        lines.append(f"… and {total - len(listed)} more not kept in the report")
    return lines
