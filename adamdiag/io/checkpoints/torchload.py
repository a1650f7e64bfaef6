"""Opening torch files safely: ``torch.load`` with ``weights_only=True`` first, the data-only extras training
scripts save, pickle protocols 4/5 through the same allow-list, inert stand-ins for objects of the training's own
classes (a pickled model is read as its parameters, nothing from the file is imported or run), refusal — naming
the global — of any call outside torch's safe list, and full unpickling only with ``--trust-checkpoint``. Also
the file-kind guards every reader opens files through (:func:`non_regular`, :func:`open_regular`).

Split out of the package module so that everything that decides what may run while a checkpoint is read sits in
one file; the package re-exports what its readers use (``torch_load``, ``non_regular``, ``open_regular``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from adamdiag.errors import InputError, UntrustedCheckpointError
from adamdiag.io.filekind import TORCH_MAGIC_LONG1, ZIP_DAMAGE
from adamdiag.printable import is_utf8

# How deep the loaded object is searched (dicts, lists, tuples) for states and for tensor subclasses.
_MAX_DEPTH = 6
# A legacy (pre-1.6, or _use_new_zipfile_serialization=False) torch.save file starts with a pickle of
# torch's magic number: PROTO n, then (protocol >= 4) a FRAME of 8 length bytes, then LONG1 of the number.
_MAGIC_LONG1 = TORCH_MAGIC_LONG1
# The pickle opcode FRAME (protocol >= 4): torch's weights_only unpickler reads protocol 2 only.
_FRAME = 0x95


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


_INERT_NOTED: set[tuple[str, ...]] = set()


def _note_inert(path: Path, classes: list[str]) -> None:
    """One warning per folder and set of stubbed classes (a folder of YOLO checkpoints says it once)."""
    key = (str(path.parent), *sorted(classes))
    if key in _INERT_NOTED:
        return
    _INERT_NOTED.add(key)
    from adamdiag.console import warn

    shown = ", ".join(classes[:3]) + (f" and {len(classes) - 3} more" if len(classes) > 3 else "")
    warn(
        f"{path}: holds objects of classes that unpickling would have to import ({shown}): read without them — "
        "inert stand-ins, no code from the file runs; a pickled model is read as its parameters"
    )


def _warn_trust(path: Path) -> None:
    sys.stderr.write(
        f"adamdiag: warning: loading {path} with full unpickling (--trust-checkpoint): this runs code from the file\n"
    )


@contextlib.contextmanager
def _name_torch_can_open(path: Path) -> Iterator[Any]:
    """``path`` as torch can open it. torch hands the name to C++ as UTF-8, so a path that is not valid
    UTF-8 (its bytes kept as lone surrogates) fails there; on Linux the same file is also
    ``/proc/self/fd/N`` of a descriptor held open while torch reads (and maps) it."""
    if is_utf8(str(path)):
        yield path
        return
    if not os.path.isdir("/proc/self/fd"):
        yield path  # torch then says why it cannot read it: one line, as for any unreadable file
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _data_globals() -> tuple[tuple[Any, str], ...]:
    """Data-only globals that hand-written ``torch.save({...})`` checkpoints commonly hold beside the
    states, allowed on top of torch's weights_only list (scoped to our loads, never registered globally):
    ``argparse.Namespace`` (the usual ``'args'`` entry: built empty, then its attributes set — no code of
    its own runs) and numpy scalars, dtypes and arrays (``np.float64(0.5)``, ``np.random.get_state()``;
    the reconstructors torch's serialization notes show allow-listing with ``add_safe_globals``). Each is
    listed under numpy 2's module name and numpy 1's (``numpy.core``), the names files carry."""
    import argparse

    out: list[tuple[Any, str]] = [(argparse.Namespace, "argparse.Namespace")]
    try:
        import numpy as np

        try:
            from numpy._core import multiarray
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray  # type: ignore[no-redef]
    except ImportError:  # no numpy: a file that holds numpy objects needs it anyway
        return tuple(out)
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out += [(multiarray.scalar, f"{mod}.scalar"), (multiarray._reconstruct, f"{mod}._reconstruct")]
    out += [(np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles some dtypes by their class
    for n in getattr(dtypes, "__all__", ()):
        if n.endswith("DType"):
            out.append((getattr(dtypes, n), f"numpy.dtypes.{n}"))
    return tuple(out)


def torch_load(path: Path, *, trust: bool, extra_globals: Sequence[tuple[Any, str]] = ()) -> tuple[Any, bool]:
    """``torch.load`` on CPU, memory-mapped where the format allows, ``weights_only=True`` first.

    ``extra_globals``: (stand-in, "module.Name") pairs a format module allows in its files on top of
    torch's list — inert records for a framework's classes (DeepSpeed's loss scaler...), so that
    its files load without the framework and without running code from them. The data-only globals of
    :func:`_data_globals` (``argparse.Namespace``, numpy scalars) are allowed too, where torch can scope
    an allow-list (``torch.serialization.safe_globals``, torch >= 2.6).

    Returns (object, mmapped). Raises :class:`UntrustedCheckpointError` when the file needs
    arbitrary unpickling and ``trust`` is false; :class:`InputError` when it is no torch file.
    """
    import pickle

    import torch

    what = non_regular(path)  # a rank file of a checkpoint folder is opened by name: never a FIFO
    if what:
        raise InputError(f"{path}: a {what}, not a checkpoint file (not opened)")

    # what weights_only may build here: the format's stand-ins, and data-only extras where torch can scope them
    safe = (*extra_globals, *(_data_globals() if hasattr(torch.serialization, "safe_globals") else ()))

    def load(weights_only: bool, mmap: bool) -> Any:
        with _name_torch_can_open(path) as name:
            return load_named(name, weights_only, mmap)

    def load_named(path: Any, weights_only: bool, mmap: bool) -> Any:
        allow: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if weights_only and safe:
            if not hasattr(torch.serialization, "safe_globals"):
                raise InputError(f"{path}: reading this format safely needs torch >= 2.6")
            allow = torch.serialization.safe_globals(list(safe))
        if not weights_only and extra_globals:
            # trusted: full unpickling, but the framework's classes still become the stand-ins, so
            # the file loads whether or not that framework is installed
            return torch.load(
                path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_stand_in_pickle(extra_globals)
            )
        with allow, warnings.catch_warnings():
            # torch's multi-line "Detected pickle protocol 4" warning: the protocol is said in our own error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)

    def load_with(pickle_module: Any) -> Any:
        """Our own restricted unpickler (an allow-list, stand-ins): torch's weights_only flag is off for it."""
        with _name_torch_can_open(path) as name, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(name, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=pickle_module)

    try:
        # (is_zipfile itself raises BadZipFile on a damaged zip64 end record: "span multiple disks")
        is_zip = zipfile.is_zipfile(path)
        pkl = _zip_pickle(path) if is_zip else None  # read once: its protocol, and the classes it names
    except ZIP_DAMAGE as e:
        raise InputError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or _first_line(str(e))})") from None
    protocol = _pickle_protocol(path, is_zip, pkl)
    if not is_zip and protocol is None:
        # Not torch's zip format: only the legacy format (a pickle starting with torch's magic
        # number) is a torch file; anything else would otherwise read as "needs unpickling".
        from adamdiag.io.filekind import not_a_checkpoint

        raise InputError(
            not_a_checkpoint(path) or f"{path}: not a readable torch checkpoint (neither torch's zip nor legacy format)"
        )
    # (whatever the trust: torch's weights_only list allows DTensor once torch.distributed.tensor is imported)
    _refuse_rank_shards(path, pkl)
    # torchao's quantized optimizer states: read through inert stand-ins of their classes; a legacy-format file
    # cannot be searched for them before loading (where torch can scope an allow-list, they are allowed there)
    low_bit = _TORCHAO in pkl if pkl is not None else hasattr(torch.serialization, "safe_globals")
    if low_bit:
        from adamdiag.io.checkpoints import torchao_lowbit

        extra_globals = (*extra_globals, *torchao_lowbit.stand_in_globals())
        safe = (*safe, *torchao_lowbit.stand_in_globals())

    def checked(obj: Any) -> Any:
        """The loaded object with torchao's states as readable records; tensor subclasses refused."""
        if low_bit or pkl is None:
            from adamdiag.io.checkpoints import torchao_lowbit

            obj = torchao_lowbit.unwrap(obj, path)
        _refuse_loaded_shards(obj, path)
        return obj

    mmap = True
    try:
        try:
            obj = load(True, True)
            return checked(obj), True
        except RuntimeError as e:
            # Legacy (non-zip) files cannot be memory-mapped; they are read whole.
            if "mmap" not in str(e) and "zipfile" not in str(e).lower():
                raise
            mmap = False
            obj = load(True, False)
            return checked(obj), False
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" not in msg and "weights_only" not in msg:
            raise InputError(f"{path}: not a readable torch checkpoint ({_first_line(msg)})") from None
        blocked = None
        if protocol is not None and protocol >= 4:
            # torch's weights_only unpickler reads the opcodes of pickle protocol 2 only (FRAME, MEMOIZE...
            # of protocols 4 and 5 are "unsupported"): the same allow-list, applied by Python's unpickler.
            restricted = _allow_list_pickle_module(safe)
            if restricted is not None:
                try:
                    obj = load_with(restricted[0])
                    return checked(obj), mmap
                except pickle.UnpicklingError as e3:
                    blocked = _first_line(str(e3))  # a global outside the list: as weights_only would refuse it
        if not trust and "Unsupported global" in (blocked or _weights_only_reason(msg)):
            # classes it would need code for (a pickled model, a framework's record): their objects become inert
            # stand-ins, everything else loads as weights_only would load it — no code from the file runs
            inert = _allow_list_pickle_module(safe, stand_ins=True)
            if inert is not None:
                module, stubbed = inert
                try:
                    obj = load_with(module)
                except Exception:  # noqa: BLE001 - a call to a stubbed global, or a pickle the stand-ins cannot
                    obj = None  # carry: refused as before, naming the global
                if obj is not None:
                    obj = checked(_without_inert(obj))
                    _note_inert(path, list(stubbed))
                    return obj, mmap
        if not trust:
            reason = _weights_only_reason(msg) if blocked is None else blocked
            if protocol is not None and protocol >= 4 and blocked is None:
                reason = (
                    f"it was pickled with protocol {protocol} (torch.save(pickle_protocol={protocol})), which torch's "
                    "weights_only loader cannot read; re-saving it with the default protocol avoids that"
                )
            raise UntrustedCheckpointError(
                f"{path}: loading it needs arbitrary unpickling ({reason}); rerun with --trust-checkpoint "
                "only if you trust the file: that runs code from it"
            ) from None
        _warn_trust(path)
        try:
            obj = load(False, mmap)
            return checked(obj), mmap
        except InputError:
            raise
        except Exception as e2:  # noqa: BLE001 - any failure of a trusted load is an input problem
            gone = re.match(r"Can't get attribute '([\w.]+)' on <module '([\w.]+)'", str(e2))
            if gone:  # a class of the training script (often its __main__): unpickling needs it importable
                # the module as the file names it: torch shows __main__ by its spec's name (pytest.__main__)
                mod = "__main__" if gone[2].endswith("__main__") else gone[2]
                raise InputError(
                    f"{path}: could not be loaded even with --trust-checkpoint: it holds a {mod}.{gone[1]} "
                    "object, a class of the training script that unpickling must import; save it as a dict or "
                    "argparse.Namespace instead"
                ) from None
            raise InputError(
                f"{path}: could not be loaded even with --trust-checkpoint: {_first_line(str(e2))}"
            ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AssertionError, IndexError) as e:
        # (KeyError, AssertionError, IndexError: what torch's loader raises on a damaged legacy-format file —
        # an unknown layout name, a storage key its records never defined)
        raise InputError(f"{path}: not a readable torch checkpoint ({_torch_reason(str(e))})") from None


