"""DeepSpeed ZeRO-1/2/3 and universal checkpoints, read without deepspeed and without running code.

What ``engine.save_checkpoint(dir)`` writes: ``dir/latest`` (the tag of the last save) and
``dir/<tag>/`` (``global_stepN``) holding

* ``mp_rank_00_model_states.pt`` (ZeRO-1/2) or ``zero_pp_rank_R_mp_rank_00_model_states.pt`` (ZeRO-3):
  ``param_shapes`` — per optimizer param group, parameter name → shape, in flattening order —
  and ``global_steps``;
* ``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt``, one per data-parallel rank: the base
  optimizer's state over that rank's *flat* partition of each group.

ZeRO-1/2 flatten each param group into one vector and cut it into equal parts, one per rank; a
parameter can straddle ranks. ``param_slice_mappings`` (per rank and group: name → (start, numel)
inside that rank's part) says where each piece lies, so a parameter's moments are its pieces in
rank order. ZeRO-3 cuts every parameter on its own into ``ceil(numel / world)`` elements per rank
(the last one padded) and concatenates a rank's pieces in parameter order; nothing in the file
says where they are, so offsets follow from ``param_shapes`` (as DeepSpeed's zero_to_fp32 does).
``ds_to_universal`` writes ``<tag>_universal/zero/<name>/{exp_avg,exp_avg_sq,fp32,step}.pt`` with
whole tensors; param groups come from the model-states file beside it. HF Trainer + DeepSpeed saves
the same layout inside ``checkpoint-N/`` (``checkpoint-N/latest``, ``checkpoint-N/global_stepN/``).

Safety: the pickles name a few DeepSpeed classes (the loss scaler, ``ZeroStageEnum``,
``fragment_address``). torch's ``weights_only`` unpickler is given inert stand-ins registered under
those names (records of their attributes, no behaviour); every other global is refused as usual,
with its name in the message. Python 3.11.0-3.11.4 pickle enum members as ``builtins.getattr(cls,
name)``: that is allowed only as a member lookup on these stand-in enums.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adamdiag.errors import InputError
from adamdiag.io.checkpoints import (
    OptimizerCheckpoint,
    _as_int,
    _Entry,
    _hyper,
    _is_tensor,
    _optimizer_kind,
    resolve_steps,
    torch_load,
)
from adamdiag.io.checkpoints.buffers import BufferPool
from adamdiag.io.checkpoints.integrity import Piece, gather_into

_MODEL_RE = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")
_OPTIM_RE = re.compile(r"^(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


# --- inert stand-ins for the DeepSpeed classes in the pickles -----------------------------------------
class DeepSpeedRecord:
    """An object DeepSpeed pickled, as a plain record of its attributes (never its behaviour)."""

    ds_class = "deepspeed"

    def __new__(cls, *args: Any, **kwargs: Any) -> DeepSpeedRecord:
        obj = super().__new__(cls)
        obj.__dict__["_args"] = args  # a namedtuple/dataclass-style NEWOBJ passes fields positionally
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "_args")
        return f"<{self.ds_class}({fields})>"


def _record(full_name: str) -> type[DeepSpeedRecord]:
    return type(full_name.rsplit(".", 1)[1], (DeepSpeedRecord,), {"ds_class": full_name, "__module__": __name__})


class ZeroStageEnum(enum.IntEnum):
    """Stand-in for ``deepspeed.runtime.zero.config.ZeroStageEnum`` (same members and values)."""

    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3
    max_stage = 3


class LossScaleProfile(str, enum.Enum):
    """Stand-in for ``deepspeed.runtime.fp16.loss_scaler.LossScaleProfile``."""

    FUSED = "fused"
    UNFUSED = "unfused"


_ENUMS: dict[str, type[enum.Enum]] = {
    "deepspeed.runtime.zero.config.ZeroStageEnum": ZeroStageEnum,
    "deepspeed.runtime.fp16.loss_scaler.LossScaleProfile": LossScaleProfile,
}
_RECORDS: dict[str, type[DeepSpeedRecord]] = {
    n: _record(n)
    for n in (
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.runtime.fp16.loss_scaler.LossScalerBase",
        "deepspeed.runtime.fp16.loss_scaler.LossScaleConfig",
        "deepspeed.runtime.fp16.loss_scaler.LossScaleProfileDefaults",
        "deepspeed.utils.tensor_fragment.fragment_address",
    )
}


def _enum_member(cls: Any, name: Any) -> Any:
    """``builtins.getattr`` as the unpickler sees it: only a member of a stand-in enum by name."""
    import pickle

    if cls in _ENUMS.values() and isinstance(name, str) and name in cls.__members__:
        return cls.__members__[name]
    what = getattr(cls, "__qualname__", type(cls).__name__)
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr (on {what}.{name})")


SAFE_GLOBALS: list[tuple[Any, str]] = [
    *((c, n) for n, c in _ENUMS.items()),
    *((c, n) for n, c in _RECORDS.items()),
    (_enum_member, "builtins.getattr"),
]


def _load(path: Path, trust: bool, mapped: list[str] | None = None) -> Any:
    """One DeepSpeed file through the safe loader; ``mapped`` collects the memory-mapped ones (their
    pages are handed back after each tensor: a ZeRO partition is held for the whole checkpoint)."""
    obj, mm = torch_load(path, trust=trust, extra_globals=SAFE_GLOBALS)
    if mm and mapped is not None:
        mapped.append(os.path.realpath(path))
    return obj


# --- discovery -------------------------------------------------------------------------------------
def is_tag_dir(d: Path) -> bool:
    """A directory one ``save_checkpoint`` wrote (``global_stepN``, ``…_universal``): model states
    plus optimizer partitions or a universal ``zero/`` folder."""
    try:
        names = os.listdir(d)
    except OSError:
        return False
    if not any(_MODEL_RE.match(n) for n in names):
        return False
    return any(_OPTIM_RE.match(n) for n in names) or (d / "zero").is_dir()


def has_pointer(d: Path) -> bool:
    """Whether ``d`` holds DeepSpeed's ``latest`` / ``latest_universal`` file (a save directory)."""
    return (d / "latest").is_file() or (d / "latest_universal").is_file()


