"""torchao's low-bit Adam states (``torchao.optim`` ``Adam8bit``/``AdamW8bit``, ``Adam4bit``/``AdamW4bit``,
``AdamFp8``/``AdamWFp8``; ``torchao.prototype.low_bit_optim`` before torchao 0.11; Hugging Face
``optim="adamw_torch_8bit"`` / ``"adamw_torch_4bit"``), read without torchao.

torchao keeps m and v of every parameter with ≥ 4096 elements (and a multiple of the block size) as tensor
subclasses — ``OptimState8bit`` (uint8 codes into a 256-level dynamic map ``qmap``, one float32 ``scale`` =
the block's largest |value| per block of 256), ``OptimState4bit`` (two 4-bit codes per byte into a 16-level map,
blocks of 128) and ``OptimStateFp8`` (float8 e4m3 codes times a per-block scale) — and smaller ones as plain
float32 tensors. ``torch.save`` pickles such a subclass as ``_rebuild_from_type_v2(_rebuild_wrapper_subclass,
OptimState8bit, ..., {"codes", "scale", "qmap", ...})``: here each class name is resolved to an inert
stand-in (a tensor subclass with no storage whose every operation raises), allowed to ``weights_only``'s
unpickler like any data-only global, and :func:`unwrap` turns each into a :class:`LowBitTensor` (codes and
scales, no values yet). No torchao code is imported or run.

Values: :meth:`LowBitTensor.dequantize` computes what the subclass's own ``dequantize()`` does — ``qmap[codes]``
(the 4-bit codes unpacked high nibble first) or ``codes.float()``, times the block's scale — element for element
in float32, so every statistic is of the moments the optimizer computes with (tested bit for bit against
torchao 0.18's ``dequantize()``; 0.11's and 0.9's files held out).

Its update (``single_param_adam``, 0.9-0.18): ``p -= lr/bc1 · m / (√v/√bc2 + eps)``, the torch convention. Its
state cannot tell Adam (L2 added to the gradient) from AdamW (decoupled decay): the name says both.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamdiag.errors import InputError
from adamdiag.io.checkpoints import lazy_moments
from adamdiag.io.checkpoints.lazy_moments import MOMENT_KEYS, LazyMoments

# class name -> (kind, code levels); the modules torchao has defined them in
KINDS = {"OptimState8bit": ("8-bit", 256), "OptimState4bit": ("4-bit", 16), "OptimStateFp8": ("fp8", None)}
MODULES = ("torchao.optim", "torchao.prototype.low_bit_optim")
_SUBMODULE = {"OptimState8bit": "subclass_8bit", "OptimState4bit": "subclass_4bit", "OptimStateFp8": "subclass_fp8"}
# float8 e4m3 (torchao's fp8 state): its largest finite value and its smallest positive (subnormal) one
_FP8_MAX, _FP8_TINY = 448.0, 2.0**-9
# how deep the loaded object is searched for the states (as the loader's own search)
_MAX_DEPTH = 8
# a marker the adapted param groups carry: the kind of quantized state, for the optimizer's name
GROUP_KEY = "torchao_kind"


@functools.cache
def _stand_ins() -> dict[str, type]:
    """'module.Class' -> the inert stand-in its pickle is rebuilt as (one per class, for every module)."""
    import torch

    class LowBitStandIn(torch.Tensor):
        """What a pickled torchao state becomes: a storage-less wrapper holding the stored fields."""

        _class = "torchao state"

        @classmethod
        def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:  # type: ignore[override]
            raise RuntimeError(f"{cls._class} stand-in: holds codes, not values (read it through unwrap())")

        def __setstate__(self, state: Any) -> None:
            self.__dict__["_stored"] = state

    out: dict[str, type] = {}
    for cls_name in KINDS:
        stand_in = type(cls_name, (LowBitStandIn,), {"_class": cls_name, "__module__": __name__})
        for mod in MODULES:
            out[f"{mod}.{_SUBMODULE[cls_name]}.{cls_name}"] = stand_in
    return out


def stand_in_globals() -> tuple[tuple[type, str], ...]:
    """(stand-in, 'module.Class') pairs for the loader's allow-list (``torch_load(extra_globals=...)``)."""
    return tuple((cls, name) for name, cls in _stand_ins().items())