def _pickle_protocol(path: Path, is_zip: bool, pkl: bytes | None) -> int | None:
    """The pickle protocol of a torch file (of ``pkl``, its ``data.pkl``, in the zip format; the legacy
    format's leading magic-number pickle), or None when it is neither: no torch file."""
    if is_zip:
        if pkl is None:
            return None
        return pkl[1] if len(pkl) >= 2 and pkl[0] == 0x80 else 1  # protocols 0/1 have no PROTO
    try:
        with open(path, "rb") as f:
            head = f.read(2 + 9 + len(_MAGIC_LONG1))
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return None
    rest = head[2:]
    if rest[:1] == bytes([_FRAME]):
        rest = rest[9:]
    return head[1] if rest.startswith(_MAGIC_LONG1) else None


# Classes of one rank's shard of a distributed tensor: torch.save of a sharded state dict
# (FSDP2 / get_optimizer_state_dict without full_state_dict: DTensor; FSDP1 SHARDED_STATE_DICT:
# ShardedTensor). Loaded without their process group they report the whole tensor's shape around
# one rank's piece: every statistic would be of a piece, or wrong.
_SHARD_CLASSES = (b"torch.distributed.tensor", b"torch.distributed._tensor", b"sharded_tensor", b"ShardedTensor")
_SHARD_ADVICE = (
    "one rank's shard of each tensor (DTensor/ShardedTensor from a sharded FSDP state dict), not the whole "
    "tensors: save the full state (get_optimizer_state_dict(..., options=StateDictOptions(full_state_dict=True, "
    "cpu_offload=True)) or FSDP.full_optim_state_dict) or use torch.distributed.checkpoint (dcp.save), which adamdiag reads"
)


