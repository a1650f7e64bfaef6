"""bitsandbytes optimizer states (``bnb.optim.Adam8bit``, ``AdamW8bit``, ``PagedAdamW8bit``, 32-bit
``bnb.optim.Adam``; Hugging Face ``optim="adamw_bnb_8bit"``), read without bitsandbytes.

A bitsandbytes optimizer keeps, per parameter, ``state1`` (m) and ``state2`` (v) — float32 for
tensors under its ``min_8bit_size``, else uint8 codes: value = ``qmap[code] · absmax[block]``
(blockwise dynamic quantization: ``qmap1`` signed, ``qmap2`` unsigned, one float32 ``absmax`` per
block of 256 elements; 2048 in older releases, found from the number of blocks). Since 0.45 its
``state_dict()`` moves these tensors under ``__bnb_optimizer_quant_state__`` (for FSDP); older files
keep them beside ``step``. Both are read.

Its Adam/AdamW update (the CPU, default-torch and triton implementations of 0.50.2 alike) is
``p -= lr/bc1 · m / (√v/√bc2 + eps)``: eps on the bias-corrected √v̂, the torch convention, so
√v̂ and every statistic mean what they mean for ``torch.optim.Adam``. The moments are the
dequantized values the optimizer itself computes with (exact: one float32 product per element).

Refused, naming the optimizer: one-state optimizers (Lion, Momentum/SGD, RMSprop, Adagrad, LARS:
``state1`` only, no second moment), AdEMAMix (two first moments, three betas), LAMB (its trust ratio,
``unorm_vec``, scales every update), and the non-blockwise 8-bit form (``max1``/``new_max1``), whose
scaling this reader does not reproduce.
"""

from __future__ import annotations

from typing import Any

from adamdiag.errors import NotAdamError
from adamdiag.io.checkpoints import lazy_moments
from adamdiag.io.checkpoints.lazy_moments import LazyMoments

WRAP_KEY = "__bnb_optimizer_quant_state__"
# bitsandbytes' optimizers use one block size for their states; older releases used 2048.
BLOCK_SIZES = (256, 2048)


def is_bnb_state(osd: dict) -> bool:
    """Whether an optimizer state dict was written by a bitsandbytes optimizer (its per-parameter
    ``state1``, wrapped or not)."""
    return any(isinstance(st, dict) and (WRAP_KEY in st or "state1" in st) for st in osd["state"].values())


def _raw(st: dict) -> dict:
    """One parameter's bitsandbytes state with the wrapped tensors back at the top level."""
    inner = st.get(WRAP_KEY)
    return {**{k: v for k, v in st.items() if k != WRAP_KEY}, **(inner if isinstance(inner, dict) else {})}


def _what(osd: dict, raws: list[dict]) -> str | None:
    """None for a two-state Adam; else what the optimizer is (for the refusal)."""
    g0 = osd["param_groups"][0] if osd["param_groups"] else {}
    betas = g0.get("betas")
    keys = set().union(*(set(r) for r in raws)) if raws else set()
    if isinstance(betas, list | tuple) and len(betas) == 3:
        return "bitsandbytes AdEMAMix (two first moments and three betas: not an Adam update)"
    if "state1" in keys and "state2" not in keys:
        return (
            "a bitsandbytes one-state optimizer (Lion, Momentum/SGD, RMSprop, Adagrad or LARS: "
            "state1 only, no second moment v)"
        )
    if (
        "projector" in keys
    ):  # galore-torch's GaLoreAdamW8bit (HF optim="galore_adamw_8bit"): bnb's 8-bit Adam underneath
        return (
            "GaLore (bitsandbytes 8-bit): its m and v are of a rank-r projection of the gradient, not of the parameter"
        )
    if "unorm_vec" in keys:
        return "bitsandbytes LAMB (a per-tensor trust ratio scales every update: not an Adam update)"
    if keys & {"max1", "new_max1", "max2", "new_max2"}:
        return "a bitsandbytes non-blockwise 8-bit state (max1/new_max1 scaling: not read)"
    return None


def _block_size(n: int, blocks: int) -> int | None:
    """The block size that gives ``blocks`` blocks for ``n`` elements (unique for blocks > 1)."""
    for b in BLOCK_SIZES:
        if (n + b - 1) // b == blocks:
            return b
    return None


