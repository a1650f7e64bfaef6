"""Regressions from the bad-input fuzz of the CLI (notes/s10_fuzz.md): each case crashed, hung or
took the other runs of a scan down before its fix. Real artifacts only: the shipped DCP fixture, real
``torch.optim.Adam`` checkpoints, event files written by torch's SummaryWriter.

* a FIFO inside a checkpoint folder (a DCP shard) or given to ``replay`` blocked forever on its open;
* an empty DCP shard was an internal EOFError instead of one line naming the file;
* a checkpoint storing β2 = 1.5, or an exp_avg_sq of another size than exp_avg, was a ``math domain
  error`` / kernel ValueError ("internal error");
* a step logged at 2^63-1 wrapped the blowup window around in int64 (an internal error) — and that
  one run's crash ended the whole scan, the other runs' diagnoses with it.

Later (notes/s11_badinput.md), inputs that were accepted without a word: a meaningless
``--verify-budget`` without ``--verify``, a directory named like a checkpoint file, a DCP shard path
outside its checkpoint folder.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from blocking_util import in_time
from events_util import write_torch
from torch import nn
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import InputError
from adamdiag.pipeline.scan import scan_paths
from adamdiag.replay.checkpoint import load_replay_checkpoint

runner = CliRunner()
DCP = Path(__file__).resolve().parents[1] / "fixtures" / "sharded" / "dcp_fsdp4"


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adamdiag: error: "), res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.output
    return lines[0]


def _adam_state(seed: int = 0) -> dict:
    """A real Adam checkpoint ({model, optimizer, step}) after two steps."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2}


