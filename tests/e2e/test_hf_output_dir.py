"""A real HF Trainer ``output_dir`` (fwprobe's ``hf healthy --variant log10``: report_to tensorboard, logging and
checkpoints every 10 / 250 steps) scanned from the run folder itself: ``output_dir/runs/<stamp>/`` is the only
run, and its optimizer checkpoints (``output_dir/checkpoint-N/``) are two levels up — found and said, as they are
when ``output_dir`` is named; with a second stamp in ``runs/`` (another or a resumed training) none is lent."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from adamdiag.pipeline.scan import scan_paths

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    sys.path.insert(0, str(ROOT / "tools" / "fwprobe"))
    try:
        import fwprobe
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("hf") / "out"
    out.mkdir()
    fwprobe.run_hf("healthy", "log10", out)
    return out


def _lent(rep) -> list[str]:
    return [
        f.evidence["checkpoints_root"] for f in rep.findings if f.id == "AD901" and "beside the run's logs" in f.message
    ]


def test_the_run_folder_named_finds_the_output_dirs_checkpoints(output_dir):
    (stamp,) = (output_dir / "runs").iterdir()
    (rep,) = scan_paths([stamp]).runs
    assert "checkpoints" in rep.sources and _lent(rep) == [str(output_dir)]
    (named,) = scan_paths([output_dir]).runs  # the same as naming output_dir
    assert (rep.verdict, rep.confidence) == (named.verdict, named.confidence) == ("healthy", "high")


def test_not_with_another_stamp_beside_it(output_dir, tmp_path):
    other = tmp_path / "out"
    shutil.copytree(output_dir, other)
    (stamp,) = (other / "runs").iterdir()
    shutil.copytree(stamp, other / "runs" / "Dec08_00-00-00_other")
    (rep,) = scan_paths([stamp]).runs
    assert "checkpoints" not in rep.sources and not _lent(rep)
