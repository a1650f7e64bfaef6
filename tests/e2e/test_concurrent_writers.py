"""Every rank of a distributed run writing its own event file into one folder (a SummaryWriter opened without a
rank-0 guard) — TensorBoard draws the ranks' curves as one zigzag. The reader keeps reading them as it reads a
restart (the later file's values from its first step on) and now says what it saw: an AD901 info naming the
files. A restart's files follow each other in time, and a second writer that logs other tags (an eval process,
adamdiag's monitor) shares no tag: neither is called concurrent."""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from pathlib import Path

from adamdiag.io.events import read_run


def _write(out: str, seed: int, tags: tuple[str, ...], steps: range, pause: float = 0.0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(out)
    for i in steps:
        for t in tags:
            w.add_scalar(t, 1.0 / math.sqrt(i) + 0.01 * seed, i)
        if pause:
            time.sleep(pause)
    w.close()


def _processes(out: Path, jobs: list[tuple[int, tuple[str, ...], range]]) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write, args=(str(out), seed, tags, steps, 0.002)) for seed, tags, steps in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0


def test_ranks_writing_into_one_folder_are_named(tmp_path: Path) -> None:
    _processes(tmp_path, [(0, ("train/loss",), range(1, 101)), (1, ("train/loss",), range(1, 101))])
    ev = read_run(tmp_path)
    (note,) = [n for n in ev.notes if "written at the same time" in n]
    assert note.startswith("2 event files") and all(Path(f).name in note for f in ev.files)
    # read as a restart: the later file's curve, one value per step
    s = ev.scalars
    assert s.loc[s["tag"] == "train/loss", "step"].nunique() == 100


def test_a_writer_of_other_tags_is_not_concurrent(tmp_path: Path) -> None:
    _processes(tmp_path, [(0, ("train/loss",), range(1, 101)), (1, ("adamdiag/global/r",), range(1, 101))])
    assert not [n for n in read_run(tmp_path).notes if "written at the same time" in n]


def test_a_restart_is_not_concurrent(tmp_path: Path) -> None:
    _write(str(tmp_path), 0, ("train/loss",), range(1, 81))
    time.sleep(0.05)
    _write(str(tmp_path), 1, ("train/loss",), range(60, 101))  # resumed from step 60 in a new file
    ev = read_run(tmp_path)
    assert len(ev.files) == 2
    assert not [n for n in ev.notes if "written at the same time" in n]
