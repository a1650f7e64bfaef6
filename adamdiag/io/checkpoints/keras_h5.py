"""Keras HDF5 *model* files — ``model.save("model.h5")`` — with the optimizer saved in them, via h5py.

This is what tf.keras 2 wrote by default for a ``.h5`` path (``ModelCheckpoint("ckpt-{epoch}.h5")``, the
TF2-era tutorials) and what Keras 3 still writes as its "legacy" format for one (MLflow's Keras autolog
saves its checkpoints this way). Unlike Keras 3's ``.weights.h5``, the slots here are *named*:

* ``training_config`` (root attribute, JSON): ``optimizer_config`` = the optimizer's class and
  ``get_config()`` — β1, β2, eps, amsgrad, weight decay, the learning rate (a value or a schedule);
* ``optimizer_weights`` (group, attribute ``weight_names`` in the optimizer's order), one of three
  naming schemes:

  - Keras 3: ``<opt>/iteration``, ``<opt>/learning_rate``, ``<opt>/<var path, '/'→'_'>_momentum``,
    ``…_velocity``, ``…_velocity_hat`` (amsgrad);
  - tf.keras 2 (``tf_keras``, TF ≥ 2.11 optimizer): ``iteration:0``, ``<Opt>/m/<var>:0``,
    ``<Opt>/v/<var>:0``, ``<Opt>/vhat/<var>:0``;
  - tf.keras 2 ``optimizers.legacy`` (and TF ≤ 2.10's default): ``<Opt>/iter:0``, ``<Opt>/<var>/m:0``,
    ``…/v:0``, ``…/vhat:0``;

* ``model_weights/<layer>`` (attribute ``weight_names``): the model's variables, by the names the slots
  point at — so every tensor is named and its parameter found (replay needs it), with no shape guessing.

Keras' Adam adds eps to √v (not √v̂): the "tf" convention, as for every Keras/TF layout.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from adamdiag.errors import InputError
from adamdiag.io.checkpoints.keras import (
    ADAM_CLASSES,
    KERAS_DEFAULTS,
    config_hyper,
    entry_hyper,
    schedule_lr,
    unwrap_loss_scale,
)

# A slot's name in each scheme -> (kind, the variable it belongs to, as the model's weight_names spell it
# up to the scheme's own transformation). Kinds: m, v, vhat.
# (Keras 3 under a LossScaleOptimizer: loss_scale_optimizer/adam/<path_>_momentum; tf.keras's: m/<var>:0, no prefix)
_KERAS3 = re.compile(r"^(?:[^/]+/)+(?P<var>[^/]+)_(?P<kind>momentum|velocity_hat|velocity)$")
_TFKERAS = re.compile(r"^(?:[^/]+/)?(?P<kind>m|v|vhat)/(?P<var>.+):\d+$")
_LEGACY = re.compile(r"^[^/]+/(?P<var>.+)/(?P<kind>m|v|vhat):\d+$")
_KIND = {"momentum": "m", "velocity": "v", "velocity_hat": "vhat", "m": "m", "v": "v", "vhat": "vhat"}
_STEP_NAMES = re.compile(r"^(?:[^/]+/)?(?:iteration|iter|iterations)(?::\d+)?$")
LSO = "__loss_scale_optimizer__"  # set in an optimizer config unwrapped from a LossScaleOptimizer


def is_model_file(f: Any) -> bool:
    """An HDF5 file laid out as a Keras model file (``model_weights``/``optimizer_weights`` groups, or the
    root-level layer groups of a tf.keras ``save_weights("….h5")``), not Keras 3's ``.weights.h5``."""
    return "optimizer/vars" not in f and ("optimizer_weights" in f or "model_weights" in f or "layer_names" in f.attrs)