def _unblock(fifo: Path) -> None:
    """Open the FIFO's write end once (non-blocking where a reader waits), so a reader stuck in open()
    from a failed test returns and the test process can exit."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


# --- FIFOs and damaged files inside a checkpoint folder ----------------------------------------------
def test_fifo_shard_of_a_dcp_checkpoint_is_one_line_not_a_hang(tmp_path):
    ck = tmp_path / "dcp"
    shutil.copytree(DCP, ck)
    (ck / "__2_0.distcp").unlink()
    os.mkfifo(ck / "__2_0.distcp")
    try:
        res = in_time(lambda: runner.invoke(app, ["inspect", str(ck)]), seconds=30.0)
    finally:
        _unblock(ck / "__2_0.distcp")
    assert "__2_0.distcp: a FIFO" in _one_line_error(res)


def test_empty_shard_of_a_dcp_checkpoint_names_the_file(tmp_path):
    ck = tmp_path / "dcp"
    shutil.copytree(DCP, ck)
    (ck / "__2_0.distcp").write_bytes(b"")
    line = _one_line_error(runner.invoke(app, ["inspect", str(ck), "--format", "json"]))
    assert "__2_0.distcp: item " in line and "is damaged" in line


def test_replay_of_a_fifo_named_pt_is_refused_unopened(tmp_path):
    fifo = tmp_path / "step_000010.pt"
    os.mkfifo(fifo)
    try:
        with pytest.raises(InputError, match="a FIFO, not a checkpoint file"):
            in_time(lambda: load_replay_checkpoint(fifo), seconds=30.0)
    finally:
        _unblock(fifo)


# --- states Adam cannot have written ------------------------------------------------------------------
def test_stored_beta2_outside_adams_range_is_one_line(tmp_path):
    sd = _adam_state()
    sd["optimizer"]["param_groups"][0]["betas"] = (0.9, 1.5)
    torch.save(sd, tmp_path / "bad.pt")
    line = _one_line_error(runner.invoke(app, ["inspect", str(tmp_path / "bad.pt")]))
    assert "beta2=1.5" in line and "[0, 1)" in line


def test_moments_of_different_sizes_are_one_line(tmp_path):
    sd = _adam_state()
    sd["optimizer"]["state"][0]["exp_avg_sq"] = torch.ones(3)
    torch.save(sd, tmp_path / "bad.pt")
    line = _one_line_error(runner.invoke(app, ["inspect", str(tmp_path / "bad.pt")]))
    assert "`0.weight`: exp_avg has 128 elements, exp_avg_sq has 3 elements" in line


def test_a_damaged_checkpoint_in_a_scan_keeps_the_run(tmp_path):
    run = tmp_path / "run"
    write_torch(run, 30)
    sd = _adam_state()
    good = copy.deepcopy(sd)
    torch.save(good, run / "step_000010.pt")
    sd["optimizer"]["param_groups"][0]["betas"] = (0.9, 1.5)
    torch.save(sd, run / "step_000020.pt")
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["verdict"] != "inconclusive" and "checkpoints" in r["sources"]  # the good checkpoint still counts
    assert any("step_000020.pt" in w and "beta2=1.5" in w for w in r["warnings"])


# --- odd steps in the event files ---------------------------------------------------------------------
def _write_scalars(logdir: Path, points: list[tuple[int, float]]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for step, value in points:
        w.add_scalar("train/loss", value, step)
    w.close()
    return logdir


def test_a_step_logged_at_int64_max_is_diagnosed(tmp_path):
    run = _write_scalars(tmp_path / "maxstep", [(s, 1.0 / s) for s in range(1, 101)] + [(2**63 - 1, 5.0)])
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert r["blowup_step"] == 2**63 - 1  # the last point's jump, at its own step


def test_one_run_failing_inside_the_diagnosis_does_not_end_the_scan(tmp_path, monkeypatch):
    """Whatever a run's odd data trips inside the analysis, the other runs keep their diagnosis: the
    failing run is an inconclusive entry naming the error (the analysis is made to fail for one run,
    as the int64-max step did before its fix)."""
    import adamdiag.analysis.diagnose as diagnose_mod

    bad = write_torch(tmp_path / "bad", 40)
    good = write_torch(tmp_path / "good", 40)
    real = diagnose_mod.diagnose

    def failing_for_bad(inp, **kw):
        if Path(inp.run).name == "bad":
            raise ValueError("zero-size array to reduction operation maximum which has no identity")
        return real(inp, **kw)

    monkeypatch.setattr(diagnose_mod, "diagnose", failing_for_bad)
    monkeypatch.delenv("ADAMDIAG_DEBUG", raising=False)
    rep = scan_paths([bad, good])
    by = {Path(r.run).name: r for r in rep.runs}
    assert by["good"].verdict != "inconclusive" or by["good"].findings
    assert by["bad"].verdict == "inconclusive"
    assert any("internal error while diagnosing it: ValueError" in w for w in by["bad"].warnings)
    # alone, the run is still the CLI's one-line internal error (exit 2), not an empty report
    with pytest.raises(ValueError):
        scan_paths([bad])


# --- outputs and saved reports ------------------------------------------------------------------------
def test_show_of_a_fifo_is_one_line_not_a_hang(tmp_path):
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    try:
        res = in_time(lambda: runner.invoke(app, ["show", str(fifo)]), seconds=30.0)
    finally:
        _unblock(fifo)
    assert "report.json: a FIFO, not a report file" in _one_line_error(res)


def test_plot_into_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    run = write_torch(tmp_path / "run", 40)
    (tmp_path / "plain_file").write_text("x")
    res = runner.invoke(app, ["plot", str(run), "-o", str(tmp_path / "plain_file" / "x.png")])
    assert "cannot write" in _one_line_error(res)


def test_replay_plot_of_a_type_matplotlib_cannot_write_fails_before_the_replay(tmp_path):
    """Checked first: the replay itself (here it could not even start — no entry) is never run for a
    --plot that would fail at its end."""
    torch.save(_adam_state(), tmp_path / "step_000002.pt")
    for target, says in (
        (tmp_path / "overlay.txt", ".txt is no image type"),
        (tmp_path / "no" / "x.png", "does not exist"),
    ):
        res = runner.invoke(
            app, ["replay", str(tmp_path / "step_000002.pt"), "--entry", "nope.py:f", "--plot", str(target)]
        )
        assert says in _one_line_error(res)


# --- symbolic links that lead nowhere -----------------------------------------------------------------
def test_a_symlink_loop_or_dangling_link_says_so_not_no_such_file(tmp_path):
    loop = tmp_path / "step_000010.pt"
    loop.symlink_to(loop.name)  # points at itself
    dangling = tmp_path / "step_000020.pt"
    dangling.symlink_to(tmp_path / "gone" / "step_000020.pt")
    assert "a symbolic link loop" in _one_line_error(runner.invoke(app, ["inspect", str(loop)]))
    line = _one_line_error(runner.invoke(app, ["inspect", str(dangling)]))
    assert f"a symbolic link to {tmp_path / 'gone' / 'step_000020.pt'}, which does not exist" in line


# --- checkpoints far apart for their β2 ---------------------------------------------------------------
def test_checkpoints_too_far_apart_for_a_decay_ratio_are_no_crash(tmp_path):
    """β2^Δ underflows for checkpoints far apart — 0.1^340 is 0 in float64, as 0.999^800000 or
    0.95^15000 are (common checkpoint spacings): inspect's pair view and scan's checkpoint-interval
    ratios divided by it (ZeroDivisionError). Real Adam checkpoints, β2 = 0.1 to keep the run short."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.1))
    run = write_torch(tmp_path / "run", 400)
    (run / "checkpoints").mkdir()
    for t in range(1, 351):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        if t in (10, 350):
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": t}
            torch.save(state, run / "checkpoints" / f"step_{t:06d}.pt")
    a, b = (str(run / "checkpoints" / f"step_{t:06d}.pt") for t in (10, 350))
    res = runner.invoke(app, ["inspect", a, b, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert "no weight left" in res.stdout and "ZeroDivisionError" not in res.output
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "checkpoints" in r["sources"]


# --- zero-filled regions in event files ---------------------------------------------------------------
def test_a_zero_filled_region_in_an_event_file_is_skipped_in_seconds(tmp_path):
    """A preallocated or crash-zeroed stretch (64 MB here) was resynced one byte at a time — one CRC
    per offset in Python, minutes — though no all-zero header can verify. Records on both sides are
    kept; one warning names the damage."""
    from adamdiag.io import events as E
    from adamdiag.io import tfrecord as T

    src = _write_scalars(tmp_path / "src", [(s, 1.0 / s) for s in range(1, 201)])
    data = next(src.glob("*tfevents*")).read_bytes()
    offsets = T.read_records_ref(data).offsets
    cut = offsets[len(offsets) // 2]
    run = tmp_path / "run"
    run.mkdir()
    path = run / "events.out.tfevents.1.host"
    path.write_bytes(data[:cut] + bytes(64 << 20) + data[cut:])
    got = in_time(lambda: E.read_run(run), seconds=20.0)
    assert sorted(got.scalars["step"].tolist()) == list(range(1, 201))
    assert len(got.warnings) == 1 and f"corrupt record header at byte {cut}" in got.warnings[0]


def test_a_tf_bundle_whose_index_is_a_fifo_names_it(tmp_path):
    """The .index of a TF2 bundle replaced by a FIFO read as 'a checkpoint without its .index file
    (found …, ckpt-1.index)' — or, from the folder, 'no such file'; it is never opened either way."""
    ck = tmp_path / "tf2"
    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "tf" / "tf2", ck)
    (ck / "ckpt-1.index").unlink()
    os.mkfifo(ck / "ckpt-1.index")
    try:
        for target in (ck / "ckpt-1", ck):
            res = in_time(lambda t=target: runner.invoke(app, ["inspect", str(t)]), seconds=30.0)
            assert "ckpt-1.index: a FIFO, not a TensorFlow checkpoint index" in _one_line_error(res)
    finally:
        _unblock(ck / "ckpt-1.index")


# --- directories named like checkpoint files ---------------------------------------------------------------
def test_a_directory_named_like_a_checkpoint_file_is_said_to_be_skipped(tmp_path):
    """``step_000050.pt/`` (empty, or holding no checkpoint) was passed over without a word. Checkpoint
    folders named so — Lightning's FSDP (DCP) and DeepSpeed strategies save ``epoch=0-step=N.ckpt/`` — are
    read as before, with no warning."""
    from adamdiag.io.checkpoints import find_checkpoints

    run = write_torch(tmp_path / "run", 40)
    ck = run / "checkpoints"
    ck.mkdir()
    torch.save(_adam_state(), ck / "step_000010.pt")
    (ck / "step_000050.pt").mkdir()
    (ck / "step_000060.pt").mkdir()
    (ck / "step_000060.pt" / "notes.txt").write_text("not a checkpoint")
    (ck / "model.weights.h5").mkdir()
    shutil.copytree(DCP, ck / "epoch=0-step=20.ckpt")  # a real DCP checkpoint
    ds = Path(__file__).resolve().parents[1] / "fixtures" / "deepspeed" / "z2_fp32"  # `latest` + global_step3/
    shutil.copytree(ds, ck / "epoch=0-step=30.ckpt")
    skipped: list[str] = []
    found = find_checkpoints(ck, skipped=skipped)
    assert [p.relative_to(ck).as_posix() for p in found] == [
        "epoch=0-step=30.ckpt/global_step3",  # the tag's step (3) sorts first
        "step_000010.pt",
        "epoch=0-step=20.ckpt",
    ]
    assert sorted(skipped) == [
        f"skipped {ck / n}: a directory named like a checkpoint file, with no checkpoint in it (no DCP, HF or "
        "DeepSpeed folder)"
        for n in ("model.weights.h5", "step_000050.pt", "step_000060.pt")
    ]
    # scan: one warning line for the run, which keeps its real checkpoint
    shutil.rmtree(ck / "epoch=0-step=20.ckpt")
    shutil.rmtree(ck / "epoch=0-step=30.ckpt")
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert "checkpoints" in r["sources"]
    said = [w for w in r["warnings"] if "named like a checkpoint file" in w]
    assert len(said) == 3 and all("\n" not in w for w in said)


def test_an_unreadable_checkpoint_in_a_scan_is_named_once(tmp_path):
    """scan's warning for a checkpoint a reader refused read 'checkpoint X: X: not a readable …': the
    readers' messages start with the file (or the file inside the folder) already."""
    run = write_torch(tmp_path / "run", 40)
    ck = run / "checkpoints"
    ck.mkdir()
    torch.save(_adam_state(), ck / "step_000010.pt")
    (ck / "step_000020.pt").write_bytes(b"not a torch file")
    shutil.copytree(DCP, ck / "step_000030")
    (ck / "step_000030" / "__2_0.distcp").write_bytes(b"")
    (r,) = scan_paths([run]).runs
    bad = [w for w in r.warnings if "step_000020.pt" in w or "step_000030" in w]
    assert len(bad) == 2 and not any(w.startswith("checkpoint ") for w in bad), bad
    assert all(w.count(str(ck / "step_0000")) == 1 for w in bad), bad
    assert "checkpoints" in r.sources  # the readable one still counts


# --- DCP metadata naming files outside the checkpoint -------------------------------------------------------
@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_a_dcp_shard_outside_the_checkpoint_folder_is_refused(tmp_path, where):
    """A ``.metadata`` whose ``relative_path`` leads out of the folder (``../…`` or absolute) was followed:
    a checkpoint could make adamdiag read any file. Real dcp.save checkpoint, metadata rewritten to
    point at a real shard copied outside it (so the old code read it without a word)."""
    import pickle

    import make_checkpoints as mk

    path, _ = mk.write_dcp(tmp_path / "ck" / "dcp")
    shard = tmp_path / "outside.distcp"
    shutil.copy(path / "__0_0.distcp", shard)
    (path / "__0_0.distcp").unlink()
    md_file = path / ".metadata"
    md = pickle.loads(md_file.read_bytes())  # noqa: S301 - the file dcp.save just wrote
    target = "../../outside.distcp" if where == "parent" else str(shard)
    for info in md.storage_data.values():
        info.relative_path = target
    md_file.write_bytes(pickle.dumps(md))
    line = _one_line_error(runner.invoke(app, ["inspect", str(path)]))
    assert f"{md_file}: item " in line and f"is stored in {target!r}, outside the checkpoint folder" in line


# --- damage in formats without checksums -------------------------------------------------------------------
def _step_zero_warnings(path: Path) -> list[str]:
    from adamdiag.pipeline.summary import summarize_checkpoint

    return [w for w in summarize_checkpoint(path).warnings if "step 0 with nonzero m or v" in w]


def test_a_dcp_step_damaged_to_zero_is_said_to_look_damaged(tmp_path):
    """DCP shards carry no checksum: a per-tensor step zeroed in the .distcp bytes (fuzz case y2093) was
    read as step 0 and its √v̂ computed from it without a word. Adam counts the step before it first
    updates m and v, so step 0 beside nonzero moments is a one-line warning (the checkpoint is still read)."""
    import pickle
    import struct

    import make_checkpoints as mk

    path, _ = mk.write_dcp(tmp_path / "dcp")  # AdamW, 3 steps: every step item is 3.0
    assert _step_zero_warnings(path) == []
    md = pickle.loads((path / ".metadata").read_bytes())  # noqa: S301 - the file dcp.save just wrote
    info = next(i for x, i in md.storage_data.items() if x.fqn == "optim.state.2.weight.step")
    shard = path / info.relative_path
    data = bytearray(shard.read_bytes())
    at = info.offset + data[info.offset : info.offset + info.length].index(struct.pack("<f", 3.0))
    data[at : at + 4] = bytes(4)
    shard.write_bytes(bytes(data))
    (w,) = _step_zero_warnings(path)
    assert w.startswith(f"{path}: `2.weight`: step 0") and "looks damaged (DCP shards carry no checksum)" in w
    res = runner.invoke(app, ["inspect", str(path)])
    assert res.exit_code == 0 and "`2.weight`: step 0 with nonzero m or v" in res.output


def test_a_keras_iterations_damaged_to_zero_is_said_to_look_damaged(tmp_path):
    """The same for a Keras 3 .weights.h5 (HDF5: no checksum) whose `iterations` reads 0 beside its m/v."""
    import h5py

    path = tmp_path / "plain.weights.h5"
    shutil.copy(Path(__file__).resolve().parents[1] / "fixtures" / "tf" / "keras" / "plain.weights.h5", path)
    assert _step_zero_warnings(path) == []
    with h5py.File(path, "r+") as f:
        f["optimizer"]["vars"]["0"][()] = 0  # iterations
    (w,) = _step_zero_warnings(path)
    assert "step 0 with nonzero m or v" in w and "(HDF5 datasets carry no checksum)" in w


# --- numeric options checked when the command line is parsed (notes/s11_badinput.md) ------------------
@pytest.mark.parametrize("command", ["scan", "check", "report"])
@pytest.mark.parametrize("budget", ["-5", "0", "nan"])
def test_a_meaningless_verify_budget_is_a_usage_error_without_verify(tmp_path, command, budget):
    """--verify-budget -5 / 0 / nan was accepted without a word when --verify was not given (and with it,
    refused only after the whole scan): a usage error now, whether or not --verify is given, before any
    file is read."""
    run = write_torch(tmp_path / "run", 40)
    out = ["-o", str(tmp_path / "r.html")] if command == "report" else []
    for verify in ([], ["--verify"]):
        res = runner.invoke(app, [command, str(run), "--verify-budget", budget, *verify, *out])
        assert "--verify-budget must be a positive number of seconds" in _one_line_error(res)
    assert not (tmp_path / "r.html").exists()


def test_a_meaningless_grad_clip_or_huge_log_step_offset_is_a_usage_error(tmp_path):
    """--grad-clip is checked with the other options (nan and inf too); replay --log-step-offset past
    63 bits was an internal OverflowError in the step arithmetic."""
    run = write_torch(tmp_path / "run", 40)
    for clip in ("-1", "0", "nan", "inf"):
        res = runner.invoke(app, ["scan", str(run), "--grad-clip", clip])
        assert "--grad-clip must be a positive number" in _one_line_error(res)
    torch.save(_adam_state(), tmp_path / "step_000002.pt")
    res = runner.invoke(app, ["replay", str(tmp_path / "step_000002.pt"), "--log-step-offset", str(2**70)])
    assert "--log-step-offset must be auto or an integer of at most 63 bits" in _one_line_error(res)


def test_a_torch_zip_whose_member_name_is_damaged_is_one_line(tmp_path):
    """Session 18's fuzz: one flipped byte in a member name the zip marks UTF-8 made zipfile raise
    UnicodeDecodeError — an internal error for inspect, and in a scan a crash of discovery's sniff. Now one line,
    and the scan keeps the run with the file among its input problems."""
    run = tmp_path / "run"
    write_torch(run, 30)
    f = run / "step_000010.pt"
    torch.save(_adam_state(), f)
    b = bytearray(f.read_bytes())
    cd = b.rfind(b"PK\x01\x02")  # the last central directory entry: flag bit 11 (UTF-8) on, a name byte invalid
    b[cd + 8] |= 0x08
    b[cd + 9] |= 0x08
    b[cd + 46] = 0xF2
    f.write_bytes(bytes(b))
    line = _one_line_error(runner.invoke(app, ["inspect", str(f)]))
    assert "cannot be read" in line
    res = runner.invoke(app, ["scan", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["runs"]
    assert any("step_000010.pt" in w and "cannot be read" in w for w in r["warnings"])


def test_a_dcp_metadata_whose_memoize_became_a_frame_is_one_line(tmp_path):
    """A bit flip that turns a MEMOIZE opcode of .metadata into FRAME (8 length bytes: an absurd allocation) was an
    internal MemoryError (session 20's fuzz); now one line naming the file as damaged."""
    d = tmp_path / "dcp"
    shutil.copytree(DCP, d)
    meta = bytearray((d / ".metadata").read_bytes())
    assert meta[14384] == 0x94  # MEMOIZE
    meta[14384] = 0x95  # FRAME
    (d / ".metadata").write_bytes(bytes(meta))
    err = _one_line_error(runner.invoke(app, ["inspect", str(d)]))
    assert "unreadable DCP metadata" in err and "damaged" in err, err


def test_a_torch_zip_whose_compression_method_is_damaged_is_one_line(tmp_path):
    """A flipped bit in the central directory's compression-method field of data.pkl: zipfile raises
    NotImplementedError ("That compression method is not supported") — was an internal error (session 20's fuzz)."""
    f = tmp_path / "ck.pt"
    torch.save(_adam_state(), f)
    data = bytearray(f.read_bytes())
    at = data.find(b"PK\x01\x02")  # central directory: the first entry is the pickle (ck/data.pkl)
    assert at > 0 and data[at + 46 : at + 46 + 11] == b"ck/data.pkl"
    data[at + 10 : at + 12] = (99).to_bytes(2, "little")  # compression method 99: none zipfile knows
    f.write_bytes(bytes(data))
    err = _one_line_error(runner.invoke(app, ["inspect", str(f)]))
    assert "compression method" in err, err


def test_a_torch_zip_whose_zip64_locator_is_damaged_is_one_line(tmp_path):
    """The zip64 end-record locator (torch writes one) damaged to name 2 disks: zipfile.is_zipfile itself raises
    BadZipFile ("zipfiles that span multiple disks are not supported") — was an internal error (session 20's fuzz)."""
    f = tmp_path / "ck.pt"
    torch.save(_adam_state(), f)
    data = bytearray(f.read_bytes())
    at = data.rfind(b"PK\x06\x07")
    assert at > 0 and int.from_bytes(data[at + 16 : at + 20], "little") == 1  # total number of disks
    data[at + 16] = 2
    f.write_bytes(bytes(data))
    err = _one_line_error(runner.invoke(app, ["inspect", str(f)]))
    assert "multiple disks" in err, err


def test_a_dcp_metadata_that_unpickles_to_another_object_is_one_line(tmp_path):
    """A shifted byte made a Megatron/DCP .metadata unpickle to a str (an internal AttributeError, session 20's
    fuzz): here the file replaced by the pickle of a str, then of a list — one line each."""
    import pickle

    d = tmp_path / "dcp"
    shutil.copytree(DCP, d)
    for obj in ("x", [1, 2]):
        (d / ".metadata").write_bytes(pickle.dumps(obj, protocol=2))
        err = _one_line_error(runner.invoke(app, ["inspect", str(d)]))
        assert "not DCP metadata" in err and type(obj).__name__ in err, err
