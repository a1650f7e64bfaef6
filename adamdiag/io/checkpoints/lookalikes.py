"""Adam's look-alikes: optimizers whose per-parameter state holds Adam's own keys (``exp_avg``, ``exp_avg_sq``) but
whose update, or whose v, is not Adam's — timm's and torch-optimizer's LAMB, AdamP, AdaBound, AdaMod, diffGrad,
QHAdam, Ranger, SWATS, Adan, ADOPT, LaProp, MARS, NovoGrad, Yogi; DeepSpeed's and apex's fused LAMB; GaLore;
transformers' legacy AdamW (eps on the un-corrected √v). Read as
Adam they would give confident numbers about another optimizer.

Each is told by what only it writes (per-parameter keys, param-group keys, a per-tensor scalar v) — the keys were
read from files the libraries wrote (tools/runlab/make_lookalike_fixtures.py: timm 1.0.31, torch-optimizer
0.3.0, galore-torch 1.0, whose AdamW is transformers' legacy one; DeepSpeed's FusedLamb and apex's FusedLAMB from
their source: they need CUDA). Two outcomes:

* **refused** (:class:`NotAdamError`, naming it and why) where its v is not a decaying average of g² or its
  update does not divide m̂ by √v̂ + eps — every statistic would describe another mechanism;
* **read** where v is Adam's and the step is Adam's m̂/(√v̂+eps) modified per tensor or per element (LAMB's trust
  ratio, AdamP's projection, AdaBound's clipping...): the moments and √v̂ are what they are, the optimizer is named
  and a warning says what the update statistics leave out. ``replay`` refuses all of them (it re-runs
  torch.optim.Adam/AdamW: another run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LookAlike:
    name: str
    state_keys: frozenset[str] = frozenset()  # per-parameter keys only it writes: any one identifies it
    group_keys: frozenset[str] = frozenset()  # param-group keys only it writes: any one identifies it
    group_sets: tuple[frozenset[str], ...] = ()  # param-group keys that together identify it
    refuse: str | None = None  # why its state is not Adam's; None: read, with ``note``
    note: str = ""
    # eps on the un-corrected √v (RAdam's form): the tf convention
    tf_eps: bool = False
    # its m and v are never bias-corrected (or stored already corrected): read with the divisors (1, 1)
    uncorrected: bool = False

    def uncorrected_in(self, group: dict) -> bool:
        """Whether a param group's m and v enter its step undivided (transformers' correct_bias=False too)."""
        return self.uncorrected or group.get("correct_bias") is False


def _keys(*k: str) -> frozenset[str]:
    return frozenset(k)


_LEAVES_OUT = "update statistics are Adam's m̂/(√v̂+eps) step without it"

# Most specific first: the first that matches names the state.
LOOKALIKES: tuple[LookAlike, ...] = (
    LookAlike(
        "Adan",
        _keys("exp_avg_diff", "neg_pre_grad", "pre_grad"),
        _keys("no_prox"),
        refuse="three betas; its v averages (g + β2·(g − g_prev))², not g², and its step adds a gradient-difference "
        "term",
    ),
    LookAlike(
        "LaProp",
        _keys("exp_avg_lr_1", "exp_avg_lr_2"),
        refuse="its m averages g/√v (the step is lr·m̂), so m̂/(√v̂+eps) is not its update",
    ),
    LookAlike(
        "MARS",
        _keys("last_grad"),
        _keys("mars_type"),
        refuse="its v averages the square of a variance-reduced gradient (g + γ·β1/(1−β1)·(g − g_prev)), not of g",
    ),
    LookAlike(
        "ADOPT",
        group_keys=_keys("clip_exp"),
        refuse="its m averages g/max(√v_prev, eps) and the step is lr·m: Adam's m̂/(√v̂+eps) is not its update",
    ),
    LookAlike(
        "Yogi",
        group_keys=_keys("initial_accumulator"),
        refuse="its v moves additively (v − (1−β2)·sign(v − g²)·g²), not as a decaying average of g², so it does not "
        "collapse the way Adam's does",
    ),
    LookAlike(
        "RangerVA",
        group_keys=_keys("transformer", "grad_transformer", "smooth"),
        refuse="its denominator is a softplus of √v̂ (a smooth floor), not √v̂ + eps",
    ),
    LookAlike(
        "Adafactor (timm AdafactorBigVision)",
        _keys("exp_avg_sq_r", "exp_avg_sq_c"),
        _keys("beta2_cap", "decay_offset"),
        refuse="a factored second moment with its own decay schedule (1 − t^−0.8, capped), not Adam's v",
    ),
    LookAlike(
        "GaLore",
        _keys("projector"),
        _keys("update_proj_gap", "proj_type"),
        refuse="the m and v of its projected parameters are of a rank-r projection of the gradient "
        "(GaLoreProjector), not of the parameter's elements",
    ),
    LookAlike(
        "AdamW (transformers' legacy)",
        # transformers.AdamW (removed in transformers 4.x; BERT-era fine-tuning code), and the copies of it
        group_keys=_keys("correct_bias"),
        note="transformers' legacy AdamW: eps is added to the un-corrected √v (compared in the tf convention) "
        "and, where correct_bias=False, m and v are not bias-corrected (read so)",
        tf_eps=True,
    ),
    LookAlike(
        "AdaMod",
        _keys("exp_avg_lr"),
        _keys("beta3"),
        note="AdaMod: each element's step lr/(√v̂+eps) is capped by its own running average (β3), so a collapsing v "
        f"raises the step only as fast as that average follows; {_LEAVES_OUT}",
        tf_eps=True,  # torch-optimizer: eps on the un-corrected √v, step lr·√(1-β2^t)/(1-β1^t)
    ),
    LookAlike(
        "AdaBound",
        group_keys=_keys("final_lr", "amsbound"),
        note="AdaBound: each element's step lr/(√v̂+eps) is clipped into bounds that converge to final_lr (SGD), so "
        f"a collapsed v cannot push it past them; {_LEAVES_OUT}",
        tf_eps=True,  # torch-optimizer: eps on the un-corrected √v, step lr·√(1-β2^t)/(1-β1^t)
    ),
    LookAlike(
        "diffGrad",
        _keys("previous_grad"),
        note=f"diffGrad: the step is scaled by a friction sigmoid(|g_prev − g|) in (0.5, 1); {_LEAVES_OUT}",
        tf_eps=True,  # torch-optimizer: eps on the un-corrected √v, step lr·√(1-β2^t)/(1-β1^t)
    ),
    LookAlike(
        "LAMB (torch-optimizer)",
        _keys("trust_ratio", "adam_norm", "weight_norm"),
        note="torch-optimizer's LAMB: each tensor's step is rescaled by its trust ratio ‖w‖/‖update‖ (bounded by "
        "lr·‖w‖, so a collapsed v does not blow it up as in Adam), and m and v are not bias-corrected unless "
        f"debias=True (not recorded; read as its default, uncorrected); {_LEAVES_OUT}",
        uncorrected=True,
    ),
    LookAlike(
        "LAMB",
        # timm's Lamb (trust_clip...); DeepSpeed's FusedLamb (max_coeff/min_coeff); apex's FusedLAMB and the copies
        # of NVIDIA's (grad_averaging with max_grad_norm; apex's old FusedAdam has max_grad_norm alone)
        group_keys=_keys("trust_clip", "always_adapt", "max_coeff", "min_coeff"),
        group_sets=(_keys("grad_averaging", "max_grad_norm"),),
        note="LAMB: each tensor's step is rescaled by its trust ratio ‖w‖/‖update‖ (bounded by lr·‖w‖, so a "
        f"collapsed v does not blow it up as in Adam); {_LEAVES_OUT}",
    ),
    LookAlike(
        "AdamP",
        group_keys=_keys("wd_ratio"),
        note="AdamP: for scale-invariant weights the step's radial component is projected out (and weight decay "
        f"scaled by wd_ratio); {_LEAVES_OUT}",
    ),
    LookAlike(
        "QHAdam",
        _keys("beta1_weight", "beta2_weight"),
        _keys("nus"),
        note="QHAdam (quasi-hyperbolic): its step mixes g into m̂ and g² into v̂ by nus = (ν1, ν2) (ν = (1, 1) is "
        "Adam); its m and v are stored already unbiased (normalized by their summed weights), read as such; "
        f"{_LEAVES_OUT}",
        uncorrected=True,
    ),
    LookAlike(
        "Ranger (RAdam, Lookahead)",
        _keys("slow_buffer"),
        _keys("N_sma_threshhold", "n_sma_threshhold"),
        note="Ranger: RAdam (eps on the un-corrected √v; momentum SGD until its rectification term is defined) "
        "whose weights are pulled every k steps toward a slow copy (Lookahead); "
        f"{_LEAVES_OUT}",
        tf_eps=True,
    ),
    LookAlike(
        "RAdam",
        # torch-optimizer's and older implementations: the rectification cache in the group
        group_keys=_keys("buffer"),
        note="RAdam: eps on the un-corrected √v (compared in the tf convention); its step divides by √v̂ only once "
        "the rectification term is defined (ρ_t > 4-5), momentum SGD before",
        tf_eps=True,
    ),
    LookAlike(
        "SWATS",
        _keys("exp_avg2"),
        _keys("phase"),
        note="SWATS: Adam until it switches to SGD (its phase is in the param group); "
        f"{_LEAVES_OUT} once it has switched",
        tf_eps=True,  # torch-optimizer: eps on the un-corrected √v, step lr·√(1-β2^t)/(1-β1^t)
    ),
    LookAlike(
        "NAdam",
        # timm's NAdamLegacy (Keras' schedule): torch's NAdam keeps mu_product / momentum_decay instead
        _keys("m_schedule"),
        _keys("schedule_decay"),
        note="NAdam: √v̂ and eps mean what they mean for Adam (its denominator is √v̂+eps); update statistics use "
        "Adam's m̂ numerator, not NAdam's momentum-scheduled one",
    ),
)

_RANGER_QH = LookAlike(
    "RangerQH (QHAdam, Lookahead)",
    note="RangerQH: QHAdam (its step mixes g into m̂ and g² into v̂ by nus; m and v stored already unbiased, read as "
    f"such) whose weights are pulled every k steps toward a slow copy (Lookahead); {_LEAVES_OUT}",
    uncorrected=True,
)
_SWATS_SGD = LookAlike("SWATS", refuse="it has switched to SGD (phase SGD): its step no longer divides by √v̂")
_NOVOGRAD = LookAlike(
    "NovoGrad",
    refuse="one second moment per tensor (an average of ‖g‖²), not one per element",
)


# every name identify() can give (replay refuses them all)
NAMES = frozenset(x.name for x in (*LOOKALIKES, _RANGER_QH, _SWATS_SGD, _NOVOGRAD))


def _is_tensor(x: Any) -> bool:
    """A tensor (duck-typed: this module imports no torch); a torchao LowBitTensor's numel is no method."""
    return callable(getattr(x, "numel", None)) and hasattr(x, "shape")


