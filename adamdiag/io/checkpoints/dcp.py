"""``torch.distributed.checkpoint`` directories (``.metadata`` + ``*.distcp``), read without a process
group, one tensor at a time, and without arbitrary unpickling.

torch's own reader unpickles ``.metadata`` with plain ``pickle`` and the small non-tensor items with
``torch.load(weights_only=False)`` — both can run code from the files. Here ``.metadata`` goes
through an allow-list unpickler (only DCP's metadata dataclasses, torch.Size, dtypes, paths),
every stored item through ``torch.load(weights_only=True)``; only ``trust=True`` lifts that.

Shards written by several ranks are put back together from the chunk table in the metadata
(each chunk: offsets + sizes inside the full tensor → a byte range in one ``.distcp`` file).
The optimizer state may be nested (``{'optim': {'state': {fqn: {...}}, 'param_groups': [...]}}``,
what ``get_state_dict`` returns) or flattened (``flatten_optimizer_state_dict=True``:
``state.<fqn>.exp_avg``, ``param_groups.<fqn>.lr``); either way the state is keyed by FQN, so
names are exact (``name_mapping = "fqn"``).
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

from adamdiag.errors import InputError, NotAdamError, UntrustedCheckpointError
from adamdiag.io.checkpoints import (
    KNOWN_STATE_KEYS,
    STEP_KEYS,
    TF_EPS_OPTIMIZERS,
    OptimizerCheckpoint,
    _as_int,
    _Entry,
    _first_line,
    _hyper,
    _walk,
    _warn_trust,
    lookalikes,
    moments_without_a_step,
    open_regular,
    resolve_steps,
    torchao_lowbit,
)
from adamdiag.io.checkpoints.buffers import BufferPool
from adamdiag.io.checkpoints.torchload import torch_load
from adamdiag.io.filekind import ZIP_DAMAGE

# what a damaged shard's zip directory or pickle raises while its first member's offset is looked up
_SHARD_HEAD_DAMAGE: tuple[type[BaseException], ...] = (*ZIP_DAMAGE, pickle.UnpicklingError, TypeError, AttributeError)

ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_SAFE_MODULES = {
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint._extension",
    # Megatron-core's torch_dist writer keeps its cached SavePlan (WriteItem, TensorWriteData: data classes)
    "torch.distributed.checkpoint.planner",
}
# Megatron-core's dist checkpoints (torch_dist backend) key each optimizer state tensor by the model
# parameter's sharded key: "optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight" (layers stacked on a
# leading axis); the param groups and the common step sit in the torch.save file common.pt beside the shards.
MCORE_STATE_PREFIX = "optimizer.state."
# megatron-core 0.14-0.15 pickle their own subclasses of DCP's data classes into .metadata (each adds one field,
# mcore_data, about flattened tensors): read as the torch class they extend (the extra field is kept as data,
# nothing of megatron is imported). megatron-core 0.16 writes the torch classes themselves.
_MCORE_METADATA_CLASSES = {
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"): (
        "torch.distributed.checkpoint.metadata",
        "Metadata",
    ),
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreSavePlan"): (
        "torch.distributed.checkpoint.planner",
        "SavePlan",
    ),
}
MCORE_COMMON = "common.pt"
# Megatron's master weights of a bf16/fp16 model, stored as one more per-parameter "state" key: "fp32_param"
# (Float16 optimizer, distributed optimizer's fully_sharded_model_space), "param" (its fully_reshardable format).
MCORE_MASTER_KEYS = ("fp32_param", "param")
MCORE_STATE_KEYS = (*ADAM_KEYS, *MCORE_MASTER_KEYS)
_SAFE_PATHS = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"}


def _safe_enum_class(module: str, name: str) -> type | None:
    """The class ``module.name`` if it is an enum defined in one of DCP's metadata modules."""
    import enum

    if module not in _SAFE_MODULES:
        return None
    obj = getattr(__import__(module, fromlist=[name]), name, None)
    return obj if isinstance(obj, type) and issubclass(obj, enum.Enum) else None