def resolve(d: Path) -> Path | None:
    """The tag directory a DeepSpeed checkpoint path means: itself, or what its ``latest`` /
    ``latest_universal`` file names. None when it is no DeepSpeed checkpoint."""
    if is_tag_dir(d):
        return d
    for pointer in ("latest", "latest_universal"):
        f = d / pointer
        if f.is_file():
            try:
                tag = f.read_text().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"{f}: unreadable ({e})") from None
            if not tag or "/" in tag or tag.startswith(".."):
                raise InputError(f"{f}: does not name a checkpoint tag ({tag[:60]!r})")
            if not is_tag_dir(d / tag):
                raise InputError(f"{f} names {tag!r}, but {d / tag} holds no DeepSpeed checkpoint")
            return d / tag
    return None


# --- open ------------------------------------------------------------------------------------------
def _model_states(tag: Path, trust: bool) -> tuple[Path, dict]:
    # (dp rank or "", mp rank, file name) of every model-states file, in the order of their ranks
    matched = sorted((m.group(1) or "", m.group(2), n) for n in os.listdir(tag) if (m := _MODEL_RE.match(n)))
    files = [n for _, _, n in matched]
    mp = {int(r) for _, r, _ in matched}
    if mp != {0}:
        raise InputError(
            f"{tag}: tensor-parallel DeepSpeed checkpoint (model-parallel ranks {sorted(mp)}): not supported; "
            "convert it with ds_to_universal first"
        )
    if any(n.startswith("layer_") for n in os.listdir(tag)):
        raise InputError(f"{tag}: pipeline-parallel DeepSpeed checkpoint (layer_* files): not supported")
    path = tag / files[0]
    obj = _load(path, trust)
    if not isinstance(obj, dict) or "param_shapes" not in obj:
        raise InputError(f"{path}: no param_shapes in it (not a DeepSpeed model-states file?)")
    return path, obj