# torchao's low-bit optimizers (torchao.optim.AdamW8bit/4bit/Fp8; HF optim="adamw_torch_8bit"/"_4bit") keep m
# and v as tensor subclasses (OptimState8bit, ...) whose data is codes + scales: their class names are resolved
# to inert stand-ins and read as such (:mod:`.torchao_lowbit`); any other torchao subclass is refused.
_TORCHAO = b"torchao."


def _refuse_rank_shards(path: Path, pkl: bytes | None) -> None:
    """InputError when a torch zip file's pickle ``pkl`` names a distributed-tensor class (without unpickling;
    None: the legacy format, checked after loading)."""
    if pkl is None:
        return
    if any(n in pkl for n in _SHARD_CLASSES):
        raise InputError(f"{path}: holds {_SHARD_ADVICE}")


def _refuse_loaded_shards(obj: Any, path: Path, depth: int = 0) -> None:
    """The same checks on a loaded object, through every container (optimizer states included): the
    legacy format is not checked before loading. Any other tensor subclass is refused too, naming
    its class: the statistics read a tensor's memory as the plain values it says it holds (a
    subclass's wrapper has none of its own — torchao's states segfaulted there)."""
    import torch

    if depth > _MAX_DEPTH + 2:
        return
    vals = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list | tuple) else ()
    for v in vals:
        if isinstance(v, dict | list | tuple):
            _refuse_loaded_shards(v, path, depth + 1)
        elif _is_tensor(v) and type(v) not in (torch.Tensor, torch.nn.Parameter):
            cls = f"{type(v).__module__}.{type(v).__qualname__}"
            if cls.startswith("torch.distributed"):
                raise InputError(f"{path}: holds {_SHARD_ADVICE}")
            if cls.startswith("torchao."):
                raise InputError(
                    f"{path}: holds torchao {cls} tensors, which adamdiag does not read (its low-bit optimizer "
                    "states OptimState8bit/4bit/Fp8 are read)"
                )
            raise InputError(f"{path}: holds {cls} tensors (a tensor subclass): adamdiag reads plain tensors only")


