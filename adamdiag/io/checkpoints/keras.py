"""Keras 3 ``.weights.h5`` and ``.keras`` files (a zip of ``config.json`` + ``model.weights.h5``), via h5py.
(HDF5 *model* files, ``model.save("….h5")``, are read by :mod:`adamdiag.io.checkpoints.keras_h5`.)

Layout (Keras 3): ``optimizer/vars/<k>`` in the optimizer's variable order — ``iterations``, the
learning rate (absent with a schedule), then, when enabled, one gradient accumulator and one EMA copy
per trainable variable, then m and v interleaved per variable (``adam/<var>_momentum``,
``…_velocity``), then one v̂ per variable with amsgrad. Model weights sit under
``layers/<class-based name>/vars/<j>`` (``dense``, ``dense_1``, … — not the layer's own name). No
variable names are stored; β1/β2/eps only in the ``.keras`` file's ``config.json``.

So slots are found by *shape*, not by fixed index arithmetic: every layout the optimizer can have
(header of 1 or 2 scalars, 0–2 per-variable blocks before the pairs, a trailing v̂ block) is tried,
and kept when each m has its v's shape and every block repeats the variables' shapes; the config's
flags (schedule, amsgrad, EMA, accumulation) narrow the choice. Two layouts that fit but pair
different tensors are refused as ambiguous. Names: from ``config.json`` (layer names in model order,
matched to the slot shapes as an ordered subsequence, used only when that match is unique), else
the stable labels ``trainable_variable_<i>``.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from adamdiag.errors import InputError
from adamdiag.io.filekind import ZIP_DAMAGE

KERAS_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7}
ADAM_CLASSES = ("Adam", "AdamW")
# Variable names of common layers, in creation order (config flag that drops the optional ones).
LAYER_VARS: dict[str, list[tuple[str, str | None]]] = {
    "Dense": [("kernel", None), ("bias", "use_bias")],
    "EinsumDense": [("kernel", None), ("bias", None)],
    "Conv1D": [("kernel", None), ("bias", "use_bias")],
    "Conv2D": [("kernel", None), ("bias", "use_bias")],
    "Conv3D": [("kernel", None), ("bias", "use_bias")],
    "Embedding": [("embeddings", None)],
    "LayerNormalization": [("gamma", "scale"), ("beta", "center")],
    "BatchNormalization": [("gamma", "scale"), ("beta", "center"), ("moving_mean", None), ("moving_variance", None)],
}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise InputError("reading Keras .keras/.weights.h5 files needs h5py: pip install 'adamdiag[keras]'") from None
    return h5py


def entry_hyper(
    lr: float | None, hyper: dict[str, Any], wd: float, amsgrad: bool, cls: str | None, sources: dict[str, str]
) -> dict[str, Any]:
    """A Keras Adam tensor's hyperparameters as the checkpoint readers hand them on (lr None: unknown, NaN)."""
    return {
        "lr": math.nan if lr is None else lr,
        "beta1": hyper["beta1"],
        "beta2": hyper["beta2"],
        "eps": hyper["eps"],
        "weight_decay": wd,
        "amsgrad": amsgrad,
        "decoupled_weight_decay": cls == "AdamW" if cls else None,
        "sources": sources,
        "bias": None,
    }