def _param_shapes(ms: dict, path: Path) -> list[list[tuple[str, tuple[int, ...]]]]:
    ps = ms["param_shapes"]
    if isinstance(ps, dict):  # some writers keep one mapping for a single group
        ps = [ps]
    try:
        return [[(str(n), tuple(int(s) for s in shape)) for n, shape in g.items()] for g in ps]
    except (AttributeError, TypeError, ValueError):
        raise InputError(f"{path}: param_shapes is not a list of name → shape mappings") from None


def open_deepspeed(d: Path, *, trust: bool = False) -> OptimizerCheckpoint:
    """Open a DeepSpeed checkpoint (save directory with ``latest``, a tag directory, a universal
    one, or an HF ``checkpoint-N/``). Raises InputError / UntrustedCheckpointError."""
    tag = resolve(d)
    if tag is None:
        raise InputError(f"{d}: no DeepSpeed checkpoint in it (no latest file, no *_model_states.pt)")
    ms_path, ms = _model_states(tag, trust)
    shapes = _param_shapes(ms, ms_path)
    warnings: list[str] = []
    mapped: list[str] = []
    try:
        if (tag / "zero").is_dir() and not any(_OPTIM_RE.match(n) for n in os.listdir(tag)):
            layout, groups, entries, fetch_state, fetch_param, steps = _open_universal(tag, shapes, trust, warnings)
            recycle = None
        else:
            layout, groups, entries, fetch_state, fetch_param, steps, recycle = _open_zero(
                tag, shapes, trust, warnings, mapped
            )
    except _LAYOUT_ERRORS as e:
        raise _layout_error(tag, e) from None
    fetch_state, fetch_param = _guarded(tag, fetch_state), _guarded(tag, fetch_param)
    opt_kind, w = _optimizer_kind({"param_groups": groups, "state": {}})
    warnings += w
    gs = _as_int(ms.get("global_steps"))
    step, optimizer_step = resolve_steps((gs, "global_steps") if gs is not None else None, steps, None, warnings)
    ck = OptimizerCheckpoint(
        path=str(d),
        step=step,
        optimizer_step=optimizer_step,
        layout=layout,
        optimizer=opt_kind,
        convention="torch",
        name_mapping="param_names",
        warnings=warnings,
        entries=entries,
        mmap_files=mapped,
    )
    ck._fetch_state = fetch_state
    ck._fetch_param = fetch_param
    ck._recycle = recycle
    return ck


def _named(e: _Entry) -> tuple[str, tuple[int, ...]]:
    """(name, shape) of an entry whose state is fetched: this reader names every entry (from
    ``param_shapes``), and only entries with a shape have state (``OptimizerCheckpoint.tensors``)."""
    if e.name is None or e.shape is None:
        raise InputError(f"DeepSpeed entry {e.index!r} has no name or no state")  # not reached: see above
    return e.name, e.shape


# A structure other than the DeepSpeed versions seen so far wrote (a missing key, a list where a
# dict was): one line naming the checkpoint, never a traceback.
_LAYOUT_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


def _layout_error(tag: Path, e: Exception) -> InputError:
    return InputError(f"{tag}: unexpected DeepSpeed checkpoint layout ({type(e).__name__}: {str(e)[:120]})")