def _text(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _names(attrs: Any, key: str = "weight_names") -> list[str]:
    return [_text(n) for n in np.asarray(attrs.get(key, [])).reshape(-1)]


def _optimizer_config(f: Any, path: Path) -> tuple[str, dict[str, Any]]:
    """(class name without Keras' registration prefix, its config) from ``training_config``."""
    raw = f.attrs.get("training_config")
    if raw is None:
        raise InputError(
            f"{path}: a Keras HDF5 model file saved without its optimizer (no training_config: the model was not "
            "compiled, or saved with include_optimizer=False): no Adam moments to inspect"
        )
    try:
        opt = json.loads(_text(raw)).get("optimizer_config") or {}
    except (ValueError, AttributeError):
        raise InputError(f"{path}: a Keras HDF5 model file whose training_config is not JSON") from None
    cls, cfg, wrapper = unwrap_loss_scale(str(opt.get("class_name") or ""), dict(opt.get("config") or {}))
    return cls, ({**cfg, LSO: wrapper} if wrapper else cfg)


def _model_weights(f: Any) -> dict[str, str]:
    """The model's variables: weight name (as the optimizer's slots spell it, ``:0`` dropped) -> h5 path."""
    mw = f["model_weights"] if "model_weights" in f else None
    if mw is None:
        return {}
    out: dict[str, str] = {}
    for layer in _names(mw.attrs, "layer_names"):
        if layer not in mw:
            continue
        for w in _names(mw[layer].attrs):
            if f"{layer}/{w}" in mw:
                out[re.sub(r":\d+$", "", w)] = f"model_weights/{layer}/{w}"
    return out


def _slots(names: list[str], inner: str | None = None) -> tuple[str, dict[str, dict[str, str]], str | None]:
    """(scheme, {variable: {kind: slot name}} in the optimizer's order, the step slot) of ``weight_names``;
    ``inner``: the name of an optimizer a LossScaleOptimizer wraps, whose own iteration count is the step (the
    wrapper's may stay 0)."""
    steps = [n for n in names if _STEP_NAMES.match(n)]
    own = [n for n in steps if inner and n.split("/", 1)[0] == inner]
    step = (own or steps)[0] if own or steps else None
    rest = [n for n in names if n != step]
    for scheme, rx in (("keras3", _KERAS3), ("tf.keras", _TFKERAS), ("tf.keras legacy", _LEGACY)):
        found: dict[str, dict[str, str]] = {}
        for n in rest:
            m = rx.match(n)
            if m:
                found.setdefault(m["var"], {})[_KIND[m["kind"]]] = n
        if found and all({"m", "v"} <= set(k) for k in found.values()):
            return scheme, found, step
    return "", {}, step


def _lr(ocfg: dict[str, Any], step: int, stored: float | None, warnings: list[str]) -> float | None:
    """The learning rate the next update would use: a plain value, a built-in schedule at ``step``, or
    tf.keras' legacy ``decay`` (lr / (1 + decay·t))."""
    lr = ocfg.get("learning_rate", ocfg.get("lr"))
    if isinstance(lr, dict):
        # Keras 3 wraps a schedule as {"module", "class_name", "config"}; tf.keras as {"class_name", "config"}
        got = schedule_lr(lr, step)
        what = f"a {lr.get('class_name') or 'custom'} schedule"
        if got is not None:
            warnings.append(f"learning rate from {what} in training_config, at step {step}: {got:.6g}")
            return got
        if stored is not None:
            return stored
        warnings.append(f"learning rate is {what} (not stored as a value): lr unknown")
        return None
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr):
        return stored
    decay = ocfg.get("decay")
    if isinstance(decay, (int, float)) and decay > 0:
        warnings.append(f"legacy optimizer decay={decay:g}: learning rate at step {step} is lr/(1+decay·t)")
        return float(lr) / (1.0 + float(decay) * step)
    return float(lr)


