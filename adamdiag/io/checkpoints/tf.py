"""TensorFlow checkpoints without TensorFlow: TF1 ``Saver`` (V2 bundle) and TF2 object-based
(``tf.train.Checkpoint`` of a Keras 3 or legacy tf.keras optimizer) — plus discovery for Keras files.

A V2 bundle is ``<prefix>.index`` + ``<prefix>.data-0000k-of-0000n`` (+ ``<prefix>.meta`` for a TF1
Saver). The ``.index`` is a LevelDB-format table (footer, index block, data blocks of prefix-compressed
keys; uncompressed in every bundle TensorFlow writes) mapping each tensor name to a
``BundleEntryProto``. tensorboard ships the MetaGraphDef / TrackableObjectGraph / TensorShape protos
(used here) but not BundleEntryProto, and no Python LevelDB-table reader is a light dependency, so
both are parsed by hand below (a few dozen lines: varints and fixed-size fields; the formats have
been stable since 2016). Every tensor read is checked against the entry's crc32c (``google_crc32c``).

Conventions (the optimizer code of TF1 ``AdamOptimizer`` and Keras): v is the un-corrected EMA of g²
and eps is added to the un-corrected √v — adamdiag's "tf" convention.

* TF1: slots ``<var>/Adam`` (m) and ``<var>/Adam_1`` (v) — exact pairs from the ``ApplyAdam`` nodes of
  the ``.meta`` graph when present, else by name suffix and shape; lr/β1/β2/eps from the Const nodes
  that feed ``ApplyAdam`` (``Adam/learning_rate`` …) — only in ``.meta``. No step counter: ``global_step``
  if the user made one, else ``beta2_power`` = β2^(t+1); that underflows to 0 in float32 after ~90k
  steps at β2 = 0.999, and then TF's own update uses a bias correction of exactly 1: the step comes
  from the ``-N`` suffix and the bias correction is 1 (said in the warnings).
* TF2 / Keras 3: ``optimizer/_iterations``, ``_learning_rate`` (absent with a schedule), the slots
  listed under the optimizer's ``_momentums`` / ``_velocities`` (/ ``_velocity_hats``) in the
  ``_CHECKPOINTABLE_OBJECT_GRAPH`` and matched to ``_trainable_variables`` by their names
  (``adam/<var path with _>_momentum``), shapes checked. β1/β2/eps are not stored: Keras defaults,
  flagged ``default``. Legacy tf.keras / TF1-in-TF2: ``slot_variables`` of the object graph.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from adamdiag.errors import InputError
from adamdiag.io.checkpoints.keras import KERAS_DEFAULTS
from adamdiag.io.protowire import fields as proto_fields
from adamdiag.io.protowire import varint

DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<k>\d{5})-of-(?P<n>\d{5})$")
_TABLE_MAGIC = 0xDB4775248B80FB57
_MASK_DELTA = 0xA282EAD8
# tensorflow/core/framework/types.proto → numpy (only what optimizer state and step counters use)
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
DT_BFLOAT16, DT_STRING = 14, 7


# --- crc32c (varints: adamdiag.io.protowire) -----------------------------------------------------------------------
def crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data if isinstance(data, bytes) else bytes(data)))


def unmask(masked: int) -> int:
    """LevelDB/TF crc masking (rotate right 15, add a constant), undone."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _tensor_crc(data: bytes, dtype: int) -> int:
    """The crc32c TensorFlow stores for a tensor's bytes. Numeric: of the bytes. String (scalar, as
    the object graph is): of the length as uint32, the 4 checksum bytes, then the string's bytes."""
    if dtype != DT_STRING:
        return crc32c(data)
    import google_crc32c

    ln, pos = varint(data, 0)
    c = google_crc32c.Checksum(struct.pack("<I", ln) if ln <= 0xFFFFFFFF else struct.pack("<Q", ln))
    c.update(bytes(data[pos:]))
    return int.from_bytes(c.digest(), "big")


# --- the .index table --------------------------------------------------------------------------------
def _block(buf: bytes, offset: int, size: int, what: str) -> bytes:
    """A table block's contents, its trailer (compression byte + masked crc32c) checked."""
    if offset + size + 5 > len(buf):
        raise ValueError(f"{what} block beyond the end of the file")
    body = buf[offset : offset + size]
    ctype = buf[offset + size]
    (crc,) = struct.unpack_from("<I", buf, offset + size + 1)
    if crc32c(buf[offset : offset + size + 1]) != unmask(crc):
        raise ValueError(f"{what} block fails its crc32c check")
    if ctype != 0:
        raise ValueError(f"{what} block is compressed (type {ctype}); TensorFlow writes bundles uncompressed")
    return body


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Key/value pairs of one block: keys share a prefix with the previous key (LevelDB format)."""
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = varint(block, pos)
        unshared, pos = varint(block, pos)
        vlen, pos = varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + vlen]
        pos += vlen


def read_table(buf: bytes) -> Iterator[tuple[bytes, bytes]]:
    """All key/value pairs of a LevelDB-format table held in ``buf``, in key order."""
    if len(buf) < 48:
        raise ValueError("too short for a table")
    (magic,) = struct.unpack_from("<Q", buf, len(buf) - 8)
    if magic != _TABLE_MAGIC:
        raise ValueError("no table magic number at its end")
    pos = len(buf) - 48
    _, pos = varint(buf, pos)  # metaindex handle: unused by bundles
    _, pos = varint(buf, pos)
    ioff, pos = varint(buf, pos)
    isize, pos = varint(buf, pos)
    for _, handle in _block_entries(_block(buf, ioff, isize, "index")):
        off, p = varint(handle, 0)
        size, _ = varint(handle, p)
        yield from _block_entries(_block(buf, off, size, "data"))


# --- the bundle --------------------------------------------------------------------------------------
@dataclass
class BundleEntry:
    """A BundleEntryProto: where one tensor lives and what it is."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool


def _missing_index(prefix: Path) -> None:
    """A prefix whose ``.data``/``.meta`` files exist but not its ``.index``: say that, not 'no such file'."""
    if not prefix.parent.is_dir():
        return
    have = sorted(f.name for f in prefix.parent.glob(glob_escape(prefix.name) + ".*"))
    if any(DATA_RE.match(n) or n.endswith(".meta") for n in have):
        index = Path(f"{prefix}.index")
        if os.path.lexists(index):  # there, but no regular file (a FIFO, a dangling link): say which
            from adamdiag.errors import missing_path
            from adamdiag.io.checkpoints import non_regular

            what = non_regular(index) or ("directory" if index.is_dir() else None)
            if what:
                raise InputError(f"{index}: a {what}, not a TensorFlow checkpoint index (not opened)")
            raise missing_path(index)
        raise InputError(
            f"{prefix}: a TensorFlow checkpoint without its .index file (found {', '.join(have[:3])}): "
            "the .index is needed to read the .data file"
        )


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _shape(buf: bytes) -> tuple[int, ...]:
    from tensorboard.compat.proto import tensor_shape_pb2

    sp = tensor_shape_pb2.TensorShapeProto.FromString(buf)
    return tuple(int(d.size) for d in sp.dim)


def parse_entry(buf: bytes) -> BundleEntry:
    e = BundleEntry(0, (), 0, 0, 0, 0, False)
    for num, _, val in proto_fields(buf):
        if num == 1:
            e.dtype = val
        elif num == 2:
            e.shape = _shape(val)
        elif num == 3:
            e.shard_id = val
        elif num == 4:
            e.offset = val
        elif num == 5:
            e.size = val
        elif num == 6:
            e.crc32c = val
        elif num == 7:
            e.sliced = True  # a partitioned variable: its slices are separate entries
    return e


class Bundle:
    """A V2 checkpoint bundle (``<prefix>.index`` + data shards), read without TensorFlow."""

    def __init__(self, prefix: Path) -> None:
        from adamdiag.io.checkpoints import open_regular

        self.prefix = Path(prefix)
        index = Path(f"{prefix}.index")
        try:
            with open_regular(index, what="TensorFlow checkpoint index") as f:
                buf = f.read()
        except OSError as e:
            raise InputError(f"{index}: cannot be read ({e.strerror})") from None
        self.entries: dict[str, BundleEntry] = {}
        self.num_shards = 1
        try:
            for key, val in read_table(buf):
                if key == b"":  # BundleHeaderProto: num_shards (1), endianness (2: 0 little, 1 big)
                    hdr = {num: v for num, _, v in proto_fields(val)}
                    self.num_shards = int(hdr.get(1, 1))
                    if hdr.get(2, 0) != 0:
                        raise ValueError("big-endian bundle (not supported)")
                    continue
                self.entries[key.decode("utf-8", "replace")] = parse_entry(val)
        except (ValueError, struct.error, IndexError, DecodeError) as e:
            raise InputError(f"{index}: not a readable TensorFlow checkpoint index ({e})") from None

    def shard(self, k: int) -> Path:
        return Path(f"{self.prefix}.data-{k:05d}-of-{self.num_shards:05d}")

    def raw(self, name: str) -> bytes:
        """A tensor's bytes, crc32c-checked: the entry stores the masked crc32c of exactly these bytes
        (numeric tensors) or of the string layout described in :meth:`read_string`."""
        from adamdiag.io.checkpoints import open_regular

        e = self.entries[name]
        path = self.shard(e.shard_id)
        try:
            with open_regular(path, what="TensorFlow checkpoint shard") as f:
                f.seek(e.offset)
                data = f.read(e.size)
        except OSError as err:
            raise InputError(f"{path}: cannot be read ({err.strerror}); tensor {name}") from None
        if len(data) != e.size:
            raise InputError(f"{path}: truncated (tensor {name} needs bytes {e.offset}..{e.offset + e.size})")
        if _tensor_crc(data, e.dtype) != unmask(e.crc32c):
            raise InputError(f"{path}: tensor {name} fails its crc32c check (the file is damaged or was changed)")
        return data

    def read(self, name: str) -> np.ndarray:
        """A numeric tensor as a (read-only) numpy array of its stored dtype (bfloat16 → float32)."""
        e = self.entries[name]
        if e.sliced:
            raise InputError(f"{self.prefix}: {name} is a partitioned variable (not supported)")
        data = self.raw(name)
        if e.dtype == DT_BFLOAT16:
            u = np.frombuffer(data, "<u2").astype(np.uint32) << 16
            return u.view(np.float32).reshape(e.shape)
        dt = DTYPES.get(e.dtype)
        if dt is None:
            raise InputError(f"{self.prefix}: tensor {name} has an unsupported dtype (enum {e.dtype})")
        n = math.prod(e.shape)
        if n * dt.itemsize != len(data):
            raise InputError(f"{self.prefix}: tensor {name}: {len(data)} bytes for shape {e.shape}")
        # read-only view of the bytes just read (no second copy): statistics never write to it
        return np.frombuffer(data, dt).reshape(e.shape)

    def read_string(self, name: str) -> bytes:
        """A scalar string tensor: varint length, a 4-byte checksum of the lengths, the bytes (checked
        in :meth:`raw`)."""
        data = self.raw(name)
        ln, pos = varint(data, 0)
        return data[pos + 4 : pos + 4 + ln]

    def scalar(self, name: str) -> float | None:
        if name not in self.entries:
            return None
        a = self.read(name)
        return a.reshape(-1)[0].item() if a.size == 1 else None