def _allow_list_pickle_module(
    extra_globals: Sequence[tuple[Any, str]] = (), *, stand_ins: bool = False
) -> tuple[Any, dict[str, type]] | None:
    """A pickle module for ``torch.load(weights_only=False, pickle_module=...)`` whose Unpickler resolves only
    the globals torch's weights_only loader allows (its own list, those registered with
    ``torch.serialization.add_safe_globals``, and ``extra_globals``): Python's documented way of restricting
    unpickling ("Restricting Globals"). Every object the pickle can build or call comes from a global, so it can
    build and call nothing weights_only could not. Used for the pickle protocols torch's own restricted
    unpickler cannot parse (4 and 5) and, with ``stand_ins``, for objects of classes outside the list: each such
    global becomes an :class:`_Inert` subclass named after it instead of an error (the checkpoint's data loads,
    none of its classes' code is imported or run). Returns (module, the stand-ins made, by name, filled as the
    pickle meets them); None when this torch has no such list."""
    import _compat_pickle
    import pickle
    import types

    try:
        from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals
    except ImportError:
        return None
    allowed = {**_get_allowed_globals(), **_get_user_allowed_globals(), **{n: obj for obj, n in extra_globals}}
    stubbed: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # protocol 2 names Python 2's modules (__builtin__.set): map them as pickle's own find_class does
            # (protocols 3-5 never write those names)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if not stand_ins:
                raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full}")
            if full == "builtins.getattr":
                return _getattr_of_a_stand_in
            if full not in stubbed:
                stubbed[full] = type(name, (_Inert,), {"_class": full, "__module__": __name__})
            return stubbed[full]

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="pickle"), stubbed