def _enum_member(cls: Any, name: Any) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling metadata.

    Python 3.11.0-3.11.4 (Debian 12's system Python is 3.11.2) pickle an enum member as
    ``getattr(EnumClass, "NAME")`` — a call to a builtin that could reach any attribute of any
    object the pickle names. Only that one use is allowed here: a member of one of DCP's metadata
    enums (e.g. ``_MEM_FORMAT_ENCODING``), looked up in its ``__members__``, never a plain getattr.
    """
    import enum

    if (
        isinstance(cls, type)
        and issubclass(cls, enum.Enum)
        and _safe_enum_class(cls.__module__, cls.__qualname__) is cls
        and isinstance(name, str)
        and name in cls.__members__
    ):
        return cls.__members__[name]
    what = getattr(cls, "__qualname__", type(cls).__name__)
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr (on {what}.{name})")


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: data classes of the DCP modules and a few torch value types only."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        module, name = _MCORE_METADATA_CLASSES.get((module, name), (module, name))
        if module in _SAFE_MODULES:
            mod = __import__(module, fromlist=[name])
            obj = getattr(mod, name, None)
            if isinstance(obj, type) and hasattr(obj, "__dataclass_fields__"):
                return obj
            if _safe_enum_class(module, name) is not None:
                return obj
        elif module in ("builtins", "__builtin__") and name == "getattr":
            # Enum members as older Pythons pickle them (protocol 2 spells the module __builtin__).
            return _enum_member
        elif module == "torch":
            obj = getattr(torch, name, None)
            if name == "Size" or isinstance(obj, torch.dtype | torch.memory_format | torch.layout):
                return obj
        elif module == "torch.serialization" and name == "_get_layout":
            return getattr(torch.serialization, name)
        elif module == "pathlib" and name in _SAFE_PATHS:
            import pathlib

            return getattr(pathlib, name)
        elif module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


def _read_metadata(d: Path, trust: bool) -> Any:
    """DCP's Metadata object of a checkpoint folder; InputError when .metadata does not unpickle to one."""
    meta = _unpickle_metadata(d, trust)
    if not isinstance(getattr(meta, "state_dict_metadata", None), dict):
        # a damaged pickle can still load, as another object (a shifted byte made it a str)
        raise InputError(
            f"{d / '.metadata'}: not DCP metadata (it unpickles to a {type(meta).__name__}): the file is damaged"
        )
    return meta


def _unpickle_metadata(d: Path, trust: bool) -> Any:
    path = d / ".metadata"
    try:
        with open_regular(path) as f:
            return _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        if not trust:
            raise UntrustedCheckpointError(
                f"{path}: reading it needs arbitrary unpickling ({_first_line(str(e))}); rerun with "
                "--trust-checkpoint only if you trust the checkpoint: that runs code from it"
            ) from None
        _warn_trust(path)
        with open_regular(path) as f:
            return pickle.load(f)  # noqa: S301 - explicitly trusted by the user
    except (
        OSError,
        EOFError,
        AttributeError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        MemoryError,
        OverflowError,
        RecursionError,
    ) as e:
        # (MemoryError, OverflowError: a damaged length field asks the unpickler for an absurd allocation)
        raise InputError(
            f"{path}: unreadable DCP metadata ({_first_line(str(e)) or type(e).__name__}: the file is damaged)"
        ) from None


class _FileView(io.RawIOBase):
    """A read-only window [offset, offset+length) of a file, for torch.load of one stored item."""

    def __init__(self, f: Any, offset: int, length: int) -> None:
        self.f, self.base, self.length, self.pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.length + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.length - self.pos))
        self.f.seek(self.base + self.pos)
        got = self.f.readinto(memoryview(b)[:n])
        self.pos += got
        return got


_STORAGE_DTYPES = {  # torch.<Name>Storage in a tensor pickle -> dtype name
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
}


