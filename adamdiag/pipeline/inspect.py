"""Checkpoints in, the inspect result out: a summary per checkpoint and the decay-ratio pairs of
consecutive ones (v_b/(β2^Δ·v_a) ≈ 1 means v decayed without new gradient)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adamdiag.console import stderr_progress

if TYPE_CHECKING:
    from adamdiag.io.checkpoints.hyper import Assumptions


def collect(
    paths: list[Path],
    *,
    convention: str | None,
    trust: bool,
    latest: bool = False,
    assume: Assumptions | None = None,
    jobs: int | None = None,
) -> tuple[list, list[dict]]:
    """Summaries of every checkpoint named (directories are searched) and the consecutive pairs.
    ``latest``: of each path, only the checkpoint with the highest step (said on stderr).
    ``assume``: values for hyperparameters a checkpoint does not store (``--assume-*``); ``jobs``:
    tensors read in parallel (``--jobs``)."""
    from adamdiag.console import info
    from adamdiag.errors import InputError
    from adamdiag.io.checkpoints import find_checkpoints
    from adamdiag.io.checkpoints.latest import latest_checkpoint
    from adamdiag.pipeline.summary import compare_checkpoints, summarize_checkpoint

    files: list[Path] = []
    for p in paths:
        if latest:
            pick = latest_checkpoint(Path(p), trust=trust)
            info(pick.describe(Path(p)))
            files.append(pick.path)
            continue
        found = find_checkpoints(Path(p))
        if not found:
            raise InputError(f"{p}: no optimizer checkpoint found under it")
        files += found
    summaries = []
    with stderr_progress() as prog:
        for f in files:
            task = prog.add_task(f"reading {f.name}", total=None)

            def cb(done: int, total: int, label: str, task=task) -> None:
                prog.update(task, completed=done, total=total)

            summaries.append(
                summarize_checkpoint(f, trust=trust, convention=convention, progress=cb, assume=assume, jobs=jobs)
            )
            prog.remove_task(task)
        order = sorted(range(len(files)), key=lambda i: (summaries[i].step is None, summaries[i].step or 0, i))
        files = [files[i] for i in order]
        summaries = [summaries[i] for i in order]
        pairs = []
        for (fa, sa), (fb, sb) in zip(zip(files, summaries), zip(files[1:], summaries[1:])):
            if sa.step is None or sb.step is None or sb.step <= sa.step:
                continue
            pairs.append(compare_checkpoints(fa, fb, trust=trust, assume=assume))
    return summaries, pairs