# --- naming what users pass --------------------------------------------------------------------------
def bundle_prefix(path: Path) -> Path | None:
    """The bundle prefix a path names: the prefix itself, any of its files, or None."""
    s = str(path)
    if Path(s + ".index").is_file():
        return Path(s)
    for suffix in (".index", ".meta"):
        if s.endswith(suffix) and Path(s[: -len(suffix)] + ".index").is_file():
            return Path(s[: -len(suffix)])
    m = DATA_RE.match(s)
    if m and Path(m["prefix"] + ".index").is_file():
        return Path(m["prefix"])
    return None


def checkpoint_state(path: Path) -> tuple[Path | None, list[Path], list[str]]:
    """The ``checkpoint`` text file: (latest prefix, all prefixes, notes). Stored paths (absolute ones
    go stale when a run is copied) that do not exist are resolved relative to the file's directory."""
    notes: list[str] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot be read ({e})") from None

    def resolve(p: str) -> Path | None:
        cand = Path(p) if Path(p).is_absolute() else path.parent / p
        if bundle_prefix(cand) is not None:
            return cand
        local = path.parent / Path(p).name
        if bundle_prefix(local) is not None:
            notes.append(f"the checkpoint file's paths are stale ({Path(p).parent}/…): resolved in {path.parent}")
            return local
        return None

    latest, every = None, []
    for line in text.splitlines():
        m = re.match(r'\s*(model_checkpoint_path|all_model_checkpoint_paths)\s*:\s*"(.*)"\s*$', line)
        if not m:
            continue
        r = resolve(m[2].encode().decode("unicode_escape"))
        if m[1] == "model_checkpoint_path":
            latest = r
        elif r is not None and r not in every:
            every.append(r)
    if latest is not None and latest not in every:
        every.append(latest)
    return latest, every, list(dict.fromkeys(notes))


def is_checkpoint_file(path: Path) -> bool:
    """A TensorFlow ``checkpoint`` text file (CheckpointState), by name and content."""
    if path.name != "checkpoint" or not path.is_file() or path.stat().st_size > 1 << 20:
        return False
    try:
        return "model_checkpoint_path" in path.read_text(errors="replace")
    except OSError:
        return False


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_keras_file(path: Path) -> bool:
    """A Keras 3 ``.keras`` / ``.weights.h5`` file, or any other ``.h5``/``.hdf5`` that is HDF5
    (named explicitly; the Keras reader then says what it holds)."""
    if not path.is_file():
        return False
    if path.name.endswith(".weights.h5") or path.suffix == ".keras":
        return True
    if path.suffix in (".h5", ".hdf5"):
        try:
            with open(path, "rb") as f:
                return f.read(8) == HDF5_MAGIC
        except OSError:
            return False
    return False


def find_foreign(root: Path) -> list[Path] | None:
    """TF/Keras checkpoints a path names: a list (possibly empty for a directory) or None when the
    path is none of them (not a bundle prefix or file, ``checkpoint`` file, Keras file or directory).
    Bundles are returned as their prefix (a path that is no file)."""
    root = Path(root)
    pre = bundle_prefix(root)
    if pre is not None:
        return [pre]
    if is_checkpoint_file(root):
        latest, _, _ = checkpoint_state(root)
        if latest is None:
            raise InputError(f"{root}: names no checkpoint that exists here (model_checkpoint_path)")
        return [root]  # opened as the file (open_foreign resolves it again, keeping its notes)
    if is_keras_file(root):
        return [root]
    if not root.exists():
        _missing_index(root)
    if not root.is_dir():
        return None
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        with_data = {m["prefix"] for n in filenames if (m := DATA_RE.match(n))}
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if fn.endswith(".index") and fn[: -len(".index")] in with_data:
                out.append(Path(dirpath) / fn[: -len(".index")])
            elif is_keras_file(p):
                out.append(p)
    return out


def step_suffix(prefix: Path) -> int | None:
    """N of ``model.ckpt-N`` / ``ckpt-N`` (what the Saver's global_step argument wrote)."""
    m = re.search(r"-(\d+)$", prefix.name)
    return int(m.group(1)) if m else None