def unwrap_loss_scale(cls: str, cfg: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    """(class, config, the wrapper's class or None) of the optimizer that does the updates: under mixed precision
    compile() wraps it in a LossScaleOptimizer (Keras 3; tf.keras' LossScaleOptimizerV3), whose config holds it as
    ``inner_optimizer``. Registration prefixes (``Custom>Adam``) are dropped.

    >>> unwrap_loss_scale("LossScaleOptimizer", {"inner_optimizer": {"class_name": "Adam", "config": {"epsilon": 1e-6}}})
    ('Adam', {'epsilon': 1e-06}, 'LossScaleOptimizer')
    """
    cls = cls.rsplit(">", 1)[-1]
    inner = cfg.get("inner_optimizer")
    if cls.startswith("LossScaleOptimizer") and isinstance(inner, dict):
        return str(inner.get("class_name") or "").rsplit(">", 1)[-1], dict(inner.get("config") or {}), cls
    return cls, cfg, None


def config_hyper(ocfg: dict[str, Any]) -> tuple[dict[str, float], float]:
    """β1/β2/eps a Keras optimizer config states as finite numbers (β as the float32 value's shortest decimal:
    tf.keras' legacy configs hold 0.8999999761581421 for the 0.9 the user wrote), and its weight decay (0 when
    null) — for the model files and SavedModels whose config is JSON next to the state.

    >>> config_hyper({"beta_1": 0.8999999761581421, "beta_2": 0.999, "epsilon": 1e-6, "weight_decay": None})
    ({'beta1': 0.9, 'beta2': 0.999, 'eps': 1e-06}, 0.0)
    """
    from adamdiag.io.checkpoints.tf import f32

    out: dict[str, float] = {}
    for k, key in (("beta1", "beta_1"), ("beta2", "beta_2"), ("eps", "epsilon")):
        val = ocfg.get(key)
        if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val):
            out[k] = float(val) if k == "eps" else f32(val)
    wd = ocfg.get("weight_decay")
    return out, float(wd) if isinstance(wd, (int, float)) and not isinstance(wd, bool) else 0.0


def snake(name: str) -> str:
    """Keras' ``naming.to_snake_case`` (how ``.weights.h5`` names layer groups)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layers_in_order(config: dict) -> list[dict]:
    """Top-level layers of a Sequential/Functional config, InputLayers left out (they hold no vars)."""
    layers = (config.get("config") or {}).get("layers") or []
    return [lay for lay in layers if lay.get("class_name") != "InputLayer"]


def _optimizer_config(config: dict | None) -> tuple[str | None, dict]:
    if not config:
        return None, {}
    opt = (config.get("compile_config") or {}).get("optimizer")
    if isinstance(opt, dict):
        cls, cfg, _ = unwrap_loss_scale(str(opt.get("class_name") or ""), dict(opt.get("config") or {}))
        return cls or None, cfg
    return None, {}


def layouts(shapes: list[tuple], dtypes: list[str]) -> list[dict[str, Any]]:
    """Every Keras 3 optimizer layout the variable shapes fit: dicts with ``header`` (1: iterations;
    2: + learning rate), ``pre`` (per-variable blocks before the pairs: accumulators/EMA), ``amsgrad``
    and the slot indices ``m``, ``v``, ``vhat`` per trainable variable."""
    out: list[dict[str, Any]] = []
    if not shapes or shapes[0] != () or not dtypes[0].startswith(("int", "uint")):
        return out
    for header in (1, 2):
        if header == 2 and (len(shapes) < 2 or shapes[1] != () or not dtypes[1].startswith("float")):
            continue
        rest = len(shapes) - header
        for pre in (0, 1, 2):
            for ams in (False, True):
                per = 2 + pre + int(ams)
                if rest <= 0 or rest % per:
                    continue
                n = rest // per
                base = header + pre * n
                m = [base + 2 * i for i in range(n)]
                v = [base + 2 * i + 1 for i in range(n)]
                vh = [base + 2 * n + i for i in range(n)] if ams else []
                var_shapes = [shapes[k] for k in m]
                ok = all(shapes[a] == shapes[b] for a, b in zip(m, v))
                ok = ok and all(shapes[header + b * n + i] == var_shapes[i] for b in range(pre) for i in range(n))
                ok = ok and all(shapes[k] == var_shapes[i] for i, k in enumerate(vh))
                if ok:
                    out.append({"header": header, "pre": pre, "amsgrad": ams, "m": m, "v": v, "vhat": vh})
    return out


def count_embeddings(slots: list[tuple], cands: list[tuple], cap: int = 2) -> tuple[int, list[int] | None]:
    """How many ways (up to ``cap``) the slot shapes embed in the candidates' shapes as an ordered
    subsequence (the optimizer's trainables among all model variables), and the first way."""
    n, k = len(slots), len(cands)
    # ways[i][j]: embeddings of slots[i:] into cands[j:] (capped)
    ways = [[0] * (k + 1) for _ in range(n + 1)]
    for j in range(k + 1):
        ways[n][j] = 1
    for i in range(n - 1, -1, -1):
        for j in range(k - 1, -1, -1):
            w = ways[i][j + 1] + (ways[i + 1][j + 1] if slots[i] == cands[j] else 0)
            ways[i][j] = min(w, cap)
    if ways[0][0] == 0:
        return 0, None
    pick, j = [], 0
    for i in range(n):
        while not (slots[i] == cands[j] and ways[i + 1][j + 1] > 0):
            j += 1
        pick.append(j)
        j += 1
    return ways[0][0], pick


def schedule_lr(sched: dict, step: int) -> float | None:
    """The learning rate a Keras 3 schedule gives at ``step`` (what the optimizer's next update uses:
    ``schedule(iterations)``), for the built-in schedules whose formula is fixed; None otherwise."""
    c = sched.get("config") or {}
    name = sched.get("class_name")
    try:
        if name in ("ExponentialDecay", "InverseTimeDecay"):
            p = step / c["decay_steps"]
            p = math.floor(p) if c.get("staircase") else p
            lr0, rate = c["initial_learning_rate"], c["decay_rate"]
            return float(lr0 * rate**p if name == "ExponentialDecay" else lr0 / (1 + rate * p))
        if name == "PiecewiseConstantDecay":
            bounds, values = c["boundaries"], c["values"]
            return float(next((v for b, v in zip(bounds, values) if step <= b), values[-1]))
        if name == "PolynomialDecay":
            steps, end, power = c["decay_steps"], c.get("end_learning_rate", 1e-4), c.get("power", 1.0)
            if c.get("cycle"):
                steps = steps * max(math.ceil(step / steps), 1)
            t = min(step, steps)
            return float((c["initial_learning_rate"] - end) * (1 - t / steps) ** power + end)
        if name == "CosineDecay" and not c.get("warmup_steps"):
            t = min(step, c["decay_steps"])
            alpha = c.get("alpha", 0.0)
            return float(
                c["initial_learning_rate"]
                * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t / c["decay_steps"])) + alpha)
            )
    except (KeyError, TypeError, ZeroDivisionError, ValueError):
        return None
    return None


