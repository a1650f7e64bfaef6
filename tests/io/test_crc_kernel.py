"""The compiled CRC-32 (io/checkpoints/_crc32_kernel.c) against zlib.crc32, and the zip CRC check
(integrity.py) catching a damaged member with it and without it."""

from __future__ import annotations

import mmap
import os
import random
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from kernel_util import build_with_other_abi
from torch import nn

from adamdiag.io.checkpoints import crc_kernel, integrity
from adamdiag.pipeline.summary import summarize_checkpoint

needs_kernel = pytest.mark.skipif(not crc_kernel.loaded(), reason="CRC kernel not built (or ADAMDIAG_NO_KERNEL)")
PATHS = [False, True]  # plain=False: PCLMULQDQ folding where the CPU has it; True: the portable tables


@pytest.fixture
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Runs the test with the kernel ("kernel") or with ADAMDIAG_NO_KERNEL set ("fallback": isal/zlib)."""
    if request.param == "kernel" and not crc_kernel.available():
        pytest.skip("CRC kernel not built or no PCLMULQDQ on this CPU")
    if request.param == "fallback":
        monkeypatch.setenv("ADAMDIAG_NO_KERNEL", "1")
    else:
        monkeypatch.delenv("ADAMDIAG_NO_KERNEL", raising=False)
    crc_kernel._loaded.cache_clear()
    yield request.param
    monkeypatch.undo()
    crc_kernel._loaded.cache_clear()


def test_kernel_is_built_where_a_compiler_is() -> None:
    """`pip install -e .` (make setup) compiles it (setup.py); a silent build failure shows only as slowness."""
    if os.environ.get("ADAMDIAG_NO_KERNEL"):
        pytest.skip("disabled by ADAMDIAG_NO_KERNEL")
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on this machine")
    assert crc_kernel.loaded(), "a C compiler is here but the CRC kernel is missing: reinstall (make setup)"


def _assert_engine(engine: str) -> None:
    if engine == "kernel":
        assert integrity.crc_engine() == "kernel"
    else:
        assert integrity.crc_engine() in ("zlib", "isal")


@needs_kernel
@pytest.mark.parametrize("plain", PATHS)
def test_equals_zlib_for_every_length_and_alignment(plain: bool) -> None:
    """Lengths 0..300 and a few around the 128-byte fold threshold and 4 KB pages, at every address
    offset 0..63 (the fold aligns its loads first: head, body and tail all vary), from a non-zero crc."""
    rng = random.Random(13)
    data = rng.randbytes(8192 + 64)
    lengths = [*range(301), 511, 512, 513, 1023, 4095, 4096, 4097, 8191]
    for off in range(64):
        for n in lengths:
            chunk = memoryview(data)[off : off + n]
            start = rng.getrandbits(32)
            assert crc_kernel.crc32(chunk, start, plain=plain) == zlib.crc32(chunk, start), (off, n)


@needs_kernel
@pytest.mark.parametrize("plain", PATHS)
def test_equals_zlib_on_multi_megabyte_buffers(plain: bool) -> None:
    rng = random.Random(7)
    for n in (3 << 20, (5 << 20) + 37):
        data = rng.randbytes(n)
        assert crc_kernel.crc32(data, plain=plain) == zlib.crc32(data)
    zeros = bytes(4 << 20)  # a padded ZeRO-3 partition's tail: long runs of zero bytes
    assert crc_kernel.crc32(zeros, plain=plain) == zlib.crc32(zeros)


@needs_kernel
@pytest.mark.parametrize("plain", PATHS)
def test_continuation_window_by_window(plain: bool) -> None:
    """crc continued piece by piece (as integrity.py checks a large member window by window) equals the
    one-shot value, for pieces of any size and alignment."""
    rng = random.Random(3)
    data = rng.randbytes(1 << 20)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    c = 0
    for lo, hi in zip([0, *cuts], [*cuts, len(data)], strict=True):
        c = crc_kernel.crc32(memoryview(data)[lo:hi], c, plain=plain)
    assert c == zlib.crc32(data)


@needs_kernel
def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        crc_kernel.crc32_at(0, -1)
    with pytest.raises(ValueError):
        crc_kernel.crc32(b"x", 1 << 32)
    assert crc_kernel.crc32(b"") == zlib.crc32(b"") == 0


@pytest.mark.parametrize("engine", ["kernel", "fallback"], indirect=True)
def test_mapped_member_window_by_window(engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """integrity's CRC of mapped file bytes: one call, and window by window (odd window size, pages
    dropped after each) give zlib's value with either engine."""
    _assert_engine(engine)
    data = random.Random(5).randbytes((2 << 20) + 123)
    f = tmp_path / "blob"
    f.write_bytes(data)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        arr = np.frombuffer(mm, dtype=np.uint8)  # a file mapping, as torch.load(mmap=True) makes
        base = int(arr.ctypes.data)
        for off, n in ((0, len(data)), (77, len(data) - 200)):
            want = zlib.crc32(data[off : off + n])
            assert integrity._crc_of_mapped(base + off, n) == want
            monkeypatch.setattr(integrity, "CRC_WINDOW", 100_003)
            assert integrity._crc_of_mapped(base + off, n) == want
            monkeypatch.setattr(integrity, "CRC_WINDOW", 64 << 20)
        del arr