def open_keras_model_file(f: Any, path: Path):
    """An opened HDF5 Keras model file (``f``: an open ``h5py.File``) as an OptimizerCheckpoint."""
    from adamdiag.io.checkpoints import OptimizerCheckpoint, _Entry
    from adamdiag.io.checkpoints.tf import _torch, f32

    if "optimizer_weights" not in f:
        if "model_weights" not in f:
            raise InputError(
                f"{path}: a Keras weights-only HDF5 file (save_weights): no optimizer state in it; "
                "save the model (model.save) or a tf.train.Checkpoint of model and optimizer"
            )
        _optimizer_config(f, path)  # says "saved without its optimizer" when that is why
        raise InputError(f"{path}: a Keras HDF5 model file without optimizer_weights: no Adam moments to inspect")
    cls, ocfg = _optimizer_config(f, path)
    if cls and cls not in ADAM_CLASSES:
        raise InputError(f"{path}: optimizer is Keras {cls}, not Adam/AdamW (no Adam moments to inspect)")
    ow = f["optimizer_weights"]
    names = _names(ow.attrs)
    wrapped = ocfg.pop(LSO, None)
    scheme, slots, step_name = _slots(names, str(ocfg.get("name") or "") if wrapped else None)
    if not slots:
        raise InputError(
            f"{path}: optimizer_weights ({len(names)} tensors) are not named like a Keras Adam's slots "
            "(…_momentum/_velocity, Adam/m|v/…, Adam/…/m|v): an unsupported Keras version (standalone Keras ≤ 2.3 "
            "stored unnamed slots)"
        )
    warnings: list[str] = []
    if wrapped:
        warnings.append(f"a {wrapped} (mixed precision) wraps the optimizer: its inner {cls or 'optimizer'} read")
    step = int(np.asarray(ow[step_name]).reshape(-1)[0]) if step_name and step_name in ow else None
    if step is None:
        raise InputError(f"{path}: no iteration count among optimizer_weights: the step is unknown")
    accum = ocfg.get("gradient_accumulation_steps")
    if isinstance(accum, int) and accum > 1:  # Keras 3 counts batches there; the bias correction uses updates
        step //= accum
    lr_name = next((n for n in names if re.match(r"^[^/]+/learning_rate$", n)), None)
    stored = f32(np.asarray(ow[lr_name]).reshape(-1)[0]) if lr_name and lr_name in ow else None
    lr = _lr(ocfg, step, stored, warnings)
    stated, wd = config_hyper(ocfg)
    hyper: dict[str, Any] = {**KERAS_DEFAULTS, **stated}
    sources = {"lr": "unknown" if lr is None else "file"}
    sources.update({k: "file" if k in stated else "default" for k in KERAS_DEFAULTS})
    defaulted = [k for k, s in sources.items() if s == "default"]
    if defaulted:
        warnings.append(
            f"{', '.join(defaulted)} not in training_config: Keras defaults assumed (β1=0.9, β2=0.999, eps=1e-7)"
        )
    sources["weight_decay"] = "file"
    amsgrad = bool(ocfg.get("amsgrad")) or any("vhat" in k for k in slots.values())

    weights = _model_weights(f)
    if scheme == "keras3":  # slots spell the variable's path with '/' -> '_'
        by_flat: dict[str, list[str]] = {}
        for w in weights:
            by_flat.setdefault(w.replace("/", "_"), []).append(w)
        resolve = {v: (by_flat[v][0] if len(by_flat.get(v, [])) == 1 else None) for v in slots}
    else:
        resolve = {v: (v if v in weights else None) for v in slots}
    unnamed = [v for v, w in resolve.items() if w is None]
    if unnamed:
        warnings.append(
            f"{len(unnamed)} optimizer slot(s) match no model weight by name (e.g. {unnamed[0]!r}): named by the slot; "
            "replay can't start them"
        )
    entries = []
    for i, (var, kinds) in enumerate(slots.items()):
        shape = tuple(ow[kinds["m"]].shape)
        if tuple(ow[kinds["v"]].shape) != shape:
            raise InputError(f"{path}: the m and v slots of {var!r} differ in shape: not an Adam state")
        entries.append(
            _Entry(
                group=0,
                index=i,
                pos=i,
                name=resolve[var] or var,
                shape=shape,
                hyper=entry_hyper(lr, hyper, wd, amsgrad, cls, sources),
            )
        )
    ck = OptimizerCheckpoint(
        path=str(path),
        step=step,
        layout="keras-h5",
        optimizer=cls or "Adam",
        convention="tf",
        name_mapping="slot-names",
        warnings=warnings,
        entries=entries,
    )
    order = list(slots.values())

    def state(e: Any) -> dict[str, Any]:
        kinds = order[e.index]
        st = {"exp_avg": _torch(np.array(ow[kinds["m"]])), "exp_avg_sq": _torch(np.array(ow[kinds["v"]])), "step": step}
        if "vhat" in kinds:
            st["max_exp_avg_sq"] = _torch(np.array(ow[kinds["vhat"]]))
        return st

    params = {name: weights[name] for v in slots if (name := resolve[v]) is not None}
    ck._fetch_state = state
    ck._fetch_param = lambda name: _torch(np.array(f[params[name]])) if name in params else None
    if step == 0:  # HDF5 data carry no checksum: an iteration count damaged to 0 shows in m/v that are not 0
        from adamdiag.io.checkpoints import moments_without_a_step

        damaged = moments_without_a_step(ck, ck.stateful_entries(), "HDF5 datasets")
        if damaged:
            warnings.append(damaged)
    return ck
