"""Damaged event files: the reader returns every valid record, warns with file and byte offset,
never raises on content, and the fast path agrees with the reference on all of it."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from events_util import tf1_events, tf2_events, write_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adamdiag.errors import InputError
from adamdiag.io import events as E
from adamdiag.io import tfrecord as T

NAME = "events.out.tfevents.1.host"


def _events(n: int = 12) -> list[bytes]:
    evs = tf1_events(n // 2, ("loss",)) + tf2_events(n - n // 2, double=True, content=True, tags=("t",))
    return [e.SerializeToString() for e in evs]


def _file(tmp_path, data: bytes):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / NAME).write_bytes(data)
    return run / NAME


def _both(path):
    """Read with the fast and the reference path; they must agree exactly. Returns the fast one."""
    fast = E._assemble("r", [E.read_file(path)])
    ref = E._assemble("r", [E.read_file(path, fast=False)])
    pd.testing.assert_frame_equal(fast.scalars, ref.scalars)
    assert fast.warnings == ref.warnings and fast.skipped == ref.skipped
    assert fast.file_info[0]["records"] == ref.file_info[0]["records"]
    return fast


def _both_light(path) -> list[tuple[str, int]]:
    """Cheaper :func:`_both` for fuzzing: compare the decoded columns, skip building frames."""
    fast, ref = E.read_file(path), E.read_file(path, fast=False)

    def rows(d):
        tags = np.asarray(d.tags + [""], object)[np.concatenate(d.s_tag)] if d.tags else np.zeros(0, object)
        cols = [np.concatenate(c) for c in (d.s_step, d.s_wall, d.s_value)]
        return list(zip(tags.tolist(), *(c.tolist() for c in cols)))

    got = rows(fast)
    assert got == rows(ref) and sorted(fast.tags) == sorted(ref.tags)  # vocab order is free
    assert fast.warnings == ref.warnings and fast.skipped == ref.skipped and fast.records == ref.records
    assert fast.h_rows == ref.h_rows and fast.first_wall_time == ref.first_wall_time
    return [(t, s) for t, s, *_ in got]


def _steps(run) -> list[tuple[str, int]]:
    return list(zip(run.scalars["tag"].astype(str), run.scalars["step"].tolist()))


def test_truncated_at_every_byte_of_last_record(tmp_path):
    payloads = _events()
    framed = [T.frame(p) for p in payloads]
    head = T.frame(payloads[0])[:0].join(framed[:-1])
    full = _both(_file(tmp_path, head + framed[-1]))
    prefix = _both(_file(tmp_path, head))
    assert len(full.scalars) == len(prefix.scalars) + 1 and prefix.warnings == []
    for cut in range(1, len(framed[-1])):
        run = _both(_file(tmp_path, head + framed[-1][:cut]))
        assert _steps(run) == _steps(prefix), cut
        assert len(run.warnings) == 1 and f"truncated record at byte {len(head)}" in run.warnings[0]
        assert run.skipped == {"truncated": 1}
        assert NAME in run.warnings[0]


def test_flipped_payload_byte_skips_that_record_only(tmp_path):
    payloads = _events()
    framed = [T.frame(p) for p in payloads]
    clean = _both(_file(tmp_path, b"".join(framed)))
    bad = bytearray(framed[5])
    bad[T.HEADER + 3] ^= 0x40
    off = sum(map(len, framed[:5]))
    run = _both(_file(tmp_path, b"".join(framed[:5]) + bytes(bad) + b"".join(framed[6:])))
    assert len(run.scalars) == len(clean.scalars) - 1
    assert run.warnings == [f"{tmp_path / 'run' / NAME}: CRC mismatch in record at byte {off}; record skipped"]
    assert run.skipped == {"crc_mismatch": 1}
    expected = _steps(clean)
    del expected[5]  # one scalar per record, and no file_version record here
    assert _steps(run) == expected


def test_corrupt_length_resyncs_to_next_record(tmp_path):
    framed = [T.frame(p) for p in _events()]
    bad = bytearray(framed[3])
    bad[1] ^= 0xFF  # the length now claims ~64 KB: the length CRC catches it
    run = _both(_file(tmp_path, b"".join(framed[:3]) + bytes(bad) + b"".join(framed[4:])))
    assert len(run.scalars) == len(framed) - 1
    off = sum(map(len, framed[:3]))
    assert len(run.warnings) == 1 and f"corrupt record header at byte {off}" in run.warnings[0]
    assert f"next valid record at byte {off + len(bad)}" in run.warnings[0]
    assert run.skipped == {"corrupt_header": 1}


def test_garbage_between_records_is_skipped(tmp_path):
    framed = [T.frame(p) for p in _events()]
    junk = bytes(random.Random(1).randrange(256) for _ in range(333))
    run = _both(_file(tmp_path, b"".join(framed[:6]) + junk + b"".join(framed[6:])))
    assert len(run.scalars) == len(framed) and len(run.warnings) == 1


def test_empty_file_warns(tmp_path):
    path = _file(tmp_path, b"")
    run = E.read_run(path.parent)
    assert run.scalars.empty and run.warnings == [f"{path}: empty event file (0 bytes)"]


def test_zero_length_payload(tmp_path):
    framed = [T.frame(p) for p in _events(4)]
    run = _both(_file(tmp_path, framed[0] + T.frame(b"") + b"".join(framed[1:])))
    assert len(run.scalars) == 4
    assert run.warnings == [
        f"{tmp_path / 'run' / NAME}: empty record (zero-length payload) at byte {len(framed[0])}; ignored"
    ]


def test_valid_frame_with_garbage_payload(tmp_path):
    framed = [T.frame(p) for p in _events(4)]
    run = _both(_file(tmp_path, framed[0] + T.frame(b"\xff\xff\xff") + b"".join(framed[1:])))
    assert len(run.scalars) == 4
    assert len(run.warnings) == 1 and "is not a valid Event" in run.warnings[0]


def test_not_an_event_file(tmp_path):
    path = _file(tmp_path, b"this is a text file, not TFRecords\n" * 40)
    with pytest.raises(InputError, match="nothing readable"):
        E.read_run(path.parent)
    run = _both(path)
    assert run.scalars.empty and "no readable records" in run.warnings[-1]
    # Beside a good file it is only a warning.
    write_records(path.parent / (NAME + ".good"), tf1_events(3, ("a",)))
    run = E.read_run(path.parent)
    assert len(run.scalars) == 3 and any("not a TensorBoard event file" in w for w in run.warnings)


def test_damage_in_a_large_file_fast_path(tmp_path):
    """Damage deep inside a file bigger than one chunk: the fast path falls back to the reference
    from the damaged chunk on and still returns every valid record."""
    payloads = [e.SerializeToString() for e in tf1_events(6_000, ("a", "b"))]
    framed = [T.frame(p) for p in payloads]
    data = bytearray(b"".join(framed))
    hit = len(framed) * 3 // 4
    off = sum(map(len, framed[:hit]))
    data[off + T.HEADER + 2] ^= 1
    path = _file(tmp_path, bytes(data))
    old = E.CHUNK_BYTES
    try:
        E.CHUNK_BYTES = 64 << 10
        run = _both(path)
    finally:
        E.CHUNK_BYTES = old
    assert len(run.scalars) == len(framed) - 1 and run.skipped == {"crc_mismatch": 1}
    assert f"at byte {off}" in run.warnings[0]


def test_check_crc_off_reads_flipped_records(tmp_path):
    framed = [T.frame(p) for p in _events(6)]
    bad = bytearray(framed[2])
    bad[-1] ^= 0xFF  # only the stored payload CRC is wrong
    path = _file(tmp_path, b"".join(framed[:2]) + bytes(bad) + b"".join(framed[3:]))
    assert len(E.read_run(path.parent).scalars) == 5
    assert len(E.read_run(path.parent, check_crc=False).scalars) == 6


# ------------------------------------------------------------------------- fuzzing the reader

_valid = st.sampled_from(_events(40))
_record = st.one_of(_valid, st.binary(max_size=40))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payloads=st.lists(_record, min_size=0, max_size=25),
    damage=st.lists(
        st.tuples(st.sampled_from(["flip", "junk", "cut", "dup"]), st.integers(0, 10_000), st.binary(max_size=30)),
        max_size=3,
    ),
)
def test_fuzz_reader_never_raises_and_keeps_intact_records(tmp_path, payloads, damage):
    framed = [T.frame(p) for p in payloads]
    bounds = np.cumsum([0] + [len(f) for f in framed])
    data = bytearray(b"".join(framed))
    touched: set[int] = set()  # records whose bytes were damaged
    cut_at = None
    size = len(data)
    # Apply damage back to front so that every position still refers to the original layout.
    for kind, pos, junk in sorted(((k, p % max(size, 1), j) for k, p, j in damage), key=lambda d: -d[1]):
        if pos >= len(data):  # already cut away
            continue
        rec = int(np.searchsorted(bounds, pos, side="right")) - 1
        inside = pos > bounds[rec]
        if kind == "flip":
            data[pos] ^= 1 + (junk[0] if junk else 0) % 255
            touched.add(rec)
        elif kind == "junk" and junk:
            data[pos:pos] = junk
            if inside:
                touched.add(rec)
        elif kind == "cut":
            del data[pos:]
            cut_at = rec if cut_at is None else min(cut_at, rec)
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + 7]
            if inside:
                touched.add(rec)
    got = _both_light(_file(tmp_path, bytes(data)))  # never raises; fast == reference
    # Every intact record before the cut has its scalars in the output, in order.
    want = []
    for i, p in enumerate(payloads):
        if i in touched or (cut_at is not None and i >= cut_at):
            continue
        sink = E._Sink()
        E._decode_ref(p, sink, "x", 0)
        names = list(sink.tag_index)
        want += [(names[t], s) for t, s in zip(sink.s_tag, sink.s_step)]
    it = iter(got)
    assert all(w in it for w in want)  # want is a subsequence of what was read
