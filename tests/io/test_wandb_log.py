"""The Weights & Biases run-file reader (adamdiag.io.wandb_log): its two decoders agree on every file wandb wrote
(tests/fixtures/wandb), its framing follows records across 32 KiB blocks, and damaged, cut, empty or special
files give one line (exit 2 where nothing is left), never a traceback; one bad run never sinks another."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adamdiag.cli import app
from adamdiag.errors import InputError
from adamdiag.io import wandb_log as W
from adamdiag.io.events import discover, read_run
from adamdiag.pipeline.scan import scan_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wandb"


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/wandb with the gzipped sample runs unpacked (wandb wrote them; gzip only stores them)."""
    out = tmp_path_factory.mktemp("wandb") / "wandb"
    shutil.copytree(FIXTURES, out, symlinks=True)
    for gz in out.rglob("*.wandb.gz"):
        with gzip.open(gz, "rb") as f_in, open(gz.with_suffix(""), "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        gz.unlink()
    return out


def run_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.wandb") if "latest-run" not in p.parts)


def one_run(path: Path) -> Path:
    """The run folder of a fixture (the first, for a resumed run)."""
    (run,) = discover([path]).runs
    return run


def test_the_two_decoders_agree_on_every_file(unpacked: Path) -> None:
    files = run_files(unpacked)
    assert len(files) == 19
    for f in files:
        fast, ref = W.read_wandb(f), W.read_wandb(f, fast=False)
        assert fast.tags == ref.tags and fast.records == ref.records and fast.warnings == ref.warnings == [], f
        assert fast.h_rows == ref.h_rows, f
        for a, b in zip(
            fast.s_tag + fast.s_step + fast.s_wall + fast.s_value, ref.s_tag + ref.s_step + ref.s_wall + ref.s_value
        ):
            np.testing.assert_array_equal(a, b, err_msg=str(f))
        raw = f.read_bytes()
        assert W.read_run_file(raw, str(f)).config == W.read_run_file(raw, str(f), fast=False).config


def test_records_longer_than_a_block_are_joined(unpacked: Path) -> None:
    """The sample runs are ~1 MB: many records cross a 32 KiB block (FIRST ... LAST), and none is lost."""
    f = run_files(unpacked / "samples" / "vcollapse")[0]
    raw = f.read_bytes()
    framing = W.frame(raw, str(f))
    assert len(raw) > 10 * W.BLOCK and framing.kinds[W.FIRST] >= 10 and framing.kinds[W.LAST] == framing.kinds[W.FIRST]
    assert framing.bad_chunks == 0 and framing.cut_at is None
    assert W._decode_fast(framing.records)[1] == 0


@pytest.mark.parametrize("version", ["0.16.6", "0.19.11"])
def test_files_of_older_wandb_versions(unpacked: Path, version: str) -> None:
    """Written by wandb 0.16.6 (its Python backend) and 0.19.11 (developed on 0.31.0): 300 rows on the declared
    axis trainer/global_step = 10 x row, NaN at row 250, the loss jumping at row 200; the config read."""
    run = one_run(unpacked / "older" / version)
    ev = read_run(run)
    loss = ev.scalars[ev.scalars["tag"] == "train/loss"].sort_values("step")
    assert loss["step"].tolist() == list(range(0, 3000, 10))
    assert np.isnan(loss["value"].to_numpy()).sum() == 1 and np.isnan(loss["value"].iloc[250])
    assert sorted(ev.scalars["tag"].unique()) == ["nest.x", "train/grad_norm", "train/loss"]
    (f,) = run_files(run)
    assert W.read_run_file(f.read_bytes(), str(f)).config == {
        "adam_epsilon": 1e-6,
        "adam_beta2": 0.95,
        "max_grad_norm": 1.0,
    }
    (rep,) = scan_paths([run]).runs
    assert rep.blowup_step == 2000
    assert any("beta2=0.95, eps=1e-06" in x.message for x in rep.findings)


def _chunk(kind: int, data: bytes) -> bytes:
    return struct.pack("<IHB", zlib.crc32(data, zlib.crc32(bytes([kind]))), len(data), kind) + data


def test_framing_of_a_record_over_three_blocks_and_a_block_trailer() -> None:
    """leveldb's rules, on bytes built here: a record of 70000 bytes is FIRST+MIDDLE+LAST; a block with fewer
    than 7 bytes left ends in a zero trailer."""
    big = bytes(range(256)) * 274  # 70144 bytes
    head = W.HEADER + struct.pack("<HB", W.MAGIC, W.VERSION)
    room1 = W.BLOCK - len(head) - W.CHUNK_HEADER
    parts = [big[:room1], big[room1 : room1 + W.BLOCK - 7], big[room1 + W.BLOCK - 7 :]]
    raw = head + _chunk(W.FIRST, parts[0]) + _chunk(W.MIDDLE, parts[1]) + _chunk(W.LAST, parts[2])
    # fill the third block to 3 bytes short of its end, then the trailer, then one more record
    pad = W.BLOCK - len(raw) % W.BLOCK - 3 - W.CHUNK_HEADER
    raw += _chunk(W.FULL, b"x" * pad) + b"\0\0\0" + _chunk(W.FULL, b"after")
    assert len(raw) % W.BLOCK == W.CHUNK_HEADER + 5
    got = W.frame(raw, "synthetic")
    assert got.records == [big, b"x" * pad, b"after"] and got.bad_chunks == 0 and got.cut_at is None


def test_a_synced_tensorboard_run_is_read_from_its_event_files(unpacked: Path) -> None:
    """sync_tensorboard=True: the wandb history copies tb/run1's events, global_step holding each event's step.
    Found beside those event files, the wandb run is left out with a note (read once, from the events); alone,
    it reads as them."""
    found = discover([unpacked / "synced"])
    assert [r.name for r in found.runs] == ["run1"]
    assert any("synced it from TensorBoard" in p.message for p in found.problems)
    wb, tb = read_run(one_run(unpacked / "synced" / "wandb")), read_run(found.runs[0])
    a = wb.scalars.sort_values("step")
    b = tb.scalars.sort_values("step")
    assert a["step"].tolist() == b["step"].tolist() == list(range(0, 180, 3))
    np.testing.assert_array_equal(a["value"].to_numpy(np.float32), b["value"].to_numpy(np.float32))


def test_latest_run_link_is_not_a_second_run() -> None:
    found = discover([FIXTURES / "nonfinite"])
    assert len(found.runs) == 1 and "latest-run" not in str(found.runs[0]) and not found.problems
    (f,) = run_files(FIXTURES / "nonfinite")
    assert discover([f]).runs == [f]  # a run file given itself
    cols = ["tag", "step", "value", "wall_time"]
    assert read_run(f).scalars[cols].equals(read_run(found.runs[0]).scalars[cols])


def _copy_run(src: Path, dst: Path) -> Path:
    """A fixture's run file copied into a wandb-like folder of its own; returns the file."""
    run = dst / "wandb" / "run-20260101_000000-abc"
    run.mkdir(parents=True)
    shutil.copy(src, run / "run-abc.wandb")
    return run / "run-abc.wandb"


def test_a_run_file_cut_short_is_in_progress(tmp_path: Path) -> None:
    (src,) = run_files(FIXTURES / "nonfinite")
    f = _copy_run(src, tmp_path)
    f.write_bytes(src.read_bytes()[:9000])
    (rep,) = scan_paths([tmp_path]).runs
    (ad902,) = [x for x in rep.findings if x.id == "AD902"]
    assert ad902.severity == "info" and "in progress" in ad902.message
    assert rep.verdict != "inconclusive"


def test_damage_inside_loses_only_what_it_hit(tmp_path: Path, unpacked: Path) -> None:
    src = run_files(unpacked / "samples" / "vcollapse")[0]
    raw = bytearray(src.read_bytes())
    raw[100_000:100_050] = b"\xff" * 50
    f = _copy_run(src, tmp_path)
    f.write_bytes(bytes(raw))
    data = W.read_wandb(f)
    (warning,) = data.warnings
    first_bad = int(warning.split("the first at byte ")[1].split(";")[0])
    assert "damaged chunk" in warning and 100_000 - W.BLOCK < first_bad <= 100_000
    whole = W.read_wandb(src)
    lost = len(whole.s_step[0]) - len(data.s_step[0])
    assert 0 < lost <= 3 * 2  # one or two rows of three tags; everything after the damage is read
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 0 and "damaged chunk" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"NOPE\xe1\xbe\x00" + b"\0" * 50, "not a wandb run file (no ':W&B' header)"),
        (b":W&B\xe1\xbe\x07" + b"\0" * 50, "wandb datastore version 7"),
    ],
)
def test_not_a_wandb_file_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    run = tmp_path / "wandb" / "run-20260101_000000-abc"
    run.mkdir(parents=True)
    (run / "run-abc.wandb").write_bytes(content)
    with pytest.raises(InputError, match="not a wandb|version 7"):
        W.read_wandb(run / "run-abc.wandb")
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_an_empty_run_file_says_so(tmp_path: Path) -> None:
    """wandb creates the file at init: a run killed before its first log leaves its header, or nothing."""
    for name, content in (("a", b""), ("b", W.HEADER + struct.pack("<HB", W.MAGIC, W.VERSION))):
        run = tmp_path / "wandb" / f"run-20260101_000000-{name}"
        run.mkdir(parents=True)
        (run / f"run-{name}.wandb").write_bytes(content)
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert "Traceback" not in res.output
    assert res.output.count("no logged value (the run stopped before its first wandb.log?)") == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_fifo_is_never_opened_and_sinks_no_other_run(tmp_path: Path) -> None:
    (src,) = run_files(FIXTURES / "nonfinite")
    _copy_run(src, tmp_path / "good")
    bad = tmp_path / "bad" / "wandb" / "run-20260101_000000-abc"
    bad.mkdir(parents=True)
    os.mkfifo(bad / "run-abc.wandb")
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "a FIFO, not a file (not opened)" in res.output and "Traceback" not in res.output
    reports = {Path(r.run).parents[1].name: r for r in scan_paths([tmp_path]).runs}
    assert reports["good"].verdict == "nonfinite"
    assert any("FIFO" in f.message for f in reports["bad"].findings)