# --- TF1 ---------------------------------------------------------------------------------------------
def _meta_hyper(meta: Path, warnings: list[str]) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """From a ``.meta`` MetaGraphDef: {var: (m name, v name)} from the ApplyAdam ops and the
    hyperparameters feeding them ({'lr': value or None, ...}); empty when there is no .meta."""
    if not meta.is_file():
        return {}, {}
    from tensorboard.compat.proto import meta_graph_pb2

    try:
        mg = meta_graph_pb2.MetaGraphDef.FromString(meta.read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and others
        warnings.append(f"{meta.name} is unreadable ({type(e).__name__}): hyperparameters unknown")
        return {}, {}
    nodes = {n.name: n for n in mg.graph_def.node}

    def base(inp: str) -> str:
        return inp.lstrip("^").split(":")[0]

    def const(inp: str) -> tuple[float | None, str]:
        name = base(inp)
        for _ in range(8):  # through the Cast/Identity the optimizer puts in front of its Consts
            n = nodes.get(name)
            if n is None:
                return None, name
            if n.op in ("Cast", "Identity") and n.input:
                name = base(n.input[0])
                continue
            if n.op == "Const":
                t = n.attr["value"].tensor
                vals = list(t.float_val) or list(t.double_val) or list(t.half_val)
                if not vals and t.tensor_content:
                    dt = DTYPES.get(t.dtype)
                    vals = np.frombuffer(t.tensor_content, dt).tolist() if dt is not None else []
                return (f32(vals[0]) if vals else None), name
            return None, name
        return None, name

    pairs: dict[str, tuple[str, str]] = {}
    hyper: dict[str, Any] = {}
    for n in mg.graph_def.node:
        if n.op not in ("ApplyAdam", "ResourceApplyAdam") or len(n.input) < 10:
            continue
        var, m, v = (base(x) for x in n.input[:3])
        pairs[var] = (m, v)
        for key, inp in zip(("lr", "beta1", "beta2", "eps"), n.input[5:9]):
            val, src = const(inp)
            prev = hyper.get(key)
            if prev is not None and val is not None and prev != val:
                warnings.append(f"several optimizers with different {key}: using {prev}")
                continue
            if val is None:
                hyper.setdefault(f"{key}_node", src)
            hyper.setdefault(key, val)
            if val is not None:
                hyper[key] = val if prev is None else prev
    return pairs, hyper


def _tf1_pairs(entries: dict[str, BundleEntry]) -> dict[str, tuple[str, str]]:
    """{var: (m, v)} by TF1 slot names: ``<var>/<Opt>`` and ``<var>/<Opt>_1`` of the var's shape
    (``<Opt>`` is the optimizer's name, ``Adam`` unless the user chose another)."""
    children: dict[str, list[str]] = {}
    for c in entries:
        if "/" in c:
            children.setdefault(c.rsplit("/", 1)[0], []).append(c)
    pairs = {}
    for k in entries:
        kids = sorted(children.get(k, []), key=lambda c: (not c.endswith("/Adam"), c))
        for cand in kids:
            vkey = cand + "_1"
            if vkey in entries and entries[cand].shape == entries[k].shape == entries[vkey].shape:
                pairs[k] = (cand, vkey)
                break
    return pairs


# TF1 optimizers whose two slots look like Adam's (<var>/<Name>, <var>/<Name>_1) but are not m and v.
NOT_ADAM = ("RMSProp", "Adadelta", "Ftrl", "ProximalAdagrad", "AdagradDA", "Momentum", "Adagrad")


def open_tf1(prefix: Path, bundle: Bundle):
    from adamdiag.io.checkpoints import OptimizerCheckpoint, _Entry

    warnings: list[str] = []
    pairs, hyper = _meta_hyper(Path(f"{prefix}.meta"), warnings)
    if pairs:
        missing = [v for v, (m, s) in pairs.items() if not {v, m, s} <= bundle.entries.keys()]
        if missing:
            warnings.append(
                f"{len(missing)} variable(s) of the graph's Adam ops are not in the checkpoint, e.g. {missing[0]}"
            )
        pairs = {v: ms for v, ms in pairs.items() if v not in missing}
        mapping = "graph"
    else:
        pairs = _tf1_pairs(bundle.entries)
        mapping = "slot-names"
        names = {m.rsplit("/", 1)[1] for m, _ in pairs.values()}
        has_powers = any(re.fullmatch(r"(.*/)?beta[12]_power(_\d+)?", k) for k in bundle.entries)
        if pairs and not has_powers and not all(n.startswith("Adam") for n in names):
            other = sorted(n for n in names if n.startswith(NOT_ADAM)) or sorted(names)
            raise InputError(
                f"{prefix}: slots named {', '.join(other[:3])} and no beta1_power/beta2_power: not an Adam "
                "optimizer's state (no Adam moments to inspect)"
            )
        why = "no .meta graph" if not Path(f"{prefix}.meta").is_file() else "no ApplyAdam op in the .meta graph"
        if pairs:
            warnings.append(f"{why}: m/v slots matched by name (<var>/Adam, <var>/Adam_1) and shape")
    sliced = [v for v, (m, s_) in pairs.items() if any(bundle.entries[x].sliced for x in (v, m, s_))]
    if sliced:  # partitioned variables: their slices are separate entries (not read here)
        warnings.append(f"{len(sliced)} partitioned variable(s) skipped (not supported), e.g. {sliced[0]}")
        pairs = {v: ms for v, ms in pairs.items() if v not in sliced}
    if not pairs:
        raise InputError(
            f"{prefix}: a TensorFlow checkpoint without Adam slots (no <var>/Adam + <var>/Adam_1 pairs; "
            f"{len(bundle.entries)} tensors, e.g. {next(iter(bundle.entries), '-')})"
        )
    for k in ("lr", "beta1", "beta2", "eps"):
        if hyper.get(k) is None and f"{k}_node" in hyper:
            warnings.append(f"{k} is computed in the graph ({hyper[f'{k}_node']}), not a constant: unknown")
    sources = {k: ("file" if hyper.get(k) is not None else "unknown") for k in ("lr", "beta1", "beta2", "eps")}
    if not Path(f"{prefix}.meta").is_file():
        warnings.append("no .meta file: lr, β1, β2 and eps are unknown (they are stored only in the graph)")

    # The step: global_step if the user made one (the counter the logs use), else the optimizer's own
    # count from beta2_power = β2^(t+1), else the -N suffix. The bias correction is always the one
    # TF applied: from the optimizer's count where it is known.
    beta2 = hyper.get("beta2")
    beta1 = hyper.get("beta1")
    bias = None
    gs = next((k for k in sorted(bundle.entries) if k == "global_step" or k.endswith("/global_step")), None)
    b2p_key = next((k for k in sorted(bundle.entries) if re.fullmatch(r"(.*/)?beta2_power(_\d+)?", k)), None)
    b2p = bundle.scalar(b2p_key) if b2p_key else None
    suffix = step_suffix(prefix)
    t_opt = None
    step: int | None
    if b2p is not None and b2p > 0 and beta2 is not None and 0 < beta2 < 1:
        t_opt = int(round(math.log(b2p) / math.log(beta2))) - 1
    gs_val = bundle.scalar(gs) if gs is not None else None
    if gs_val is not None:
        step = int(gs_val)
        if t_opt is not None and t_opt != step:
            bias = (1.0 - beta1**t_opt if beta1 is not None else 1.0, 1.0 - float(beta2 or 0.0) ** t_opt)
            warnings.append(
                f"global_step is {step} but the optimizer made {t_opt} updates (beta2_power): "
                f"bias corrections use {t_opt}"
            )
    elif t_opt is not None:
        step = t_opt
        if suffix is not None and suffix != step:
            warnings.append(f"optimizer step {step} (from beta2_power) differs from the name's -{suffix}")
    else:
        step = suffix
        if b2p != 0 and step is not None:
            warnings.append(f"step {step} from the checkpoint's name (-N suffix): no global_step, β2 unknown")
    if b2p == 0:
        b = beta2 or 0.999
        lo, hi = (int(math.log(x) / math.log(b)) for x in (1.2e-38, 1.4e-45))  # normal / subnormal float32
        bias = (1.0 - beta1**step if beta1 is not None and step else 1.0, 1.0)
        warnings.append(
            f"beta2_power is 0 (float32 underflows after ~{lo}–{hi} steps at β2={b:g}): step "
            f"{step if step is not None else 'unknown'} from {'global_step' if gs_val is not None else 'the name'}, "
            "and v's bias correction is 1 (as in TensorFlow's own update)"
        )

    h = {
        "lr": _nan(hyper.get("lr")),
        "beta1": _nan(beta1),
        "beta2": _nan(beta2),
        "eps": _nan(hyper.get("eps")),
        "weight_decay": 0.0,
        "amsgrad": False,
        # TF1's AdamOptimizer has no weight decay: 0, not read from the file
        "sources": {**sources, "weight_decay": "default"},
        "bias": bias,
    }
    entries = [
        _Entry(group=0, index=var, pos=i, name=var, shape=tuple(bundle.entries[var].shape), hyper=h)
        for i, var in enumerate(sorted(pairs))
    ]
    ck = OptimizerCheckpoint(
        path=str(prefix),
        step=step,
        layout="tf1",
        optimizer="Adam",
        convention="tf",
        name_mapping=mapping,
        warnings=warnings,
        entries=entries,
    )
    ck._fetch_state = lambda e: _state(bundle, *pairs[str(e.index)], step=step)
    ck._fetch_param = lambda name: _torch(bundle.read(name)) if name in bundle.entries else None
    return ck


def f32(x: float) -> float:
    """A float32 value as the shortest decimal that round-trips (0.999, not 0.99900001287): the
    hyperparameter the user wrote, so β2^t and eps are not off by float32's rounding."""
    return float(str(np.float32(x)))


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _torch(a: np.ndarray):
    """A torch view of a (possibly read-only) array: the statistics only read it."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(a if a.dtype != np.float16 else a.astype(np.float32))


def _state(bundle: Bundle, m: str, v: str, *, step: int | None, vhat: str | None = None) -> dict[str, Any]:
    st = {"exp_avg": _torch(bundle.read(m)), "exp_avg_sq": _torch(bundle.read(v)), "step": step}
    if vhat is not None:
        st["max_exp_avg_sq"] = _torch(bundle.read(vhat))
    return st


# --- TF2 object-based --------------------------------------------------------------------------------
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _object_graph(bundle: Bundle):
    from tensorboard.compat.proto import trackable_object_graph_pb2

    try:
        return trackable_object_graph_pb2.TrackableObjectGraph.FromString(bundle.read_string(OBJECT_GRAPH))
    except DecodeError as e:  # crc-checked, so only a writer's bug or a foreign file gets here
        raise InputError(f"{bundle.prefix}: unreadable object graph ({e})") from None


def _var_key(node) -> str | None:
    for a in node.attributes:
        if a.name == "VARIABLE_VALUE":
            return a.checkpoint_key
    return None


def _var_name(node) -> str | None:
    for a in node.attributes:
        if a.name == "VARIABLE_VALUE":
            return a.full_name or None
    return None


def _children(node) -> dict[str, int]:
    return {c.local_name: c.node_id for c in node.children}


def _listed(g, node_id: int) -> list[int]:
    """Node ids of a tracked list (children named 0, 1, …), in list order."""
    ch = _children(g.nodes[node_id])
    return [ch[k] for k in sorted((k for k in ch if k.isdigit()), key=int)]


KERAS_METADATA = "keras_metadata.pb"  # tf.keras' SavedModel: the Keras configs of the saved objects
MAX_KERAS_METADATA_BYTES = 1 << 28


def saved_model_optimizer_config(prefix: Path) -> tuple[str, dict[str, Any], str] | None:
    """(class name, config, where) of the optimizer a tf.keras SavedModel was compiled with — ``model.save(dir)``
    and ``ModelCheckpoint(dir)``, TF2's default format before Keras 3 — when ``prefix`` is its
    ``<dir>/variables/variables`` bundle: ``keras_metadata.pb`` (a ``SavedMetadata``: repeated ``SavedObject``
    nodes, field 1, whose ``metadata``, field 5, is JSON) holds the root's ``training_config``. None when there is
    no such file or it says nothing of an optimizer (damage included: the TF2 defaults then apply, as before)."""
    import json

    from adamdiag.io.checkpoints import non_regular
    from adamdiag.io.protowire import fields

    prefix = Path(prefix)
    meta = prefix.parent.parent / KERAS_METADATA
    if prefix.name != "variables" or prefix.parent.name != "variables" or non_regular(meta) is not None:
        return None
    try:
        if not meta.is_file() or meta.stat().st_size > MAX_KERAS_METADATA_BYTES:
            return None
        data = meta.read_bytes()
        for num, wt, node in fields(data):
            if num != 1 or wt != 2:
                continue
            inner = {n: v for n, w, v in fields(node) if w == 2 and n in (3, 5)}
            if inner.get(3, b"") != b"root" or 5 not in inner:
                continue
            opt = (json.loads(inner[5]).get("training_config") or {}).get("optimizer_config") or {}
            cfg = opt.get("config")
            if isinstance(cfg, dict):
                from adamdiag.io.checkpoints.keras import unwrap_loss_scale

                cls, cfg, _ = unwrap_loss_scale(str(opt.get("class_name") or ""), cfg)  # mixed precision's wrapper
                return cls, cfg, str(meta)
            return None
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return None


def open_tf2(prefix: Path, bundle: Bundle):
    from adamdiag.io.checkpoints import OptimizerCheckpoint, _Entry

    g = _object_graph(bundle)
    warnings: list[str] = []
    # Paths of every node (breadth first from the root: the first path is the checkpoint's own)
    paths: dict[int, str] = {0: ""}
    queue = [0]
    while queue:
        nid = queue.pop(0)
        for c in g.nodes[nid].children:
            if c.node_id not in paths:
                paths[c.node_id] = f"{paths[nid]}/{c.local_name}".lstrip("/")
                queue.append(c.node_id)

    def name_of(nid: int) -> str:
        return _var_name(g.nodes[nid]) or paths.get(nid, f"node {nid}")

    def shape_of(nid: int) -> tuple[int, ...] | None:
        k = _var_key(g.nodes[nid])
        return tuple(bundle.entries[k].shape) if k in bundle.entries else None

    slots: list[tuple[int, int, int, int | None]] = []  # (var, m, v, vhat) node ids
    hyper: dict[str, Any] = {}
    step = None
    layout = "tf2"
    optimizer = "Adam"
    saved_wd: float | None = None  # weight decay from a SavedModel's optimizer config
    # a tf.keras SavedModel (model.save(dir), ModelCheckpoint(dir)): its keras_metadata.pb holds the optimizer's config
    saved = saved_model_optimizer_config(prefix)
    opt_nodes = [i for i, n in enumerate(g.nodes) if {"_momentums", "_velocities"} <= _children(n).keys()]
    if opt_nodes:  # Keras 3
        if len(opt_nodes) > 1:
            warnings.append(f"{len(opt_nodes)} Keras optimizers in the checkpoint: using {paths.get(opt_nodes[0])}")
        ch = _children(g.nodes[opt_nodes[0]])
        tv, ms, vs = (
            _listed(g, ch[k]) if k in ch else [] for k in ("_trainable_variables", "_momentums", "_velocities")
        )
        vh = _listed(g, ch["_velocity_hats"]) if "_velocity_hats" in ch else []
        if not tv:  # tf.keras (Keras 2) lists no trainables: every variable outside the optimizer
            own = {nid for k in ch for nid in ([ch[k]] + _listed(g, ch[k]))} | set(_children(g.nodes[0]).values())
            tv = [i for i, n in enumerate(g.nodes) if i not in own and _var_key(n) is not None]
        slots = _match_keras_slots(tv, ms, vs, vh, name_of, shape_of, warnings, prefix)
        if "_iterations" in ch:
            step = _as_step(_scalar_node(bundle, g, ch["_iterations"]))
        lr = _scalar_node(bundle, g, ch["_learning_rate"]) if "_learning_rate" in ch else None
        hyper = {"lr": lr, **KERAS_DEFAULTS}
        sources = {
            "lr": "file" if lr is not None else "unknown",
            "beta1": "default",
            "beta2": "default",
            "eps": "default",
        }
        if lr is None:
            warnings.append("no learning-rate variable (a schedule): lr unknown")
        if saved is None:
            warnings.append(
                "β1, β2 and eps are not stored in a TF2 checkpoint: Keras defaults assumed "
                "(β1=0.9, β2=0.999, eps=1e-7); statistics that use them are only as right as that assumption "
                "(--assume-beta2/--assume-eps replace it)"
            )
        amsgrad = bool(vh)
    else:  # legacy tf.keras (optimizer_v2) or a TF1 optimizer tracked by tf.train.Checkpoint
        layout = "tf2-slots"
        by_var: dict[int, dict[str, int]] = {}
        for n in g.nodes:
            for s in n.slot_variables:
                by_var.setdefault(s.original_variable_node_id, {})[s.slot_name] = s.slot_variable_node_id
        for var, d in sorted(by_var.items()):
            if "m" in d and "v" in d:
                slots.append((var, d["m"], d["v"], d.get("vhat")))
        if not slots:
            raise InputError(
                f"{prefix}: a TF2 checkpoint without Adam slots (no Keras optimizer with _momentums/_velocities, "
                "no m/v slot variables in its object graph)"
            )
        root = {k: v for k, v in ((k, _children(g.nodes[0]).get(k)) for k in ("optimizer",)) if v is not None}
        opt = _children(g.nodes[root["optimizer"]]) if root else {}

        def hp(*names: str) -> float | None:
            for n in names:
                if n in opt:
                    return _scalar_node(bundle, g, opt[n])
            return None

        step = _as_step(hp("iter", "iterations"))
        hyper = {"lr": hp("learning_rate", "lr"), "beta1": hp("beta_1"), "beta2": hp("beta_2"), "eps": hp("epsilon")}
        sources = {k: ("file" if v is not None else "unknown") for k, v in hyper.items()}
        if "iter" in opt and hyper["eps"] is None and saved is None:  # optimizer_v2: epsilon is a Python float
            hyper["eps"], sources["eps"] = KERAS_DEFAULTS["eps"], "default"
            warnings.append("eps is not stored by tf.keras' optimizers: its default 1e-7 assumed")
        amsgrad = any(s[3] is not None for s in slots)
    if saved is not None:
        from adamdiag.io.checkpoints.keras import config_hyper

        cls, ocfg, where = saved
        stated, saved_wd = config_hyper(ocfg)
        for k, val in stated.items():
            if sources.get(k) != "file":  # a value stored as a variable stays the one used
                hyper[k], sources[k] = val, "file"
        optimizer = cls if cls in ("Adam", "AdamW") else optimizer
        warnings.append(f"hyperparameters not stored as variables read from the optimizer's config in {where}")
    if step is None:
        step = step_suffix(prefix)
        warnings.append("no iteration counter in the checkpoint: step from its name (-N suffix)")
    h = {
        "lr": _nan(hyper.get("lr")),
        "beta1": _nan(hyper.get("beta1")),
        "beta2": _nan(hyper.get("beta2")),
        "eps": _nan(hyper.get("eps")),
        "weight_decay": saved_wd or 0.0,
        "amsgrad": amsgrad,
        # a TF2 object graph keeps no weight decay of Keras' Adam: 0 (its default), unless a SavedModel's config says
        "sources": {**sources, "weight_decay": "default" if saved_wd is None else "file"},
        "bias": None,
    }
    keys: dict[int, tuple[str | None, str, str, str | None]] = {}
    entries = []
    for i, (var, m, v, vhat) in enumerate(slots):
        mk, vk = _var_key(g.nodes[m]), _var_key(g.nodes[v])
        hk = _var_key(g.nodes[vhat]) if vhat is not None else None
        missing = [n for n, k in ((m, mk), (v, vk), (vhat, hk)) if n is not None and k not in bundle.entries]
        if mk is None or vk is None or missing:
            raise InputError(f"{prefix}: the slots of {name_of(var)} are not stored in the checkpoint")
        keys[i] = (_var_key(g.nodes[var]), mk, vk, hk)
        entries.append(_Entry(group=0, index=i, pos=i, name=name_of(var), shape=shape_of(m) or (), hyper=h))
    ck = OptimizerCheckpoint(
        path=str(prefix),
        step=step,
        layout=layout,
        optimizer=optimizer,
        convention="tf",
        name_mapping="object-graph",
        warnings=warnings,
        entries=entries,
    )

    def state(e: Any) -> dict[str, Any]:
        _, mk, vk, hk = keys[int(e.index)]
        return _state(bundle, mk, vk, step=step, vhat=hk)

    param_key = {e.name: keys[i][0] for i, e in enumerate(entries)}

    def param(name: str) -> Any:
        k = param_key.get(name)
        return _torch(bundle.read(k)) if k is not None and k in bundle.entries else None

    ck._fetch_state = state
    ck._fetch_param = param
    return ck


def _as_step(x: float | None) -> int | None:
    return None if x is None else int(x)


def _scalar_node(bundle: Bundle, g: Any, nid: int) -> float | None:
    k = _var_key(g.nodes[nid])
    if k is None or k not in bundle.entries:
        return None
    x = bundle.scalar(k)
    return f32(x) if isinstance(x, float) and bundle.entries[k].dtype == 1 else x


def _match_keras_slots(tv, ms, vs, vh, name_of, shape_of, warnings, prefix) -> list[tuple[int, int, int, int | None]]:
    """Keras slots → variables by name, shapes checked: Keras 3 names a slot
    ``<opt>/<var path with / → _>_momentum`` (``_velocity``, ``_velocity_hat``), tf.keras (Keras 2)
    ``<opt>/m/<var name>`` (``v``, ``vhat``; ``m/<var name>`` under a LossScaleOptimizer). By list position only
    where names do not say and the trainables list has the slots' length (with a warning); otherwise refused."""
    exact: dict[str, list[int]] = {}
    flat: dict[str, list[int]] = {}
    for t in tv:
        exact.setdefault(name_of(t), []).append(t)
        flat.setdefault(name_of(t).replace("/", "_"), []).append(t)

    def find(slot: int, role: str) -> int | None:
        # tf.keras: [<opt>/]m/<var name> (no <opt> under a LossScaleOptimizer); Keras 3: [<wrapper>/]<opt>/<path_>_momentum
        parts = name_of(slot).split("/")
        short = {"momentum": "m", "velocity": "v", "velocity_hat": "vhat"}[role]
        hits: set[int] = set()
        for k in (0, 1):
            if len(parts) >= k + 2 and parts[k] == short:
                hits.update(exact.get("/".join(parts[k + 1 :]), []))
        last = parts[-1]
        if len(parts) >= 2 and last.endswith("_" + role):
            hits.update(flat.get(last[: -len(role) - 1], []))
        return hits.pop() if len(hits) == 1 else None

    out = []
    by_position = 0
    if len(ms) != len(vs) or (vh and len(vh) != len(ms)):
        raise InputError(
            f"{prefix}: the optimizer lists {len(ms)} momentums but {len(vs)} velocities: cannot pair them"
        )
    for i, (m, v) in enumerate(zip(ms, vs)):
        hat = vh[i] if vh else None
        var = find(m, "momentum")
        if var is None or find(v, "velocity") != var or (hat is not None and find(hat, "velocity_hat") != var):
            if len(tv) != len(ms):
                raise InputError(
                    f"{prefix}: slot {name_of(m)} matches no variable by name, and the lists differ in "
                    f"length ({len(tv)} variables, {len(ms)} slots): refusing to guess"
                )
            var = tv[i]
            by_position += 1
        shapes = {shape_of(x) for x in (var, m, v, hat) if x is not None}
        if len(shapes) != 1:
            raise InputError(f"{prefix}: slots of {name_of(var)} do not have its shape ({sorted(map(str, shapes))})")
        out.append((var, m, v, hat))
    if by_position:
        warnings.append(
            f"{by_position} slot(s) matched to variables by list position (names do not say), shapes checked"
        )
    return out


# --- entry point -------------------------------------------------------------------------------------
def open_bundle(prefix: Path):
    """Open a TF1 Saver or TF2 object-based checkpoint by its prefix."""
    bundle = Bundle(prefix)
    if OBJECT_GRAPH in bundle.entries:
        return open_tf2(prefix, bundle)
    return open_tf1(prefix, bundle)


def open_foreign(path: Path):
    """A TF/Keras checkpoint named by ``path`` (prefix, bundle file, ``checkpoint`` file, Keras
    file) opened, or None when the path is none of these."""
    path = Path(path)
    notes: list[str] = []
    pre = bundle_prefix(path)
    if pre is None and is_checkpoint_file(path):
        pre, _, notes = checkpoint_state(path)
        if pre is None:
            raise InputError(f"{path}: names no checkpoint that exists here (model_checkpoint_path)")
    if pre is not None:
        ck = open_bundle(pre)
        ck.warnings[:0] = notes
        return ck
    if is_keras_file(path):
        from adamdiag.io.checkpoints.keras import open_keras

        return open_keras(path)
    if not path.exists():
        _missing_index(path)  # a bundle prefix whose .index is missing or no regular file: say that
    return None