def _getattr_of_a_stand_in(obj: Any, name: Any) -> Any:
    """``getattr`` as a pickle may call it to name a method of one of its own classes — mmengine's HistoryBuffer
    pickles ``{"min": getattr(HistoryBuffer, "min"), ...}`` — allowed only on a stand-in (an :class:`_Inert`
    class or instance), where it gives another stand-in and reads nothing. On anything else it is refused, naming
    it, as weights_only refuses it: getattr on a real object reaches whatever that object can reach."""
    import pickle

    owner = obj if isinstance(obj, type) else type(obj)
    if not (isinstance(owner, type) and issubclass(owner, _Inert)) or not isinstance(name, str):
        raise pickle.UnpicklingError("Unsupported global: GLOBAL builtins.getattr")
    return type(name, (_Inert,), {"_class": f"{owner._class}.{name}", "__module__": __name__})


class _Inert:
    """What a checkpoint's object of a class adamdiag will not import becomes (:func:`_allow_list_pickle_module` with ``stand_ins``): it
    keeps the state the pickle hands it and runs nothing. A pickled model (``torch.save({"model": model, ...})``:
    YOLOv5, many research scripts) is rebuilt the way pickle rebuilds a plain object — an empty
    instance (NEWOBJ), then its ``__dict__`` (BUILD) with ``_parameters``/``_modules``, from which
    :func:`_inert_module_state` reads its state dict. A *call* the pickle makes to the class or function
    (REDUCE: ``Fraction("1/3")``, ``os.system(...)``) is refused, naming it, as weights_only refuses it."""

    _class = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import pickle

        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {self._class}")

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_list", []).extend(values)


def _inert_module_state(obj: Any) -> dict[str, Any] | None:
    """The state dict of a pickled ``nn.Module`` loaded as an :class:`_Inert` (its ``__dict__`` holds
    ``_parameters``, ``_buffers`` and ``_modules``, each in definition order): names → tensors in the order
    ``state_dict()`` gives them (a module's parameters, its persistent buffers, then its children). None when
    ``obj`` is no such module."""
    import torch

    def state(o: Any) -> dict | None:
        st = o.__dict__.get("_state") if isinstance(o, _Inert) else None
        return st if isinstance(st, dict) and isinstance(st.get("_parameters"), dict) else None

    if state(obj) is None:
        return None
    out: dict[str, Any] = {}

    def walk(st: dict, prefix: str, depth: int) -> None:
        if depth > _MAX_DEPTH * 4:
            return
        skip = st.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, set | frozenset) else set()
        for n, t in list(st["_parameters"].items()) + [
            (n, b) for n, b in (st.get("_buffers") or {}).items() if n not in skip
        ]:
            if isinstance(t, torch.Tensor):
                out[prefix + str(n)] = t
        children = st.get("_modules")
        for n, m in children.items() if isinstance(children, dict) else ():
            sub = state(m)
            if sub is not None:
                walk(sub, f"{prefix}{n}.", depth + 1)

    walk(state(obj), "", 0)  # type: ignore[arg-type]
    return out


