"""Sharded checkpoints at scale (issue 13 item 7): the scaler's layout is the real writers', and
``--jobs`` never changes a result.

The fixtures under ``tests/fixtures/sharded/`` were written by the real libraries with 4 gloo ranks
(``tools/runlab/sharded_scale.py real``): ``dcp_fsdp4`` (FSDP2 + ``torch.distributed.checkpoint``)
and ``zero3_4`` (DeepSpeed 0.19.8 ZeRO-3, CPU accelerator). The multi-GB checkpoints of the bench
(``bench/sharded_checkpoint.py``) come from ``scale_dcp`` / ``scale_zero3``; here the same code,
fed the fixtures' own tensors at k = 1, must give back every file byte for byte.
"""

from __future__ import annotations

import filecmp
import json
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamdiag.cli.app import app
from adamdiag.pipeline import summary
from adamdiag.pipeline.summary import summarize_checkpoint
from adamdiag.results.inspect import to_json_obj

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "runlab"))
import sharded_scale as ss  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "sharded"


def _files(d: Path) -> list[Path]:
    return sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())


def _scaler(kind: str):
    if kind == "zero3_4":
        # DeepSpeed's pickles name its classes: re-saving them exactly as it did needs them importable
        pytest.importorskip("deepspeed")
        return ss.scale_zero3
    return ss.scale_dcp


@pytest.mark.parametrize("kind", ["dcp_fsdp4", "zero3_4"])
def test_scaler_gives_back_the_real_checkpoint_byte_for_byte(tmp_path, kind):
    out = tmp_path / kind
    # the template's full tensors, cut into rank pieces / padded / indexed again by the scaler's rules
    _scaler(kind)(FIX / kind, out, 1, ss.template_values(FIX / kind))
    assert _files(out) == _files(FIX / kind) and len(_files(out)) >= 5
    different = [str(f) for f in _files(out) if not filecmp.cmp(out / f, FIX / kind / f, shallow=False)]
    if ".metadata" in different:
        # pickle's bytes depend on the Python that writes them (Debian's 3.11.2 pickles enums as
        # getattr(cls, name), CPython 3.12 by value): then the metadata itself must be equal
        from adamdiag.io.checkpoints.dcp import _read_metadata

        assert _read_metadata(out, False) == _read_metadata(FIX / kind, False)
        different.remove(".metadata")
    assert different == []


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """Both fixtures scaled by k = 2 with the same synthetic full tensors."""
    d = tmp_path_factory.mktemp("scaled")
    out = {}
    for kind in ("dcp_fsdp4", "zero3_4"):
        try:
            _scaler(kind)(FIX / kind, d / kind, 2, ss.synth)
        except pytest.skip.Exception:
            continue
        out[kind] = d / kind
    return out


def _json(s) -> str:
    return json.dumps(to_json_obj([s], []), sort_keys=True)


@pytest.mark.parametrize("kind", ["dcp_fsdp4", "zero3_4"])
def test_jobs_do_not_change_the_result(scaled, kind, monkeypatch):
    if kind not in scaled:
        pytest.skip("deepspeed not importable")
    one = summarize_checkpoint(scaled[kind], jobs=1)
    assert len(one.tensors) == 36 and one.layout in ("dcp", "deepspeed-zero3")
    assert tuple(one.tensors[0].shape) == (16, 16)  # every dimension × 2
    many = summarize_checkpoint(scaled[kind], jobs=3)
    assert _json(many) == _json(one)
    # with a byte budget below one tensor, tensors go one at a time — and still the same result
    active, most = [0], [0]
    lock = threading.Lock()
    inner = summary._summarize_entry

    def counting(*a, **kw):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return inner(*a, **kw)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(summary, "_summarize_entry", counting)
    monkeypatch.setattr(summary, "MIN_INFLIGHT_BYTES", 1)
    monkeypatch.setattr(summary, "INFLIGHT_FRACTION", 0.0)
    assert _json(summarize_checkpoint(scaled[kind], jobs=4)) == _json(one)
    assert most[0] == 1


def test_dcp_and_zero3_of_the_same_tensors_give_the_same_statistics(scaled):
    if len(scaled) < 2:
        pytest.skip("deepspeed not importable")
    a = to_json_obj([summarize_checkpoint(scaled["dcp_fsdp4"], jobs=2)], [])["checkpoints"][0]["tensors"]
    b = to_json_obj([summarize_checkpoint(scaled["zero3_4"], jobs=2)], [])["checkpoints"][0]["tensors"]
    assert [t["name"] for t in a] == [t["name"] for t in b]
    # DCP keeps the optimizer under "optim", DeepSpeed at the top: the only difference
    strip = [{k: v for k, v in t.items() if k != "optimizer"} for t in a]
    assert strip == [{k: v for k, v in t.items() if k != "optimizer"} for t in b]


def test_inspect_jobs_option(scaled):
    path = scaled["dcp_fsdp4"]
    runner = CliRunner()
    r1 = runner.invoke(app, ["inspect", str(path), "--format", "json", "--jobs", "1"])
    r3 = runner.invoke(app, ["inspect", str(path), "--format", "json", "-j", "3"])
    assert r1.exit_code == 0 and r3.exit_code == 0, r1.output + r3.output
    assert json.loads(r1.stdout) == json.loads(r3.stdout)
    bad = runner.invoke(app, ["inspect", str(path), "--jobs", "0"])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_scaler_matches_a_live_4_rank_dcp_save(tmp_path):
    """The same check against a checkpoint written now by this torch (4 gloo processes, ~20-60 s)."""
    ss.write_real(tmp_path / "real", ("dcp_fsdp4",))
    real = tmp_path / "real" / "dcp_fsdp4"
    ss.scale_dcp(real, tmp_path / "again", 1, ss.template_values(real))
    assert [str(f) for f in _files(real) if not filecmp.cmp(real / f, tmp_path / "again" / f, shallow=False)] == []