def _guarded(tag: Path, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(x: Any) -> Any:
        try:
            return fn(x)
        except _LAYOUT_ERRORS as e:
            raise _layout_error(tag, e) from None

    return call


# --- ZeRO-1/2/3 partitions -------------------------------------------------------------------------
def _open_zero(tag: Path, shapes: list, trust: bool, warnings: list[str], mapped: list[str]):
    ranks: dict[int, Path] = {}
    for n in os.listdir(tag):
        m = _OPTIM_RE.match(n)
        if m and int(m.group(2)) == 0:
            ranks[int(m.group(1))] = tag / n
    world = len(ranks)
    if sorted(ranks) != list(range(world)):
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise InputError(f"{tag}: optimizer partitions of rank(s) {missing} are missing")
    osds = []
    for r in range(world):
        obj = _load(ranks[r], trust, mapped)
        osd = obj.get("optimizer_state_dict") if isinstance(obj, dict) else None
        if not isinstance(osd, dict):
            raise InputError(f"{ranks[r]}: no optimizer_state_dict in it (not a DeepSpeed ZeRO partition?)")
        osds.append(osd)
    stage = _as_int(osds[0].get("zero_stage"))
    if stage is None:
        stage = 3 if "fp32_flat_groups" in osds[0] else 1
    if stage >= 3:
        base_key, flat_key = "optimizer_state_dict", "fp32_flat_groups"
    else:
        base_key, flat_key = "base_optimizer_state", "single_partition_of_fp32_groups"
    bases = []
    for r, osd in enumerate(osds):
        base = osd.get(base_key)
        if not (isinstance(base, dict) and isinstance(base.get("state"), dict) and base.get("param_groups")):
            raise InputError(f"{ranks[r]}: no base optimizer state ({base_key}) in it")
        bases.append(base)
    pc = osds[0].get("partition_count")
    pcs = pc if isinstance(pc, list | tuple) else [pc]
    if any(_as_int(p) not in (None, world) for p in pcs):
        raise InputError(f"{tag}: saved by {pcs} data-parallel ranks, but {world} partition files are present")
    state0 = bases[0]["state"]
    if not any(isinstance(st, dict) and "exp_avg" in st and "exp_avg_sq" in st for st in state0.values()):
        keys = sorted({str(k) for st in state0.values() if isinstance(st, dict) for k in st})
        raise InputError(f"{tag}: not an Adam optimizer state (per-partition keys: {', '.join(keys) or 'none'})")
    groups = bases[0]["param_groups"]
    layout = f"deepspeed-zero{stage}"
    if stage >= 3:
        where = _zero3_layout(shapes, bases, world, tag)
    else:
        where = _zero12_layout(shapes, osds, bases, tag)
    # The base optimizer's state is keyed by flat partition (ZeRO-3: sub-group); its param groups
    # list which partitions they own (``params``), so each partition finds its hyperparameters.
    owner: dict[Any, int] = {}
    for gi, grp in enumerate(groups):
        for sg in grp.get("params", []) if isinstance(grp, dict) else []:
            owner.setdefault(sg, gi)
    entries: list[_Entry] = []
    for g, params in enumerate(shapes):
        for pos, (name, shape) in enumerate(params):
            sg = where[name][0]
            own = owner.get(sg, sg if isinstance(sg, int) and sg < len(groups) else None)
            if own is None:
                raise InputError(f"{tag}: no param group of the optimizer owns partition {sg} (holding {name})")
            entries.append(_Entry(group=g, index=name, pos=pos, name=name, shape=shape, hyper=_hyper(groups[own])))
    steps = _optimizer_steps(state0, groups)

    def gather(name: str, shape: tuple, get: Callable[[int, int], Any]) -> Any:
        """The full tensor from its pieces: ``get(rank, sub_group)`` is that rank's flat tensor."""

        sg, pieces = where[name]
        parts = [get(r, sg)[start : start + n] for r, start, n in pieces]
        if len(parts) == 1:
            flat = parts[0]
        else:  # into reused memory (buffers.py): fresh pages for every tensor cost more than the copy
            out = pool.empty((sum(int(p.numel()) for p in parts),), parts[0].dtype)
            # with the CRC kernel each part's zip CRC comes with its copy (no second pass for the check)
            gather_into(parts, out, known)
            flat = out
        numel = math.prod(shape)
        if flat.numel() < numel:
            raise InputError(f"{tag}: partitions hold {flat.numel()} of the {numel} elements of {name}")
        return flat[:numel].view(shape)

    pool = BufferPool()
    known: dict[tuple[int, int], int] = {}  # CRCs of the parts gather copied, for the zip CRC check

    def flat_of(k: str) -> Callable[[int, int], Any]:
        return lambda r, s: _flat(bases[r], s, k, tag)

    def fetch_state(e: _Entry) -> dict[str, Any]:
        name, shape = _named(e)
        sg, pieces = where[name]
        out: dict[str, Any] = {k: gather(name, shape, flat_of(k)) for k in ADAM_KEYS}
        out["step"] = bases[0]["state"].get(sg, {}).get("step")
        # the pieces of the stored partitions these values were cut from (the zip CRC covers the members
        # they are parts of, not the copy; integrity.ZipCrcCheck.finish puts each member's CRC together)
        out["_crc_sources"] = {
            k: [Piece(_flat(bases[r], sg, k, tag)[start : start + n], known) for r, start, n in pieces]
            for k in ADAM_KEYS
        }
        if flat_key in osds[0]:
            out["_crc_sources"]["param"] = [
                Piece(osds[r][flat_key][sg][start : start + n], known) for r, start, n in pieces
            ]
        return out

    def fetch_param(name: str) -> Any:
        if name not in where:
            return None
        shape = next(s for g in shapes for n, s in g if n == name)
        try:
            return gather(name, shape, lambda r, s: osds[r][flat_key][s])
        except (KeyError, IndexError, TypeError):
            return None

    return layout, groups, entries, fetch_state, fetch_param, steps, pool.give_back


def _flat(base: dict, sg: int, key: str, tag: Path) -> Any:
    st = base["state"].get(sg)
    if not isinstance(st, dict) or not _is_tensor(st.get(key)):
        raise InputError(f"{tag}: partition state of group {sg} has no {key}")
    return st[key]


def _zero12_layout(shapes: list, osds: list[dict], bases: list[dict], tag: Path) -> dict[str, tuple[int, list]]:
    """name → (group, [(rank, start, numel), ...]) from ``param_slice_mappings``."""
    if not all(isinstance(o.get("param_slice_mappings"), list) for o in osds):
        raise InputError(
            f"{tag}: ZeRO-1/2 partitions without param_slice_mappings (DeepSpeed before 0.10): "
            "where each parameter lies in the flat partitions is not recorded"
        )
    where: dict[str, tuple[int, list]] = {}
    for g, params in enumerate(shapes):
        for name, shape in params:
            pieces = []
            for r, osd in enumerate(osds):
                maps = osd["param_slice_mappings"]
                addr = maps[g].get(name) if g < len(maps) and isinstance(maps[g], dict) else None
                if addr is not None:
                    pieces.append((r, int(addr.start), int(addr.numel)))
            if sum(n for _, _, n in pieces) != math.prod(shape):
                got = sum(n for _, _, n in pieces)
                raise InputError(
                    f"{tag}: param_slice_mappings cover {got} of the {math.prod(shape)} elements of {name}"
                )
            where[name] = (g, pieces)
    return where


def _zero3_layout(shapes: list, bases: list[dict], world: int, tag: Path) -> dict[str, tuple[int, list]]:
    """ZeRO-3: every parameter has ceil(numel/world) elements on each rank, in parameter order,
    through the sub-groups in order (a parameter never straddles two: sub-groups are whole params)."""
    state = bases[0]["state"]
    sgs = sorted(k for k in state if isinstance(state[k], dict) and _is_tensor(state[k].get("exp_avg")))
    sizes = [int(state[k]["exp_avg"].numel()) for k in sgs]
    where: dict[str, tuple[int, list]] = {}
    i, off = 0, 0
    for params in shapes:
        for name, shape in params:
            per_rank = math.ceil(math.prod(shape) / world)
            while i < len(sizes) and off + per_rank > sizes[i]:
                if off != sizes[i]:
                    raise InputError(f"{tag}: ZeRO-3 partitions do not line up with param_shapes at {name}")
                i, off = i + 1, 0
            if i >= len(sizes):
                raise InputError(f"{tag}: ZeRO-3 partitions are smaller than param_shapes says (at {name})")
            where[name] = (sgs[i], [(r, off, per_rank) for r in range(world)])
            off += per_rank
    if i != len(sizes) - 1 or off != sizes[-1]:
        raise InputError(f"{tag}: ZeRO-3 partitions hold more elements than param_shapes accounts for")
    for r, b in enumerate(bases[1:], 1):
        if [int(b["state"][k]["exp_avg"].numel()) for k in sgs] != sizes:
            raise InputError(f"{tag}: rank {r}'s partitions differ in size from rank 0's")
    return where


def _optimizer_steps(state: dict, groups: list) -> list[int]:
    """The steps the base optimizer stored: per partition (torch's Adam, DeepSpeedCPUAdam), else per param
    group (DeepSpeed's FusedAdam, the default on GPUs, counts ``group['step']``)."""
    own = [s for s in (_as_int(st.get("step")) for st in state.values() if isinstance(st, dict)) if s is not None]
    return own or [s for s in (_as_int(g.get("step")) for g in groups if isinstance(g, dict)) if s is not None]


# --- universal ---------------------------------------------------------------------------------------
def _open_universal(tag: Path, shapes: list, trust: bool, warnings: list[str]):
    zero = tag / "zero"
    opt_path = zero / "optimizer_state.pt"
    common = _load(opt_path, trust) if opt_path.is_file() else {}
    groups = common.get("param_groups") if isinstance(common, dict) else None
    base = common.get("optimizer_state_dict") if isinstance(common, dict) else None
    if not groups and isinstance(base, dict):
        groups = base.get("param_groups")
    if not groups or len(groups) < len(shapes):
        raise InputError(f"{opt_path}: no param_groups for the {len(shapes)} group(s) of param_shapes")
    base_state = base.get("state", {}) if isinstance(base, dict) else {}
    entries: list[_Entry] = []
    for g, params in enumerate(shapes):
        for pos, (name, shape) in enumerate(params):
            if not (zero / name / "exp_avg.pt").is_file():
                warnings.append(f"universal checkpoint has no exp_avg for {name} (never stepped?)")
                shape = None
            entries.append(_Entry(group=g, index=name, pos=pos, name=name, shape=shape, hyper=_hyper(groups[g])))

    def tensor(name: str, key: str) -> Any:
        obj = _load(zero / name / f"{key}.pt", trust)
        t = obj.get("param") if isinstance(obj, dict) else obj
        if not _is_tensor(t):
            raise InputError(f"{zero / name / key}.pt: no tensor in it")
        return t

    def fetch_state(e: _Entry) -> dict[str, Any]:
        name, shape = _named(e)
        out = {k: tensor(name, k).view(shape) for k in ADAM_KEYS}
        if (zero / name / "step.pt").is_file():
            out["step"] = tensor(name, "step")
        else:  # ZeRO-3 conversions keep the step only in the common optimizer state, per group
            out["step"] = (base_state.get(e.group) or {}).get("step")
        return out

    shape_of = {n: s for params in shapes for n, s in params}

    def fetch_param(name: str) -> Any:
        # ZeRO-3 conversions keep fp32 weights flat; ZeRO-1/2 ones in shape
        return tensor(name, "fp32").view(shape_of[name]) if (zero / name / "fp32.pt").is_file() else None

    steps = _optimizer_steps(base_state, groups)
    return "deepspeed-universal", groups, entries, fetch_state, fetch_param, steps


__all__ = ["SAFE_GLOBALS", "DeepSpeedRecord", "has_pointer", "is_tag_dir", "open_deepspeed", "resolve"]