class Bnb8bitMoments(LazyMoments):
    """One parameter's state as ``exp_avg`` / ``exp_avg_sq`` (dequantized when read) plus ``step``."""

    def __init__(self, raw: dict, shape: tuple[int, ...]) -> None:
        # the stored tensors each moment comes from: the zip CRC check verifies those
        crc = {
            "exp_avg": [raw[k] for k in ("state1", "qmap1", "absmax1") if k in raw],
            "exp_avg_sq": [raw[k] for k in ("state2", "qmap2", "absmax2") if k in raw],
        }
        super().__init__({"step": raw.get("step"), "_crc_sources": crc}, shape, ("exp_avg", "exp_avg_sq"))
        self.raw = raw

    def _moment(self, key: str) -> Any:
        import torch

        k = 1 if key == "exp_avg" else 2
        s = self.raw[f"state{k}"]
        if s.dtype != torch.uint8:
            return s  # a small tensor's 32-bit state: the values themselves
        qmap, absmax = self.raw[f"qmap{k}"].float(), self.raw[f"absmax{k}"].float().flatten()
        codes = s.flatten()
        n = codes.numel()
        block = _block_size(n, absmax.numel()) or max(n, 1)
        out = torch.empty(n, dtype=torch.float32)
        # in chunks of whole blocks: the int64 indices of one chunk, never 8 bytes per element at once
        step = max(lazy_moments.CHUNK // block, 1) * block
        for i in range(0, n, step):
            j = min(i + step, n)
            scale = absmax[i // block : (j + block - 1) // block].repeat_interleave(block)[: j - i]
            torch.mul(qmap[codes[i:j].long()], scale, out=out[i:j])
        return out.reshape(s.shape)


def adapt(osd: dict, path: object) -> dict:
    """A bitsandbytes state dict as a torch-Adam-shaped one (``exp_avg``/``exp_avg_sq`` per
    parameter, read lazily); its param groups say ``bnb_bits`` (8 or 32) for the optimizer's name.
    Raises :class:`NotAdamError` (one line, naming the optimizer) for the states listed above."""
    import torch

    raws = {k: _raw(st) for k, st in osd["state"].items() if isinstance(st, dict)}
    what = _what(osd, list(raws.values()))
    if what is not None:
        raise NotAdamError(f"{path}: not an Adam optimizer state: found {what}")
    state: dict[Any, Any] = {}
    bits = 32
    for k, raw in raws.items():
        s1, s2 = raw.get("state1"), raw.get("state2")
        if not (isinstance(s1, torch.Tensor) and isinstance(s2, torch.Tensor)):
            continue
        if s1.shape != s2.shape:
            raise NotAdamError(
                f"{path}: bitsandbytes state of parameter {k}: state1 {tuple(s1.shape)} and "
                f"state2 {tuple(s2.shape)} differ (not a two-state Adam)"
            )
        for j, s in ((1, s1), (2, s2)):
            if s.dtype == torch.uint8:
                bits = 8
                qmap, absmax = raw.get(f"qmap{j}"), raw.get(f"absmax{j}")
                if not (isinstance(qmap, torch.Tensor) and qmap.numel() == 256 and isinstance(absmax, torch.Tensor)):
                    raise NotAdamError(
                        f"{path}: bitsandbytes 8-bit state of parameter {k} without its qmap{j}/absmax{j}"
                    )
                if absmax.numel() > 1 and _block_size(s.numel(), absmax.numel()) is None:
                    raise NotAdamError(
                        f"{path}: bitsandbytes state of parameter {k}: {absmax.numel()} blocks for {s.numel()} "
                        f"elements fit no block size it uses ({', '.join(map(str, BLOCK_SIZES))})"
                    )
        state[k] = Bnb8bitMoments(raw, tuple(int(x) for x in s1.shape))
    # Weight decay: bitsandbytes' Adam update (its CPU, default-torch and triton implementations, read in
    # 0.50.2) scales p by 1 - lr·wd before the step, decoupled as AdamW, whichever Adam class wrote it.
    groups = [{**g, "bnb_bits": bits, "decoupled_weight_decay": True} for g in osd["param_groups"]]
    return {**osd, "state": state, "param_groups": groups}


def optimizer_name(osd: dict) -> str | None:
    """'Adam (bitsandbytes 8-bit)' / '... 32-bit' for an adapted state dict, else None. bitsandbytes'
    Adam and AdamW share one update (weight decay decoupled in both), so the state cannot tell them apart."""
    g0 = osd["param_groups"][0] if osd["param_groups"] else {}
    bits = g0.get("bnb_bits")
    return None if bits is None else f"Adam/AdamW (bitsandbytes {bits}-bit)"