def _model_vars(f, config: dict) -> list[tuple[str, str]] | None:
    """(name, h5 dataset path) of the model's variables in model order, from config.json's layers;
    None when the file's groups do not follow (nested models, custom saving)."""
    used: dict[str, int] = {}
    out = []
    for lay in _layers_in_order(config):
        cls = lay.get("class_name", "")
        key = snake(cls)
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        grp = f"layers/{key}/vars"
        lname = (lay.get("config") or {}).get("name", key)
        if f"layers/{key}" not in f:
            return None
        if grp not in f:
            continue
        ks = sorted(f[grp].keys(), key=int)
        known = [
            nm for nm, flag in LAYER_VARS.get(cls, []) if flag is None or (lay.get("config") or {}).get(flag, True)
        ]
        names = known if len(known) == len(ks) else [f"vars/{k}" for k in ks]
        out += [(f"{lname}/{nm}", f"{grp}/{k}") for nm, k in zip(names, ks)]
    return out


# What h5py / zipfile raise on a damaged file (HDF5's C errors surface as these), and a config.json
# of an unexpected shape: all turned into one line naming the file.
DAMAGE: tuple[type[BaseException], ...] = (*ZIP_DAMAGE, RuntimeError, TypeError, AttributeError)


def _damaged(path: Path, e: BaseException) -> InputError:
    msg = str(e).strip().strip("'").splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return InputError(f"{path}: damaged or not a Keras file ({msg})")


def open_keras(path: Path):
    """A Keras 3 ``.keras`` or ``.weights.h5`` file as an :class:`OptimizerCheckpoint`; reading its
    tensors later raises :class:`InputError` too when the file turns out damaged."""
    try:
        ck = _open_keras(Path(path))
    except InputError:
        raise
    except DAMAGE as e:
        raise _damaged(Path(path), e) from None
    fetch_state, fetch_param = ck._fetch_state, ck._fetch_param
    assert fetch_state is not None and fetch_param is not None

    def state(e: Any) -> dict[str, Any]:
        try:
            return fetch_state(e)
        except DAMAGE as err:
            raise _damaged(Path(path), err) from None

    def param(name: str) -> Any:
        try:
            return fetch_param(name)
        except DAMAGE as err:
            raise _damaged(Path(path), err) from None

    ck._fetch_state, ck._fetch_param = state, param
    return ck