def _big_adam_checkpoint(path: Path) -> dict:
    """A real Adam checkpoint with a 1.2 MB weight (so the check folds, and crosses windows below)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 600), nn.Tanh(), nn.Linear(600, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 512)).pow(2).mean().backward()
        opt.step()
    obj = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2}
    torch.save(obj, path)
    return obj


@pytest.mark.parametrize("window", [64 << 20, 100_003])
@pytest.mark.parametrize("engine", ["kernel", "fallback"], indirect=True)
def test_damaged_member_is_ad403_with_and_without_kernel(
    engine: str, window: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One flipped bit in exp_avg of the large weight (written by torch.save) is AD403 naming that tensor,
    whichever engine computes the CRC and whether the member is checked in one piece or window by window;
    the undamaged file raises nothing."""
    _assert_engine(engine)
    monkeypatch.setattr(integrity, "CRC_WINDOW", window)
    good = tmp_path / "good.pt"
    saved = _big_adam_checkpoint(good)
    data = saved["optimizer"]["state"][0]["exp_avg"].numpy().tobytes()
    with zipfile.ZipFile(good) as zf:
        member = next(i.filename for i in zf.infolist() if i.file_size == len(data) and zf.read(i) == data)
    raw = bytearray(good.read_bytes())
    raw[raw.index(data) + len(data) * 3 // 4] ^= 0x01  # past the first window when windows are small
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(raw))
    s = summarize_checkpoint(bad)
    hit = [t for t in s.tensors if t.corrupt]
    assert [t.label for t in hit] == ["0.weight"]
    assert member in hit[0].corrupt and "exp_avg" in hit[0].corrupt
    assert any("AD403" in w and "`0.weight`" in w for w in s.warnings)
    assert not any(t.corrupt for t in summarize_checkpoint(good).tensors)


@needs_kernel
def test_library_of_another_abi_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    so = build_with_other_abi(Path(crc_kernel.__file__).parent / "_crc32_kernel.c", "ADAMDIAG_CRC_ABI", tmp_path)
    monkeypatch.delenv("ADAMDIAG_NO_KERNEL", raising=False)
    monkeypatch.setattr(crc_kernel, "_library_path", lambda: so)
    crc_kernel._loaded.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="another version"):
            assert not crc_kernel.loaded()
        assert integrity.crc_engine() in ("zlib", "isal")
    finally:
        crc_kernel._loaded.cache_clear()


def test_environment_switch_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAMDIAG_NO_KERNEL", "1")
    crc_kernel._loaded.cache_clear()
    try:
        assert not crc_kernel.loaded() and integrity.crc_engine() in ("zlib", "isal")
        with pytest.raises(RuntimeError):
            crc_kernel.crc32(b"abc")
    finally:
        monkeypatch.delenv("ADAMDIAG_NO_KERNEL")
        crc_kernel._loaded.cache_clear()
    assert os.environ.get("ADAMDIAG_NO_KERNEL") is None


@needs_kernel
@pytest.mark.parametrize("plain", PATHS)
def test_copy_with_crc_copies_and_equals_zlib(plain: bool) -> None:
    """The fused copy (a DeepSpeed gather) writes exactly the source bytes and returns zlib's CRC of
    them, at every source alignment, continuing a given crc."""
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, 70_000, dtype=np.uint8)
    for off in range(64):
        for n in (0, 1, 63, 127, 128, 129, 1000, 65_537):
            dst = np.zeros(n + 3, np.uint8)
            got = crc_kernel.copy_crc32(int(dst.ctypes.data) + 3, int(src.ctypes.data) + off, n, 99, plain=plain)
            assert got == zlib.crc32(src[off : off + n].tobytes(), 99), (off, n)
            assert dst[3:].tobytes() == src[off : off + n].tobytes() and not dst[:3].any()


def test_combine_equals_zlib_of_the_concatenation() -> None:
    rng = random.Random(11)
    for a, b in ((0, 0), (0, 9), (9, 0), (1, 1), (1000, 4097), (13, (3 << 20) + 5)):
        x, y = rng.randbytes(a), rng.randbytes(b)
        assert integrity.crc32_combine(zlib.crc32(x), zlib.crc32(y), b) == zlib.crc32(x + y)