def _without_inert(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every pickled module (an :class:`_Inert` with module state) turned into its state dict, every
    list class that keeps its items as ``items`` (fastcore's ``L``: fastai's optimizer hyperparameters) into that
    list, and every other stand-in into None, through dicts, lists and tuples: the readers see plain data only."""
    if depth > _MAX_DEPTH + 2:
        return obj
    if isinstance(obj, _Inert):
        st = obj.__dict__.get("_state")
        if isinstance(st, dict) and set(st) == {"items"} and type(st["items"]) is list:
            return [_without_inert(v, depth + 1) for v in st["items"]]
        return _inert_module_state(obj)
    if isinstance(obj, dict):
        return {k: _without_inert(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_without_inert(v, depth + 1) for v in obj) if type(obj) in (list, tuple) else obj
    return obj


def _torch_reason(msg: str) -> str:
    """torch's reason, without its C++ internals ('[enforce fail at inline_container.cc:…]')."""
    line = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", _first_line(msg)).strip()
    return line or "not torch's zip format"


def _stand_in_pickle(extra_globals: Sequence[tuple[Any, str]]) -> Any:
    """A pickle module for torch.load whose Unpickler resolves ``extra_globals`` names to their stand-ins."""
    import pickle
    import types

    names = {n: obj for obj, n in extra_globals}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            if full in names and full != "builtins.getattr":  # trusted: the real getattr is fine
                return names[full]
            return super().find_class(module, name)

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="pickle")


def _first_line(msg: str) -> str:
    return next((ln.strip() for ln in msg.splitlines() if ln.strip()), msg)[:200]


def _weights_only_reason(msg: str) -> str:
    # torch names a blocked module's global differently ("Trying to load unsupported GLOBAL
    # posix.system whose module posix is blocked"): the name is what a user needs to see.
    blocked = re.search(r"unsupported GLOBAL ([\w.]+) whose module", msg)
    if blocked:
        return f"Unsupported global: GLOBAL {blocked.group(1)}"
    m = re.search(
        r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|Trying to load unsupported object[^\n]*)", msg
    )
    return m.group(1) if m else "an object weights_only=True does not allow"


def _zip_pickle_mentions(path: Path, needles: tuple[bytes, ...]) -> bool | None:
    """Whether the pickle inside a torch zip file mentions any of ``needles`` (no unpickling).
    None when the file is not a torch zip file (legacy format, or not torch at all)."""
    try:
        data = _zip_pickle(path)
    except ZIP_DAMAGE:
        return None
    return None if data is None else any(n in data for n in needles)


def _zip_pickle(path: Path) -> bytes | None:
    """The pickle (``data.pkl``) of a torch zip file; None for a zip without one. Raises what
    :mod:`zipfile` raises on a file that is no readable zip."""
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            return None
        with zf.open(pkl[0]) as f:
            return f.read()


# --- discovery -------------------------------------------------------------------------------------
def non_regular(p: Path) -> str | None:
    """'FIFO' / 'socket' / 'device' / ... when ``p`` (links followed) exists but is no regular file
    or directory: opening such a path can block forever or read a device, so it is never opened."""
    import stat

    try:
        mode = os.stat(p).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def open_regular(
    path: Path | str, *, buffering: int = -1, what: str = "checkpoint file"
) -> io.FileIO | io.BufferedReader:
    """``open(path, "rb")`` for a file *inside* a checkpoint (a DCP shard, a TF bundle's index or data,
    a DeepSpeed rank file): opened non-blocking and checked with fstat before anything is read, so a
    FIFO there never blocks and a device is never read — an :class:`InputError` naming it instead.
    The path itself was checked by :func:`open_checkpoint`; the files it names were not."""
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "directory" if stat.S_ISDIR(mode) else non_regular(Path(path)) or "special file"
            raise InputError(f"{path}: a {kind}, not a {what} (not read)")
        os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb")
        return raw if buffering == 0 else io.BufferedReader(raw)
    except BaseException:
        os.close(fd)
        raise