class _TensorRecord:
    """What ``torch._utils._rebuild_tensor_v2`` would get: storage, offset, size, stride (never built)."""

    def __init__(self, storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class _TensorPickle(pickle.Unpickler):
    """Reads the pickle of one ``torch.save(tensor)`` as a record: only the names such a pickle holds."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRecord
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"not a plain tensor pickle ({module}.{name})")

    def persistent_load(self, pid: Any) -> Any:
        return tuple(pid)  # ('storage', dtype name, key, location, numel)


def _plain_tensor_data(f: Any, offset: int, length: int, dtype: Any, sizes: tuple[int, ...]) -> int | None:
    """File offset of the data of a ``torch.save(tensor)`` item when its storage is exactly a
    contiguous ``sizes`` tensor of ``dtype`` (stored, offset 0, C strides), else None (then the item
    goes through ``torch.load``). Lets a chunk be read straight into its place in the full tensor."""
    import math
    import zipfile

    try:
        view = io.BufferedReader(_FileView(f, offset, length))
        with zipfile.ZipFile(view) as zf:
            infos = zf.infolist()
            pkl = [i for i in infos if i.filename.endswith("/data.pkl")]
            data = [i for i in infos if "/data/" in i.filename and not i.filename.endswith("/data.pkl")]
            if len(pkl) != 1 or len(data) != 1 or data[0].compress_type != zipfile.ZIP_STORED:
                return None
            rec = _TensorPickle(io.BytesIO(zf.read(pkl[0]))).load()
        if not isinstance(rec, _TensorRecord) or not isinstance(rec.storage, tuple) or len(rec.storage) != 5:
            return None
        _, dname, key, _, numel = rec.storage
        contiguous = tuple(math.prod(sizes[i + 1 :]) for i in range(len(sizes)))
        itemsize = dtype.itemsize
        if (
            dname != str(dtype).removeprefix("torch.")
            or data[0].filename.rsplit("/", 1)[1] != str(key)
            or rec.offset != 0
            or rec.size != tuple(sizes)
            or (rec.stride != contiguous and math.prod(sizes) > 1)
            or int(numel) != math.prod(sizes)
            or data[0].file_size != math.prod(sizes) * itemsize
        ):
            return None
        f.seek(offset + data[0].header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
        return offset + data[0].header_offset + 30 + name_len + extra_len
    except _SHARD_HEAD_DAMAGE:
        return None


def _check_shard_path(d: Path, index: Any, info: Any) -> None:
    """InputError (one line, naming it) when the metadata's ``relative_path`` for an item leads out of
    the checkpoint folder ``d`` — absolute, or with a ``..`` part — or is no path at all: a checkpoint
    must never make adamdiag read a file outside it (``/etc/…``, another checkpoint, a device).
    Checked for every item when the metadata is read, before any shard is opened. (A shard file in
    the folder that is a link is the user's own file system, not the checkpoint's say.)"""
    import os
    from pathlib import PurePosixPath, PureWindowsPath

    rel = getattr(info, "relative_path", None)
    if isinstance(rel, os.PathLike):  # the allow-listed unpickler admits pathlib paths
        rel = os.fspath(rel)
    fqn = getattr(index, "fqn", index)
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise InputError(
            f"{d / '.metadata'}: item {fqn} names no shard file ({rel!r}): not a DCP checkpoint's metadata"
        )
    # Both spellings: DCP writes '/'-separated names, and a '..' or drive hidden behind '\\' must not pass either.
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts or ".." in win.parts:
        raise InputError(
            f"{d / '.metadata'}: item {fqn} is stored in {rel!r}, outside the checkpoint folder: refused (a "
            "checkpoint's files are read only inside it)"
        )


class DcpReader:
    """Random access to the items of one DCP checkpoint by flat key."""

    def __init__(self, d: Path, trust: bool) -> None:
        self.d = d
        self.trust = trust
        self.md = _read_metadata(d, trust)
        self.sdm: dict[str, Any] = dict(self.md.state_dict_metadata)
        self.planner: dict[str, tuple] = dict(getattr(self.md, "planner_data", None) or {})
        self.storage: dict[Any, Any] = dict(self.md.storage_data or {})
        for index, info in self.storage.items():
            _check_shard_path(d, index, info)
        self.pool = BufferPool()  # full tensors are put together in reused memory (buffers.py)

    def path_of(self, key: str) -> tuple:
        p = self.planner.get(key)
        return tuple(p) if isinstance(p, list | tuple) else (key,)

    def is_tensor(self, key: str) -> bool:
        return hasattr(self.sdm.get(key), "chunks")

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self.sdm[key].size)

    def _load(self, index: Any) -> Any:
        import torch

        info = self.storage.get(index)
        if info is None:
            raise InputError(f"{self.d}: item {index.fqn} is in the metadata but not in the storage table")
        if getattr(info, "transform_descriptors", None):
            raise InputError(
                f"{self.d}: item {index.fqn} is stored with transforms "
                f"{list(info.transform_descriptors)} that adamdiag does not read"
            )
        path = self.d / info.relative_path
        try:
            with open_regular(path) as f:
                view = io.BufferedReader(_FileView(f, info.offset, info.length))
                try:
                    return torch.load(view, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as e:
                    if "torchao." in str(e):  # torchao's quantized optimizer state: read as its dequantized values
                        view.seek(0)
                        try:
                            return _torchao_item(view, path)
                        except pickle.UnpicklingError as e2:  # another class beside it, or a damaged pickle
                            raise InputError(
                                f"{path}: item {index.fqn} holds torchao state adamdiag cannot read "
                                f"({_first_line(str(e2))})"
                            ) from None
                    if not self.trust:
                        raise UntrustedCheckpointError(
                            f"{path}: item {index.fqn} needs arbitrary unpickling ({_first_line(str(e))}); rerun "
                            "with --trust-checkpoint only if you trust the checkpoint: that runs code from it"
                        ) from None
                    _warn_trust(path)
                    view.seek(0)
                    return torch.load(view, map_location="cpu", weights_only=False)
        except OSError as e:
            raise InputError(f"{path}: cannot be read ({e.strerror})") from None
        except (EOFError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
            # a cut-short or overwritten item: torch.load fails with any of these on damaged bytes
            raise InputError(
                f"{path}: item {index.fqn} is damaged ({type(e).__name__}: {_first_line(str(e)) or 'no more bytes'})"
            ) from None

    def head(self, key: str, n: int = 1 << 16) -> bytes:
        """The first ``n`` bytes of a stored item (its first chunk): a torch.save pickle's class names, unread."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        md = self.sdm.get(key)
        chunks = list(getattr(md, "chunks", None) or [])
        index = MetadataIndex(key, chunks[0].offsets, 0) if chunks else MetadataIndex(key)
        info = self.storage.get(index)
        if info is None:
            return b""
        try:
            with open_regular(self.d / info.relative_path) as f:
                f.seek(info.offset)
                return f.read(min(n, info.length))
        except OSError:
            return b""

    def read(self, key: str) -> Any:
        """A tensor (shards put together) or a stored Python object."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        md = self.sdm[key]
        if not hasattr(md, "chunks"):
            return self._load(MetadataIndex(key))
        chunks = list(md.chunks)
        size = tuple(int(s) for s in md.size)
        if len(chunks) == 1 and tuple(chunks[0].sizes) == size:
            return self._load(MetadataIndex(key, chunks[0].offsets, 0)).reshape(size)
        out = self.pool.empty(size, md.properties.dtype)
        flat = out.view(-1)
        for i, ch in enumerate(chunks):
            index = MetadataIndex(key, ch.offsets, i)
            offs, sizes = tuple(int(o) for o in ch.offsets), tuple(int(s) for s in ch.sizes)
            if (
                size
                and offs[1:] == (0,) * (len(size) - 1)
                and sizes[1:] == size[1:]
                and self._read_rows(index, flat, offs, sizes)
            ):
                continue  # a block of whole rows (FSDP's Shard(0)): read straight into its place
            part = self._load(index)
            sl = tuple(slice(o, o + s) for o, s in zip(offs, sizes))
            out[sl] = part.reshape(sizes)
        return out

    def _read_rows(self, index: Any, flat: Any, offs: tuple[int, ...], sizes: tuple[int, ...]) -> bool:
        """Read a chunk of whole rows into ``flat`` (the full tensor's contiguous view) without
        ``torch.load``'s extra copy. False when the item is no plain tensor pickle (then the caller loads it)."""
        import ctypes
        import math

        info = self.storage.get(index)
        if info is None or getattr(info, "transform_descriptors", None):
            return False
        row = math.prod(sizes[1:])
        start, n = offs[0] * row, math.prod(sizes)
        if n == 0:
            return True
        dest = flat[start : start + n]
        path = self.d / info.relative_path
        try:
            with open_regular(path, buffering=0) as f:
                at = _plain_tensor_data(f, info.offset, info.length, dest.dtype, sizes)
                if at is None:
                    return False
                nbytes = n * dest.element_size()
                buf = (ctypes.c_char * nbytes).from_address(dest.data_ptr())
                f.seek(at)
                got = f.readinto(buf)
                while got < nbytes:  # a raw read may return less than asked (large reads, signals)
                    more = f.readinto(memoryview(buf)[got:])
                    if not more:
                        raise InputError(f"{path}: item {index.fqn} is cut short ({got} of {nbytes} bytes)")
                    got += more
                return True
        except OSError as e:
            raise InputError(f"{path}: cannot be read ({e.strerror})") from None


def _parse(reader: DcpReader) -> tuple[dict, dict]:
    """Group flat keys into optimizers by prefix: {prefix: {"state": {fqn: {k: flatkey}},
    "groups": {gi: {k: flatkey}}, "flat_groups": {fqn: {k: flatkey}}}} and other keys {path: flatkey}."""
    opts: dict[tuple, dict] = {}
    other: dict[tuple, str] = {}
    for key in reader.sdm:
        path = reader.path_of(key)
        hit = False
        for i in range(len(path) - 2):
            if path[i] == "state" and len(path) == i + 3 and isinstance(path[i + 1], str):
                o = opts.setdefault(path[:i], {"state": {}, "groups": {}, "flat_groups": {}})
                o["state"].setdefault(path[i + 1], {})[str(path[i + 2])] = key
                hit = True
            elif path[i] == "param_groups" and len(path) == i + 3 and isinstance(path[i + 1], int):
                o = opts.setdefault(path[:i], {"state": {}, "groups": {}, "flat_groups": {}})
                o["groups"].setdefault(path[i + 1], {})[str(path[i + 2])] = key
                hit = True
        last = path[-1] if path else ""
        if not hit and len(path) == 1 and isinstance(last, str) and last.startswith(MCORE_STATE_PREFIX):
            sub, _, fqn = last[len(MCORE_STATE_PREFIX) :].partition(".")
            # the state key comes first (Megatron's order): a key that names a parameter there is not Megatron's
            if fqn and (sub in MCORE_STATE_KEYS or sub in KNOWN_STATE_KEYS):
                o = opts.setdefault(("optimizer",), {"state": {}, "groups": {}, "flat_groups": {}, "mcore": True})
                o["state"].setdefault(fqn, {})[sub] = key
                hit = True
        if not hit and isinstance(last, str) and last.startswith(("state.", "param_groups.")) and last.count(".") >= 2:
            kind, rest = last.split(".", 1)
            fqn, sub = rest.rsplit(".", 1)
            o = opts.setdefault(path[:-1], {"state": {}, "groups": {}, "flat_groups": {}})
            o["state" if kind == "state" else "flat_groups"].setdefault(fqn, {})[sub] = key
            hit = True
        if not hit:
            other[path] = key
    return opts, other


def open_dcp(d: Path, *, trust: bool = False) -> OptimizerCheckpoint:
    """Open a DCP checkpoint directory. Raises InputError / UntrustedCheckpointError."""
    reader = DcpReader(d, trust)
    opts, other = _parse(reader)
    warnings: list[str] = []
    adam = {p: o for p, o in opts.items() if any("exp_avg" in st and "exp_avg_sq" in st for st in o["state"].values())}
    if not adam:
        keys = sorted({k for o in opts.values() for st in o["state"].values() for k in st})
        known = sorted({v for k, v in KNOWN_STATE_KEYS.items() if k in keys})
        if keys:
            what = ", ".join(known) if known else "an unknown optimizer"
            raise InputError(
                f"{d}: not an Adam optimizer state: found {what} state (per-parameter keys: {', '.join(keys)})"
            )
        raise InputError(
            f"{d}: DCP checkpoint without optimizer state ({len(reader.sdm)} items, e.g. "
            f"{', '.join(list(reader.sdm)[:4])})"
        )
    # Every Adam-family optimizer (a GAN's two, {"optim_g": ..., "optim_d": ...}); others listed.
    prefixes = list(opts)
    adam_list = [(prefixes.index(p), p, o) for p, o in adam.items()]
    others = [
        {"index": prefixes.index(p), "key": ".".join(map(str, p)), "type": _describe_dcp_non_adam(o)}
        for p, o in opts.items()
        if p not in adam
    ]
    if len(opts) > 1:
        warnings.append(
            f"{len(opts)} optimizer states in the checkpoint; Adam-family ones analysed: "
            + ", ".join(f"[{i}] {'.'.join(map(str, p)) or '<top level>'}" for i, p, _ in adam_list)
        )
        warnings += [
            f"optimizer [{x['index']}] at {x['key'] or '<top level>'} is not Adam: {x['type']}" for x in others
        ]
    entries: list[_Entry] = []
    kinds: list[str] = []
    common_step = None
    # Megatron-core: the hyperparameters and the step live in common.pt beside the shards (read once)
    common = _mcore_common_state(d, trust, warnings) if any("mcore" in o for _, _, o in adam_list) else None
    for i, prefix, o in adam_list:
        es = _entries(reader, o)
        if "mcore" in o:
            common_step = _mcore_common(d, common, es, warnings)
        kind = _kind(es)
        like = lookalikes.identify(_probe(reader, o))
        if like is not None and like.refuse:
            raise NotAdamError(f"{d}: not an Adam optimizer state: found {like.name} state ({like.refuse})")
        if like is not None:
            kind = like.name
            warnings.append(like.note)
            if like.uncorrected:
                for e in es:
                    e.hyper["bias"] = (1.0, 1.0)
        first = next((st for st in o["state"].values() if "exp_avg_sq" in st), None)
        low_bit = torchao_lowbit.kind_in_pickle(reader.head(first["exp_avg_sq"])) if first else None
        if low_bit is not None:  # read dequantized, item by item (DcpReader._load)
            kind = f"Adam/AdamW (torchao {low_bit})"
            warnings.append(torchao_lowbit.describe(low_bit, None))
        kinds.append(kind)
        info = {"index": i, "key": ".".join(map(str, prefix)), "type": kind}
        for e in es:
            e.optimizer = info
        entries += es
    by_index = {i: o for i, _, o in adam_list}
    opt_kind = "+".join(dict.fromkeys(kinds))

    def fetch_state(e: _Entry) -> dict[str, Any]:
        st = by_index[(e.optimizer or {}).get("index", adam_list[0][0])]["state"][e.index]
        return {k: reader.read(st[k]) for k in ADAM_KEYS if k in st}

    model_keys = {
        path[-1]: key for path, key in other.items() if path and isinstance(path[-1], str) and reader.is_tensor(key)
    }
    # Megatron's fp32 master copy of a bf16/fp16 parameter is the weight Adam updates
    model_keys.update(
        {
            fqn: st[k]
            for o in by_index.values()
            if "mcore" in o
            for fqn, st in o["state"].items()
            for k in MCORE_MASTER_KEYS
            if k in st
        }
    )

    def fetch_param(name: str) -> Any:
        key = model_keys.get(name)
        return reader.read(key) if key is not None else None

    # the same two steps as every other format (resolve_steps): a stated one, by STEP_KEYS preference
    top = {path[-1]: key for path, key in other.items() if len(path) <= 2 and isinstance(path[-1], str)}
    stated = next(((v, k) for k in STEP_KEYS if k in top and (v := _as_int(reader.read(top[k]))) is not None), None)
    state_steps = {
        (i, fqn): _as_int(reader.read(st["step"]))
        for i, o in by_index.items()
        for fqn, st in o["state"].items()
        if "step" in st
    }
    # a FusedAdam's or timm LAMB's step lives in its param group (as the torch path reads it: _state_step)
    for e in entries:
        key = ((e.optimizer or {}).get("index", adam_list[0][0]), e.index)
        if key not in state_steps and e.shape is not None and e.hyper.get("group_step") is not None:
            state_steps[key] = e.hyper["group_step"]
    if common_step is not None:
        state_steps.update({(i, fqn): common_step for i, o in by_index.items() if "mcore" in o for fqn in o["state"]})
    if stated is None and common_step is not None:
        stated = _mcore_iteration(common)
    step, optimizer_step = resolve_steps(stated, state_steps.values(), None, warnings)
    n_files = len({getattr(v, "relative_path", None) for v in reader.storage.values()})
    if n_files > 1:
        warnings.append(f"sharded checkpoint: {n_files} data files put together")
    ck = OptimizerCheckpoint(
        path=str(d),
        step=step,
        optimizer_step=optimizer_step,
        layout="dcp",
        optimizer=opt_kind,
        convention="tf" if kinds and all(k in TF_EPS_OPTIMIZERS for k in kinds) else "torch",
        name_mapping="fqn",
        warnings=warnings,
        entries=entries,
        other_optimizers=others,
    )
    ck._fetch_state = fetch_state
    ck._fetch_param = fetch_param
    ck._recycle = reader.pool.give_back
    # DCP shards carry no checksum: a step damaged to 0 is caught where m/v show it was not 0
    at_zero = [
        e for e in entries if e.shape is not None and state_steps.get(((e.optimizer or {})["index"], e.index)) == 0
    ]
    damaged = moments_without_a_step(ck, at_zero, "DCP shards") if at_zero else None
    if damaged:
        warnings.append(damaged)
    return ck


def _mcore_common_state(d: Path, trust: bool, warnings: list[str]) -> dict | None:
    """Megatron-core's common.pt (every non-sharded item of the checkpoint: the optimizer's param groups and
    common step, the iteration, Megatron-LM's args), read as every torch file is (:func:`torch_load`: Megatron-LM's
    ``args`` Namespace becomes an inert stand-in). None when absent; unreadable: None and a warning (the moments
    in the shards are still read)."""
    path = d / MCORE_COMMON
    if not path.exists():
        return None
    try:
        obj, _ = torch_load(path, trust=trust)
    except InputError as e:
        warnings.append(f"{path}: {_first_line(str(e))}; lr, betas, eps and the step unknown")
        return None
    return obj if isinstance(obj, dict) else None


def _mcore_iteration(common: dict | None) -> tuple[int, str] | None:
    """The step common.pt states: Megatron-LM's ``iteration``, NeMo's (Lightning's) ``global_step``."""
    common = common or {}
    for key in ("iteration", "global_step"):
        it = _as_int(common.get(key))
        if it is not None:
            return it, key
    return None


def _mcore_common(d: Path, common: dict | None, entries: list[_Entry], warnings: list[str]) -> int | None:
    """Fill the hyperparameters of a Megatron-core optimizer's entries from common.pt; return its common step.

    The param groups there have lost their ``params`` (Megatron saves them as a non-persistent object), so which
    parameter sat in which group is not in the checkpoint: when the groups agree on lr, betas and eps (Megatron's
    usual pair: with and without weight decay) those apply to every parameter and the weight decay is unknown;
    when they differ, the first group's are used and a warning says so.
    """
    if common is None:
        if not (d / MCORE_COMMON).exists():
            warnings.append(f"{d}: Megatron-core checkpoint without {MCORE_COMMON}: lr, betas, eps unknown")
        return None
    # FP32Optimizer: {"optimizer": {state, param_groups}}; Float16 / distributed optimizers nest one more
    # "optimizer"; NeMo 2 (Lightning) keeps it in "optimizer_states": [...]
    inner = next((x for _, x in _walk(common) if isinstance(x, dict) and isinstance(x.get("param_groups"), list)), {})
    groups = [g for g in inner.get("param_groups", []) if isinstance(g, dict)]
    hypers = [_hyper(g) for g in groups]
    if not hypers:
        warnings.append(f"{d}: no optimizer param groups in {MCORE_COMMON}: lr, betas, eps unknown")
    state = inner.get("state")
    step = _as_int(state.get("common_step")) if isinstance(state, dict) else None
    if step is None:
        step = next((h["group_step"] for h in hypers if h["group_step"] is not None), None)
    if hypers:
        first = dict(hypers[0])
        same = all(all(str(h[k]) == str(first[k]) for k in ("lr", "beta1", "beta2", "eps")) for h in hypers)
        if len({str(h["weight_decay"]) for h in hypers}) > 1:
            first["weight_decay"] = math.nan
        if not same:
            warnings.append(
                f"{d}: {len(hypers)} param groups with different lr/betas/eps, and Megatron does not save which "
                "parameter is in which: the first group's are used for every parameter"
            )
        first["group_step"] = step  # one step for all parameters (Megatron saves no per-parameter step)
        for e in entries:
            e.hyper = first
            e.group = 0
    return step


def _entries(reader: DcpReader, o: dict) -> list[_Entry]:
    """One optimizer's slots: from its param groups (nested) or per parameter (flattened)."""
    entries: list[_Entry] = []
    if o["groups"]:
        for gi in sorted(o["groups"]):
            g = {k: reader.read(key) for k, key in o["groups"][gi].items()}
            h = _hyper(g)
            for pos, fqn in enumerate(g.get("params", [])):
                st = o["state"].get(fqn)
                shape = reader.shape(st["exp_avg"]) if st and "exp_avg" in st and "exp_avg_sq" in st else None
                entries.append(_Entry(group=gi, index=fqn, pos=pos, name=fqn, shape=shape, hyper=h))
    else:
        # Flattened: per-parameter hyperparameters; parameters with equal ones form a group.
        groups: dict[tuple, int] = {}
        for fqn, st in o["state"].items():
            g = {k: reader.read(key) for k, key in o["flat_groups"].get(fqn, {}).items()}
            h = _hyper(g)
            sig = tuple(sorted((k, str(v)) for k, v in h.items()))
            gi = groups.setdefault(sig, len(groups))
            pos = sum(1 for e in entries if e.group == gi)
            shape = reader.shape(st["exp_avg"]) if "exp_avg" in st and "exp_avg_sq" in st else None
            entries.append(_Entry(group=gi, index=fqn, pos=pos, name=fqn, shape=shape, hyper=h))
    return entries


def _torchao_item(view: Any, path: Path) -> Any:
    """One stored torchao state (OptimState8bit/4bit/Fp8: a shard of it under FSDP2) as float32 values, loaded
    through the inert stand-ins of :mod:`.torchao_lowbit` (weights_only; no torchao code)."""
    import torch

    from adamdiag.io.checkpoints import torchao_lowbit

    with torch.serialization.safe_globals(list(torchao_lowbit.stand_in_globals())):
        obj = torch.load(view, map_location="cpu", weights_only=True)
    low = torchao_lowbit.unwrap(obj, path)
    return low.dequantize() if isinstance(low, torchao_lowbit.LowBitTensor) else low


class _Shape:
    """A stored tensor's shape, without its data (what the look-alike check needs of a DCP state)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def numel(self) -> int:
        return math.prod(self.shape)


# the param-group values the look-alike check reads (the rest: their keys only)
_PROBED_GROUP_VALUES = ("phase", "caution", "correct_bias")


def _probe(reader: DcpReader, o: dict) -> dict:
    """An optimizer's state dict as the look-alike check sees it: state keys and shapes, group keys (a few values)."""
    state = {
        fqn: {k: _Shape(reader.shape(key)) if reader.is_tensor(key) else None for k, key in st.items()}
        for fqn, st in o["state"].items()
    }
    groups = list(o["groups"].values()) or list(o["flat_groups"].values())
    return {
        "state": state,
        "param_groups": [
            {k: reader.read(key) if k in _PROBED_GROUP_VALUES else None for k, key in g.items()} for g in groups
        ],
    }


def _kind(entries: list[_Entry]) -> str:
    dwd = entries[0].hyper.get("decoupled_weight_decay") if entries else None
    return "AdamW" if dwd is True else "Adam" if dwd is False else "unknown-adam"


def _describe_dcp_non_adam(o: dict) -> str:
    keys = sorted({k for st in o["state"].values() for k in st})
    known = sorted({v for k, v in KNOWN_STATE_KEYS.items() if k in keys})
    return f"{', '.join(known) or 'an unknown optimizer'} state (per-parameter keys: {', '.join(keys) or 'none'})"


__all__ = ["DcpReader", "open_dcp"]