@pytest.mark.parametrize("where", [None, 0, 700, 1200, 2000, 3995])
@pytest.mark.parametrize("engine", ["kernel", "fallback"], indirect=True)
def test_member_checked_from_its_pieces(engine: str, where: int | None, tmp_path: Path) -> None:
    """A member read in pieces (some copied with their CRC by gather_into, some not copied, bytes between
    and around them never read by a piece): finish() puts its CRC together and finds a flipped bit
    anywhere in it — before the first piece, inside a copied piece, inside a piece whose CRC came with its
    copy, between pieces, after the last — and nothing in the undamaged file."""
    _assert_engine(engine)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal(4000).astype(np.float32))
    f = tmp_path / "x.pt"
    torch.save({"x": x}, f)
    if where is not None:
        raw = bytearray(f.read_bytes())
        raw[raw.index(x.numpy().tobytes()) + 4 * where + 1] ^= 0x04
        f.write_bytes(bytes(raw))
    y = torch.load(f, mmap=True, weights_only=True)["x"]
    known: dict[tuple[int, int], int] = {}
    out = torch.empty(1490)
    integrity.gather_into([y[10:1000], y[1000:1500]], out, known)  # copied (with their CRCs by the kernel)
    assert torch.equal(out, y[10:1500])
    assert bool(known) == (engine == "kernel")
    check = integrity.ZipCrcCheck()
    pieces = [integrity.Piece(y[10:1000], known), integrity.Piece(y[1000:1500], known), integrity.Piece(y[3000:3990])]
    locs = {check.add_piece(p) for p in pieces}
    assert len(locs) == 1 and None not in locs and not known  # every known CRC was used
    verdict = check.finish()
    (loc,) = locs
    with zipfile.ZipFile(f) as zf:
        member = next(i.filename for i in zf.infolist() if i.file_size == 16000)
    assert verdict == {loc: None if where is None else member}


@pytest.mark.parametrize("jobs", [1, 3])
@pytest.mark.parametrize("engine", ["kernel", "fallback"], indirect=True)
def test_zero3_partition_damage_is_ad403_with_and_without_kernel(
    engine: str, jobs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZeRO-3 (2 ranks, real DeepSpeed files): a flipped bit in rank 1's flat exp_avg partition is AD403 on
    the tensors cut from it, whether the pieces' CRCs came with the gather's copy (kernel) or from zlib, and
    whether the pieces come in order (1 job) or from several threads; the undamaged checkpoint has none.
    With the kernel the gathered bytes are not CRC'd a second time."""
    from adamdiag.io.checkpoints import torch_load
    from adamdiag.io.checkpoints.deepspeed import SAFE_GLOBALS

    _assert_engine(engine)
    fix = Path(__file__).parent.parent / "fixtures" / "deepspeed" / "z3_fp32"
    copied, separate = [0], [0]
    real_copy, real_mapped = crc_kernel.copy_crc32, integrity._crc_of_mapped

    def counting_copy(dst: int, src: int, size: int, crc: int = 0, *, plain: bool = False) -> int:
        copied[0] += size
        return real_copy(dst, src, size, crc, plain=plain)

    def counting_mapped(ptr: int, size: int, crc: int = 0) -> int:
        separate[0] += size
        return real_mapped(ptr, size, crc)

    monkeypatch.setattr(crc_kernel, "copy_crc32", counting_copy)
    monkeypatch.setattr(integrity, "_crc_of_mapped", counting_mapped)
    good = summarize_checkpoint(fix, jobs=jobs)
    assert not any(t.corrupt for t in good.tensors) and not any("AD403" in w for w in good.warnings)
    if engine == "kernel":  # the CRCs came with the copies: only what no gathered piece covered is read again
        assert copied[0] > 0 and separate[0] < copied[0]
    else:
        assert copied[0] == 0 and separate[0] > 0
    d = tmp_path / "z3"
    shutil.copytree(fix, d)
    f = d / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    obj, _ = torch_load(f, trust=False, extra_globals=SAFE_GLOBALS)
    data = obj["optimizer_state_dict"]["optimizer_state_dict"]["state"][0]["exp_avg"].numpy().tobytes()
    raw = bytearray(f.read_bytes())
    raw[raw.index(data) + 9] ^= 0x02
    f.write_bytes(bytes(raw))
    s = summarize_checkpoint(d, jobs=jobs)
    hit = [t for t in s.tensors if t.corrupt]
    assert hit and all("exp_avg (" in (t.corrupt or "") for t in hit)
    assert {t.label for t in hit} < {t.label for t in s.tensors}  # only the tensors cut from that member
    assert all(any("AD403" in w and f"`{t.label}`" in w for w in s.warnings) for t in hit)