@dataclass(frozen=True)
class LowBitTensor:
    """One quantized moment: codes, per-block scales, the code map (8-/4-bit) and the parameter's shape."""

    kind: str  # "8-bit" | "4-bit" | "fp8"
    shape: tuple[int, ...]
    codes: Any
    scale: Any
    qmap: Any | None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def block(self) -> int:
        return self.numel // max(int(self.scale.numel()), 1)

    def sources(self) -> list[Any]:
        """The stored tensors its values come from (the zip CRC check verifies those)."""
        return [t for t in (self.codes, self.scale, self.qmap) if t is not None]

    def floor(self) -> float:
        """The smallest nonzero |value| a code holds, relative to its block's largest: below it a value is 0."""
        if self.qmap is None:
            return _FP8_TINY / _FP8_MAX
        q = self.qmap.double().abs()
        pos = q[q > 0]
        return float(pos.min() / q.max()) if pos.numel() else 0.0

    def dequantize(self) -> Any:
        """float32 values, as torchao's ``dequantize()`` computes them; a chunk of whole blocks at a time."""
        import torch

        n, b = self.numel, self.block
        codes = self.codes.reshape(-1)
        scale = self.scale.reshape(-1)
        qmap: Any = self.qmap  # None for fp8
        out = torch.empty(n, dtype=torch.float32)
        step = max(lazy_moments.CHUNK // b, 1) * b
        for i in range(0, n, step):
            j = min(i + step, n)
            if self.kind == "fp8":
                vals = codes[i:j].float()
            elif self.kind == "4-bit":
                packed = codes[i // 2 : j // 2]
                vals = qmap[torch.stack([packed >> 4, packed & 0b1111], dim=-1).reshape(-1).int()]
            else:
                vals = qmap[codes[i:j].int()]
            torch.mul(vals.view(-1, b), scale[i // b : j // b].view(-1, 1), out=out[i:j].view(-1, b))
        return out.view(self.shape)


def _stored_fields(x: Any) -> dict[str, Any]:
    stored = x.__dict__.get("_stored")
    if isinstance(stored, dict):
        return stored
    # a trusted load of a file torch could not pre-check (legacy format) with torchao installed: the real class
    return {k: getattr(x, k) for k in ("codes", "scale", "qmap", "_shape") if hasattr(x, k)}


def _low_bit(x: Any, path: Path) -> LowBitTensor:
    """A :class:`LowBitTensor` from a stand-in (or a real torchao state); InputError when its fields do not fit."""
    import torch

    cls = type(x).__name__
    kind, levels = KINDS[cls]
    f = _stored_fields(x)
    codes, scale, qmap = f.get("codes"), f.get("scale"), f.get("qmap")
    shape = tuple(int(s) for s in x.shape)
    n = math.prod(shape)

    def damaged(why: str) -> InputError:
        return InputError(f"{path}: torchao {kind} optimizer state of shape {list(shape)}: {why} (the file is damaged)")

    if not (isinstance(codes, torch.Tensor) and isinstance(scale, torch.Tensor)):
        raise damaged("no codes/scale tensors")
    want_dtype = getattr(torch, "float8_e4m3fn", None) if kind == "fp8" else torch.uint8
    want_codes = n // 2 if kind == "4-bit" else n
    if codes.dtype != want_dtype or codes.numel() != want_codes:
        raise damaged(f"{codes.numel()} {str(codes.dtype).removeprefix('torch.')} codes for {n} elements")
    blocks = scale.numel()
    if scale.dim() != 1 or blocks == 0 or n % blocks or (kind == "4-bit" and (n // blocks) % 2):
        raise damaged(f"{blocks} block scales for {n} elements")
    if levels is not None and not (
        isinstance(qmap, torch.Tensor) and qmap.numel() == levels and qmap.is_floating_point()
    ):
        raise damaged(f"no {levels}-level code map")
    return LowBitTensor(kind, shape, codes, scale, qmap if levels is not None else None)


def unwrap(obj: Any, path: Path, depth: int = 0) -> Any:
    """``obj`` with every torchao state (stand-in or real) replaced by a :class:`LowBitTensor`; containers
    that hold none are returned as they are (the same objects)."""
    cls = type(obj)
    if cls.__name__ in KINDS and cls.__module__.startswith((__name__, "torchao.")):
        return _low_bit(obj, path)
    if depth > _MAX_DEPTH:
        return obj
    if isinstance(obj, dict):
        changed = {k: new for k, v in obj.items() if (new := unwrap(v, path, depth + 1)) is not v}
        if not changed:
            return obj
        out = copy.copy(obj)  # dict or OrderedDict, as it was
        out.update(changed)
        return out
    if isinstance(obj, list | tuple):
        items = [unwrap(v, path, depth + 1) for v in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return type(obj)(items) if type(obj) in (list, tuple) else items
    return obj


def is_state(osd: dict) -> bool:
    """Whether an optimizer state dict holds torchao low-bit moments (after :func:`unwrap`)."""
    return any(
        isinstance(st, dict) and any(isinstance(st.get(k), LowBitTensor) for k in MOMENT_KEYS)
        for st in osd["state"].values()
    )


class TorchaoMoments(LazyMoments):
    """One parameter's state with its quantized moments dequantized when read."""

    def __init__(self, st: dict, quantized: dict[str, LowBitTensor]) -> None:
        plain = {k: v for k, v in st.items() if k not in quantized}
        plain["_crc_sources"] = {k: q.sources() for k, q in quantized.items()}
        super().__init__(plain, next(iter(quantized.values())).shape, tuple(quantized))
        self.quantized = quantized

    def _moment(self, key: str) -> Any:
        return self.quantized[key].dequantize()


def adapt(osd: dict, path: Path) -> dict:
    """A torchao low-bit state dict as a torch-Adam-shaped one (quantized moments read lazily); its param
    groups carry :data:`GROUP_KEY` (the kind, for the name) and ``torchao_floor`` (for the warning)."""
    state: dict[Any, Any] = {}
    kinds: list[str] = []
    floor = None
    for k, st in osd["state"].items():
        quantized = {m: st[m] for m in MOMENT_KEYS if isinstance(st, dict) and isinstance(st.get(m), LowBitTensor)}
        if not quantized:
            state[k] = st
            continue
        if len({q.shape for q in quantized.values()}) > 1:
            raise InputError(f"{path}: torchao optimizer state of parameter {k}: its moments differ in shape (damaged)")
        kinds += sorted({q.kind for q in quantized.values()} - set(kinds))
        if floor is None and "exp_avg_sq" in quantized:
            floor = quantized["exp_avg_sq"].floor()
        state[k] = TorchaoMoments(st, quantized)
    groups = [{**g, GROUP_KEY: "/".join(kinds), "torchao_floor": floor} for g in osd["param_groups"]]
    return {**osd, "state": state, "param_groups": groups}


def optimizer_name(osd: dict) -> str | None:
    """'Adam/AdamW (torchao 8-bit)' (4-bit, fp8) for an adapted state dict, else None."""
    g0 = osd["param_groups"][0] if osd["param_groups"] else {}
    kind = g0.get(GROUP_KEY)
    return None if kind is None else f"Adam/AdamW (torchao {kind})"


def warning(osd: dict) -> str:
    """What the quantization means for the statistics, said once per file."""
    g0 = osd["param_groups"][0] if osd["param_groups"] else {}
    return describe(g0.get(GROUP_KEY), g0.get("torchao_floor"))


def kind_in_pickle(head: bytes) -> str | None:
    """The kind of torchao state a pickle's first bytes name ("8-bit", "4-bit", "fp8"), else None: how a DCP
    item's kind is told before it is read (torch.save writes the pickle, class names verbatim, first)."""
    if b"torchao." not in head:
        return None
    return next((kind for cls, (kind, _) in KINDS.items() if cls.encode() in head), None)


def describe(kind: str | None, floor: float | None) -> str:
    """The warning for a ``kind`` of torchao state; ``floor``: its v map's smallest level (None: unknown)."""
    below = (
        f"a v under {floor:.3g} of its block's largest is stored as 0, so v = 0 there need not mean 'never "
        "received a gradient' (and counts as √v̂ < eps)"
        if floor
        else "small values of v are stored as 0"
    )
    return (
        f"torchao {kind} state: m and v are read as torchao dequantizes them (block-wise codes × the block's "
        f"scale) for tensors of ≥ 4096 elements, smaller ones are float32; {below}; Adam and AdamW write the same "
        "state (weight decay coupled or decoupled is not recorded)"
    )