def test_nothing_found_names_wandb_too(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert res.exit_code == 2 and "wandb run files" in res.output and "MLflow runs" in res.output


def test_define_metric_globs_written_by_wandb(tmp_path: Path) -> None:
    """A live run (when wandb is installed): metrics under train/ on a custom axis, one metric on its own axis,
    the rest on _step; the last glob declared wins, as in wandb."""
    wandb = pytest.importorskip("wandb")
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    run = wandb.init(
        project="t", dir=str(tmp_path), mode="offline", settings=wandb.Settings(x_disable_stats=True, console="off")
    )
    run.define_metric("train/*", step_metric="train/tokens")
    run.define_metric("val_loss", step_metric="epoch")
    for i in range(20):
        row = {"train/tokens": 1000 * (i + 1), "train/loss": 1.0 / (i + 1), "other": float(i)}
        if i % 5 == 4:
            row.update(val_loss=0.5, epoch=i // 5)
        run.log(row)
    run.finish()
    ev = read_run(one_run(tmp_path))
    steps = {t: g["step"].tolist() for t, g in ev.scalars.groupby("tag")}
    assert steps["train/loss"] == [1000 * (i + 1) for i in range(20)]
    assert steps["val_loss"] == [0, 1, 2, 3]
    assert steps["other"] == list(range(20))
    assert "train/tokens" not in steps and "epoch" not in steps


def test_mutated_files_never_break_either_decoder(unpacked: Path) -> None:
    """Bytes flipped, spans overwritten, files cut, and records rebuilt with valid CRCs around damaged payloads
    (what CRCs cannot catch): both decoders end in rows or a one-line InputError, never another exception."""
    import random

    rng = random.Random(0)
    files = run_files(unpacked)
    for _ in range(150):
        f = rng.choice(files)
        raw = bytearray(f.read_bytes())
        mode = rng.randrange(3)
        if mode == 0:
            for _ in range(rng.randrange(1, 20)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif mode == 1:
            raw = raw[: rng.randrange(len(raw))]
        else:
            out = W.HEADER + struct.pack("<HB", W.MAGIC, W.VERSION)
            for rec in W.frame(bytes(raw), str(f)).records:
                rec = bytearray(rec)
                for _ in range(rng.randrange(3)):
                    rec[rng.randrange(len(rec))] = rng.randrange(256)
                if len(out) % W.BLOCK + W.CHUNK_HEADER + len(rec) > W.BLOCK:
                    break
                out += _chunk(W.FULL, bytes(rec))
            raw = bytearray(out)
        for fast in (True, False):
            try:
                W.read_run_file(bytes(raw), str(f), fast=fast)
            except InputError:
                pass


def test_protowire_rules() -> None:
    from adamdiag.io import protowire

    with pytest.raises(ValueError, match="field number 0"):
        list(protowire.fields(b"\x00\x01"))
    # a proto2 group (field 3: start 0x1b, a varint inside, end 0x1c) is skipped; the field after it is read
    assert list(protowire.fields(b"\x1b\x08\x05\x1c\x20\x07")) == [(4, 0, 7)]
    with pytest.raises(ValueError, match="without its end"):
        list(protowire.fields(b"\x1b\x08\x05"))
    assert protowire.as_zigzag(3) == -2 and protowire.as_signed((1 << 64) - 1) == -1
