"""Writers of real event files for the event-reader tests (no tests in here).

torch's SummaryWriter and tensorboardX write their own files; TF1/TF2-style files are built with the
real protobuf classes (``tensorboard.compat.proto``) and framed by TensorBoard's own ``RecordWriter``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

T0 = 1.7e9


def write_torch(
    logdir: Path,
    steps: int,
    tags=("loss", "lr"),
    *,
    start: int = 0,
    offset: float = 0.0,
    hist_every: int = 0,
    extras: bool = False,
) -> Path:
    """torch SummaryWriter: scalars (value = f(step)), optional histograms, images and text."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(logdir))
    g = torch.Generator().manual_seed(0)
    for s in range(start, start + steps):
        for j, t in enumerate(tags):
            w.add_scalar(t, value_of(s, j) + offset, s)
        if hist_every and s % hist_every == 0:
            w.add_histogram("grad/w", torch.randn(1000, generator=g) * (1 + s), s)
        if extras and s == start:
            w.add_image("img", torch.zeros(3, 4, 4), s)
            w.add_text("note", "hello", s)
    w.close()
    return logdir


def write_tbx(logdir: Path, steps: int, tags=("loss", "lr")) -> Path:
    import tensorboardX

    w = tensorboardX.SummaryWriter(logdir=str(logdir))
    for s in range(steps):
        for j, t in enumerate(tags):
            w.add_scalar(t, value_of(s, j), s)
    w.close()
    return logdir


def value_of(step: int, j: int) -> float:
    # float32-representable values so every writer stores them exactly.
    return float(np.float32(1.0 / (step + 1) + j))


def write_records(path: Path, events: list) -> Path:
    """Frame Event protos with TensorBoard's own RecordWriter, file_version first (like every writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        rw = RecordWriter(f)
        rw.write(event_pb2.Event(wall_time=T0, file_version="brain.Event:2").SerializeToString())
        for ev in events:
            rw.write(ev.SerializeToString() if not isinstance(ev, bytes) else ev)
    return path


def tf1_events(steps: int, tags=("loss", "lr"), *, merged: bool = False) -> list:
    """TF1 ``simple_value`` summaries; ``merged`` puts all tags of a step into one Summary."""
    evs = []
    for s in range(steps):
        vals = [summary_pb2.Summary.Value(tag=t, simple_value=value_of(s, j)) for j, t in enumerate(tags)]
        if merged:
            evs.append(event_pb2.Event(wall_time=T0 + s, step=s, summary=summary_pb2.Summary(value=vals)))
        else:
            for v in vals:
                evs.append(event_pb2.Event(wall_time=T0 + s, step=s, summary=summary_pb2.Summary(value=[v])))
    return evs


def scalar_tensor(x: float, *, double: bool, content: bool) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto(dtype=2 if double else 1, tensor_shape=tensor_shape_pb2.TensorShapeProto())
    if content:
        t.tensor_content = struct.pack("<d" if double else "<f", x)
    elif double:
        t.double_val.append(x)
    else:
        t.float_val.append(x)
    return t


def tf2_events(steps: int, *, double: bool, content: bool, tags=("loss", "lr")) -> list:
    """TF2 tensor scalar summaries; like TF2, metadata (plugin 'scalars') only on a tag's first value."""
    evs = []
    for s in range(steps):
        for j, t in enumerate(tags):
            v = summary_pb2.Summary.Value(tag=t, tensor=scalar_tensor(value_of(s, j), double=double, content=content))
            if s == 0:
                v.metadata.plugin_data.plugin_name = "scalars"
            evs.append(event_pb2.Event(wall_time=T0 + s, step=s, summary=summary_pb2.Summary(value=[v])))
    return evs


def tf2_histogram_event(step: int, buckets: np.ndarray, tag: str = "h") -> event_pb2.Event:
    """A TF2 histogram: a [k, 3] float64 tensor (left, right, count), plugin 'histograms'."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(buckets)), tensor_shape_pb2.TensorShapeProto.Dim(size=3)]
    )
    t = tensor_pb2.TensorProto(dtype=2, tensor_shape=shape, tensor_content=np.asarray(buckets, "<f8").tobytes())
    v = summary_pb2.Summary.Value(tag=tag, tensor=t)
    v.metadata.plugin_data.plugin_name = "histograms"
    return event_pb2.Event(wall_time=T0 + step, step=step, summary=summary_pb2.Summary(value=[v]))


def event_file(logdir: Path, n: int = 0) -> Path:
    files = sorted(Path(logdir).glob("events.out.tfevents.*"))
    return files[n]
