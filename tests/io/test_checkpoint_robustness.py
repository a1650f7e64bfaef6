"""Damaged and hostile checkpoints: never a hang, never silently wrong statistics, one bad file never
costs the other runs their diagnosis.

* a FIFO / socket named ``*.pt`` under a run is skipped unopened, with a warning naming it (AD904);
* a flipped bit in a tensor's zip member is caught by the member's CRC (AD403 naming the tensor);
* a negative exp_avg_sq is corruption (AD403), not "never received a gradient";
* a checkpoint that needs full unpickling is a per-run warning naming the refused global;
* ``plot`` takes ``--trust-checkpoint`` like the other commands.
"""

from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path

import pytest
import torch
from blocking_util import in_time
from events_util import write_torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import InputError
from adamdiag.io.checkpoints import find_checkpoints, open_checkpoint
from adamdiag.pipeline.scan import checkpoint_roots, scan_paths
from adamdiag.pipeline.summary import summarize_checkpoint


def _adam_checkpoint(path: Path, *, seed: int = 0) -> dict:
    """A real Adam checkpoint ({model, optimizer, step}) after two steps; returns what was saved."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
    obj = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return obj


def _run(root: Path, name: str, *, seed: int = 0) -> Path:
    run = root / name
    write_torch(run, 30)
    _adam_checkpoint(run / "checkpoints" / "step_000020.pt", seed=seed)
    return run


# --- non-regular files ----------------------------------------------------------------------------
def test_fifo_and_socket_named_pt_are_skipped_unopened(tmp_path):
    run = _run(tmp_path, "run")
    ck_dir = run / "checkpoints"
    os.mkfifo(ck_dir / "step_000025.pt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(ck_dir / "step_000026.pt"))
    try:
        skipped: list[str] = []
        found = in_time(lambda: find_checkpoints(ck_dir, skipped=skipped))
        assert [p.name for p in found] == ["step_000020.pt"]
        assert any("step_000025.pt: a FIFO" in s for s in skipped)
        assert any("step_000026.pt: a socket" in s for s in skipped)
        report = in_time(lambda: scan_paths([run]))
        (r,) = report.runs
        assert any("step_000025.pt" in w and "FIFO" in w for w in r.warnings)
        with pytest.raises(InputError, match="a FIFO, not a checkpoint"):
            in_time(lambda: open_checkpoint(ck_dir / "step_000025.pt"))
    finally:
        sock.close()


# --- zip CRC ----------------------------------------------------------------------------------------
def _flip_bit_in(path: Path, tensor: torch.Tensor, dst: Path) -> str:
    """Copy of ``path`` with one bit flipped inside the zip member that stores ``tensor``; returns the
    member's name (found by content: torch names members by storage key)."""
    data = tensor.numpy().tobytes()
    with zipfile.ZipFile(path) as zf:
        member = next(i.filename for i in zf.infolist() if zf.read(i.filename) == data)
    raw = bytearray(path.read_bytes())
    raw[raw.index(data) + len(data) // 2] ^= 0x10
    dst.write_bytes(bytes(raw))
    return member


def test_corrupted_tensor_member_is_caught_by_its_crc(tmp_path):
    good = tmp_path / "good.pt"
    saved = _adam_checkpoint(good)
    bad = tmp_path / "bad.pt"
    member = _flip_bit_in(good, saved["optimizer"]["state"][2]["exp_avg_sq"], bad)
    s = summarize_checkpoint(bad)
    hit = [t for t in s.tensors if t.corrupt]
    assert [t.label for t in hit] == ["2.weight"]
    assert member in hit[0].corrupt and "exp_avg_sq" in hit[0].corrupt
    assert any("AD403" in w and "`2.weight`" in w and "CRC" in w for w in s.warnings)
    assert not any(t.corrupt for t in summarize_checkpoint(good).tensors)  # no false alarm


def test_corrupted_checkpoint_in_a_scan_is_ad403(tmp_path):
    run = _run(tmp_path, "run")
    ck = run / "checkpoints" / "step_000020.pt"
    saved = torch.load(ck, weights_only=True)
    tmp = tmp_path / "bad.pt"
    _flip_bit_in(ck, saved["optimizer"]["state"][0]["exp_avg"], tmp)
    ck.write_bytes(tmp.read_bytes())
    (r,) = scan_paths([run]).runs
    ad403 = [f for f in r.findings if f.id == "AD403"]
    assert ad403 and "`0.weight`" in ad403[0].message


# --- negative v ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["1", ""])
def test_negative_v_is_corruption_not_a_missing_gradient(tmp_path, monkeypatch, kernel):
    monkeypatch.setenv("ADAMDIAG_NO_KERNEL", kernel)
    path = tmp_path / "neg.pt"
    obj = _adam_checkpoint(path)
    obj["optimizer"]["state"][0]["exp_avg_sq"][0, :3] = -1e-9
    torch.save(obj, path)
    s = summarize_checkpoint(path)
    t = next(t for t in s.tensors if t.label == "0.weight")
    assert t.negative_v == 3 and t.frac_v_zero == 0.0
    assert any("AD403" in w and "`0.weight`" in w for w in s.warnings)
    res = CliRunner().invoke(app, ["inspect", str(path)])
    assert "never received a gradient" not in res.output and "v < 0" in res.output


# --- checkpoints that need full unpickling ----------------------------------------------------------
class _Payload:
    """Pickles as a call of os.system: never executed here (adamdiag refuses to unpickle it)."""

    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_one_untrusted_checkpoint_is_a_per_run_warning_naming_the_global(tmp_path):
    _run(tmp_path, "good")
    evil = _run(tmp_path, "evil", seed=1)
    ck = evil / "checkpoints" / "step_000020.pt"
    obj = torch.load(ck, weights_only=True)
    obj["hook"] = _Payload()
    torch.save(obj, ck)
    report = scan_paths([tmp_path])
    by_run = {Path(r.run).name: r for r in report.runs}
    assert set(by_run) == {"good", "evil"}
    assert "checkpoints" in by_run["good"].sources and "checkpoints" not in by_run["evil"].sources
    msg = " ".join(by_run["evil"].warnings)
    assert "GLOBAL posix.system" in msg and "--trust-checkpoint" in msg
    res = CliRunner().invoke(app, ["scan", str(tmp_path), "--format", "json"])
    assert res.exit_code != 2, res.output


def test_plot_accepts_trust_checkpoint(tmp_path):
    run = _run(tmp_path, "run")
    out = tmp_path / "p.png"
    res = CliRunner().invoke(app, ["plot", str(run), "-o", str(out), "--trust-checkpoint"])
    assert res.exit_code == 0, res.output
    assert out.is_file()


# --- --checkpoints with several runs ----------------------------------------------------------------
def test_one_checkpoints_folder_for_several_runs_is_an_error_unless_it_maps_per_run(tmp_path):
    runs = tmp_path / "runs"
    a, b = runs / "a", runs / "b"
    write_torch(a, 30)
    write_torch(b, 30)
    ckpts = tmp_path / "ckpts"
    _adam_checkpoint(ckpts / "step_000020.pt")
    with pytest.raises(InputError, match=r"one subfolder per run.*missing: a, b"):
        scan_paths([runs], checkpoints=ckpts)
    _adam_checkpoint(ckpts / "a" / "step_000020.pt", seed=1)
    _adam_checkpoint(ckpts / "b" / "step_000020.pt", seed=2)
    assert checkpoint_roots(ckpts, [a, b]) == {a: ckpts / "a", b: ckpts / "b"}
    by_run = {Path(r.run).name: r for r in scan_paths([runs], checkpoints=ckpts).runs}
    assert "checkpoints" in by_run["a"].sources and "checkpoints" in by_run["b"].sources
    assert checkpoint_roots(ckpts / "b", [a]) == {a: ckpts / "b"}  # one run: the folder is its own


# --- inspect A B ---------------------------------------------------------------------------------------
def test_inspect_two_checkpoints_warns_on_same_file_and_other_hyperparameters(tmp_path):
    a = tmp_path / "a" / "step_000020.pt"
    _adam_checkpoint(a)
    torch.manual_seed(1)  # another run: other eps, other model
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-3)
    model(torch.randn(8, 16)).pow(2).mean().backward()
    opt.step()
    b = tmp_path / "b" / "step_000040.pt"
    b.parent.mkdir()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 40}, b)

    from adamdiag.pipeline.summary import compare_checkpoints

    out = compare_checkpoints(a, b)
    assert any("hyperparameters differ" in w and "eps" in w and "1e-08 → 0.001" in w for w in out["warnings"])
    same = compare_checkpoints(a, a)
    assert any("same checkpoint" in w for w in same["warnings"])
    res = CliRunner().invoke(app, ["inspect", str(a), str(b)])
    assert res.exit_code == 0 and "hyperparameters differ" in res.output