def identify(osd: dict) -> LookAlike | None:
    """The look-alike an optimizer state dict was written by, else None (Adam's own, or nothing known)."""
    states = [st for st in osd.get("state", {}).values() if isinstance(st, dict)]
    if not any("exp_avg" in st and "exp_avg_sq" in st for st in states):
        return None  # not Adam-shaped at all: the caller names what it is
    for st in states:
        # the stored items only: a reader's lazy state (bnb, torchao) would dequantize its moments on .get()
        m: Any = dict.get(st, "exp_avg")
        v: Any = dict.get(st, "exp_avg_sq")
        if _is_tensor(m) and _is_tensor(v) and v.numel() == 1 and m.numel() > 1:
            return _NOVOGRAD  # timm's NvNovoGrad, torch-optimizer's NovoGrad: v is a per-tensor scalar
    state_keys = {str(k) for st in states for k in st}
    group_keys = {str(k) for g in osd.get("param_groups", []) if isinstance(g, dict) for k in g}
    for la in LOOKALIKES:
        if la.state_keys & state_keys or la.group_keys & group_keys or any(s <= group_keys for s in la.group_sets):
            if la.name == "QHAdam" and "slow_buffer" in state_keys:
                return _RANGER_QH
            if la.name == "SWATS" and any(
                isinstance(g, dict) and str(g.get("phase", "")).upper() == "SGD" for g in osd.get("param_groups", [])
            ):
                return _SWATS_SGD
            return la
    return None


def caution_note(osd: dict) -> str | None:
    """timm's cautious optimizers (caution=True: C-AdamW, C-Lion...): the update is masked where it disagrees in sign
    with the gradient."""
    if any(isinstance(g, dict) and g.get("caution") is True for g in osd.get("param_groups", [])):
        return (
            "cautious update (timm caution=True): elements whose step disagrees in sign with the gradient are masked "
            "(and the rest rescaled); update statistics are Adam's step without the mask"
        )
    return None