def _open_keras(path: Path):
    from adamdiag.io.checkpoints import OptimizerCheckpoint, _Entry
    from adamdiag.io.checkpoints.tf import _torch, f32

    h5py = _h5py()
    path = Path(path)
    config = None
    warnings: list[str] = []
    try:
        if path.suffix == ".keras":
            try:
                zf = zipfile.ZipFile(path)
                config = json.loads(zf.read("config.json"))
                fobj = zf.open("model.weights.h5")
            except ZIP_DAMAGE as e:
                raise InputError(f"{path}: not a Keras 3 .keras file ({type(e).__name__}: {e})") from None
            f = h5py.File(fobj, "r")
        else:
            f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0][:120]})") from None

    if "optimizer/vars" not in f:
        from adamdiag.io.checkpoints.keras_h5 import is_model_file, open_keras_model_file

        if path.suffix != ".keras" and is_model_file(f):  # model.save("….h5"): named slots
            return open_keras_model_file(f, path)
        raise InputError(
            f"{path}: no optimizer state in it (neither Keras 3's optimizer/vars nor a model file's optimizer_weights: "
            "saved without the optimizer, or damaged)"
        )
    ov = f["optimizer/vars"]
    if "optimizer/inner_optimizer/vars" in f:
        # mixed precision: compile() wraps the optimizer in a LossScaleOptimizer, whose own vars (iterations that stay
        # 0, its loss scale...) come first; the Adam state is its inner optimizer's, saved on its own here
        ov = f["optimizer/inner_optimizer/vars"]
        warnings.append("a LossScaleOptimizer (mixed precision) wraps the optimizer: its inner optimizer's state read")
    keys = sorted(ov.keys(), key=int)
    shapes = [tuple(ov[k].shape) for k in keys]
    dtypes = [str(ov[k].dtype) for k in keys]
    cls, ocfg = _optimizer_config(config)
    if cls is not None and cls not in ADAM_CLASSES:
        raise InputError(f"{path}: optimizer is Keras {cls}, not Adam/AdamW (no Adam moments to inspect)")
    found = layouts(shapes, dtypes)
    if ocfg:  # the config's flags say which layout it is
        schedule = isinstance(ocfg.get("learning_rate"), dict)
        pre = int(bool(ocfg.get("use_ema"))) + int(bool(ocfg.get("gradient_accumulation_steps")))
        found = [
            lay
            for lay in found
            if lay["header"] == (1 if schedule else 2)
            and lay["pre"] == pre
            and lay["amsgrad"] == bool(ocfg.get("amsgrad"))
        ]
    if not found:
        raise InputError(
            f"{path}: optimizer/vars ({len(keys)} tensors) fit no Keras Adam layout (iterations, lr, m/v pairs "
            "of equal shape, v̂ with amsgrad): not a Keras 3 Adam state"
        )
    assign = {(tuple(lay["m"]), tuple(lay["v"]), tuple(lay["vhat"])) for lay in found}
    if len(assign) > 1:
        raise InputError(
            f"{path}: the optimizer's {len(keys)} variables fit {len(found)} Keras Adam layouts that pair different "
            "tensors (lr schedule / amsgrad / EMA unknown without config.json): refusing to guess; "
            "inspect the .keras file instead"
        )
    lay = found[0]
    n = len(lay["m"])
    step = int(np.asarray(ov[keys[0]]).reshape(-1)[0])
    # With gradient accumulation vars/0 counts batches; Keras' step (its `iterations`, which the
    # bias correction uses) is that // the accumulation steps.
    accum = int(ocfg.get("gradient_accumulation_steps") or 0) if ocfg else 0
    if accum > 1:
        step //= accum
    elif lay["pre"] and not ocfg:
        warnings.append(
            f"{lay['pre']} per-variable block(s) before m/v (EMA copies or gradient accumulators; which is not "
            "stored without config.json): with gradient accumulation the step counts batches, not updates"
        )
    lr = f32(np.asarray(ov[keys[1]]).reshape(-1)[0]) if lay["header"] == 2 else None
    hyper: dict[str, Any] = {"lr": lr}
    sources = {"lr": "file" if lr is not None else "unknown"}
    for k, ck_key in (("beta1", "beta_1"), ("beta2", "beta_2"), ("eps", "epsilon")):
        if ck_key in ocfg and ocfg[ck_key] is not None:
            hyper[k], sources[k] = float(ocfg[ck_key]), "file"
        else:
            hyper[k], sources[k] = KERAS_DEFAULTS[k], "default"
    if lr is None:
        sched = ocfg.get("learning_rate", {}) if ocfg else {}
        what = f"a {sched.get('class_name')} schedule" if isinstance(sched, dict) and sched else "a schedule"
        lr = schedule_lr(sched, step) if isinstance(sched, dict) else None
        if lr is not None:
            hyper["lr"], sources["lr"] = lr, "file"
            warnings.append(f"learning rate from {what} in config.json, at step {step}: {lr:.6g}")
        else:
            warnings.append(f"learning rate is {what} (not stored as a value): lr unknown")
    defaulted = [k for k, s in sources.items() if s == "default"]
    if defaulted:
        warnings.append(
            f"{', '.join(defaulted)} not stored in a .weights.h5 file: Keras defaults assumed "
            "(β1=0.9, β2=0.999, eps=1e-7: the .keras file has the real ones; or --assume-beta2/--assume-eps)"
        )
    wd = float(ocfg.get("weight_decay") or 0.0) if ocfg else 0.0
    sources["weight_decay"] = "file" if ocfg and "weight_decay" in ocfg else "default"

    # Names: config.json's layers matched to the slot shapes (unique ordered match only).
    slot_shapes = [shapes[k] for k in lay["m"]]
    names: list[str | None] = [None] * n
    params: list[str | None] = [None] * n
    mapping = "labels"
    if config is not None:
        mv = _model_vars(f, config)
        if mv is None:
            warnings.append("config.json's layers do not match the weight file's groups: tensors labelled by index")
        else:
            cnt, pick = count_embeddings(slot_shapes, [tuple(f[p].shape) for _, p in mv])
            if cnt == 1 and pick is not None:
                names = [mv[j][0] for j in pick]
                params = [mv[j][1] for j in pick]
                mapping = "config-shapes"
            else:
                why = "no" if cnt == 0 else "more than one"
                warnings.append(
                    f"{why} way to match the optimizer's slots to the model's variables by shape: labelled by index"
                )
    entries = [
        _Entry(
            group=0,
            index=i,
            pos=i,
            name=names[i] or f"trainable_variable_{i}",
            shape=slot_shapes[i],
            hyper=entry_hyper(lr, hyper, wd, lay["amsgrad"], cls, sources),
        )
        for i in range(n)
    ]
    ck = OptimizerCheckpoint(
        path=str(path),
        step=step,
        layout="keras",
        optimizer=cls or "Adam",
        convention="tf",
        name_mapping=mapping,
        warnings=warnings,
        entries=entries,
    )

    def read(k: int):
        return _torch(np.array(ov[keys[k]]))

    def state(e) -> dict[str, Any]:
        i = e.index
        st = {"exp_avg": read(lay["m"][i]), "exp_avg_sq": read(lay["v"][i]), "step": step}
        if lay["amsgrad"]:
            st["max_exp_avg_sq"] = read(lay["vhat"][i])
        return st

    by_name = {names[i]: params[i] for i in range(n) if names[i] and params[i]}
    ck._fetch_state = state
    ck._fetch_param = lambda name: _torch(np.array(f[by_name[name]])) if name in by_name else None
    if step == 0:  # HDF5 data carry no checksum: `iterations` damaged to 0 shows in m/v that are not 0
        from adamdiag.io.checkpoints import moments_without_a_step

        damaged = moments_without_a_step(ck, ck.stateful_entries(), "HDF5 datasets")
        if damaged:
            warnings.append(damaged)
    return ck
