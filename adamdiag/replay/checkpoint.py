"""Load a training checkpoint for replay: model weights, Adam/AdamW state and the step.

Files are loaded by the one safe loader of :mod:`adamdiag.io.checkpoints` (``torch_load``:
``weights_only=True``, arbitrary unpickling only with ``--trust-checkpoint`` and then with its
warning), then the optimizer state dict is found by content (a dict with ``state`` and
``param_groups``) and the model state dict by key or content, so the common layouts
(``{'model', 'optimizer', 'step'}``, Lightning's ``state_dict``/``optimizer_states``, ...) all work.
The step is read as inspect and scan read it (``io.checkpoints.resolve_steps``): the log step
(global_step & co) lines the replay up with the event files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError, missing_path, remote_location

if TYPE_CHECKING:
    import torch

    from adamdiag.io.checkpoints.hyper import Assumptions

_MODEL_KEYS = ("model", "model_state_dict", "state_dict", "model_state", "net", "module")
_OPTIM_KEYS = ("optimizer", "optimizer_state_dict", "optim", "opt", "optimizer_states")


@dataclass
class ReplayCheckpoint:
    """What replay needs from a checkpoint; tensors stay on the CPU and are never modified."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, Any]  # {"state": {id: {...}}, "param_groups": [...]}
    framework: str | None = None  # "lightning" (its logging convention differs), "hf", "accelerate", "dcp"
    optimizer_step: int | None = None  # Adam's own t (``step`` is the log step); None when not stored
    notes: list[str] = field(default_factory=list)  # step disagreement, assumed hyperparameters

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optim_state["param_groups"]


def _is_optim_sd(x: Any) -> bool:
    return isinstance(x, Mapping) and "state" in x and "param_groups" in x and isinstance(x["param_groups"], list)


def _is_tensor_map(x: Any) -> bool:
    import torch

    return (
        isinstance(x, Mapping)
        and len(x) > 0
        and all(isinstance(k, str) for k in x)
        and all(isinstance(v, torch.Tensor) for v in x.values())
    )


def _find(obj: Any, pred, keys: tuple[str, ...], depth: int = 3) -> Any:
    """Breadth-first: preferred keys first at each level, then any value matching ``pred``."""
    if pred(obj):
        return obj
    level = [obj]
    for _ in range(depth):
        nxt = []
        for o in level:
            if isinstance(o, Mapping):
                vals = [o[k] for k in keys if k in o] + [v for k, v in o.items() if k not in keys]
            elif isinstance(o, (list, tuple)):
                vals = list(o)
            else:
                continue
            for v in vals:
                if pred(v):
                    return v
                nxt.append(v)
        level = nxt
    return None


def _steps_of(raw: Any, optim: Mapping[str, Any], path: Path, notes: list[str]) -> tuple[int, int | None]:
    """(log step, optimizer step), read as inspect and scan read them (``io.checkpoints.resolve_steps``)."""
    from adamdiag.io.checkpoints import _as_int, find_step, resolve_steps

    opt_steps = [_as_int(st.get("step")) for st in optim["state"].values() if isinstance(st, Mapping)]
    log, opt = resolve_steps(find_step(raw), opt_steps, path, notes)
    if log is None:
        raise InputError(
            f"{path}: cannot tell the checkpoint's step (no 'step' key, no optimizer step, no number in the name)"
        )
    return log, opt


def _with_param_steps(optim: dict[str, Any], path: Path) -> dict[str, Any]:
    """The optimizer state with a ``step`` in every parameter's state, as torch.optim.Adam needs it.
    apex's, Transformer Engine's and DeepSpeed's FusedAdam (Megatron-LM's) keep one step per param group:
    copied into each of its parameters' states (copies; the loaded checkpoint is not changed). A group with
    bias correction turned off is refused: torch's Adam always corrects, so it would not be the run."""
    import torch

    groups = list(optim.get("param_groups", []))
    if any(g.get("bias_correction", True) is False for g in groups):
        raise InputError(
            f"{path}: a param group has bias_correction=False (a FusedAdam setting); replay re-runs "
            "torch.optim.Adam, which always corrects m and v, so it would not reproduce this run"
        )
    from adamdiag.io.checkpoints import _as_int

    state = dict(optim["state"])
    changed = False
    for g in groups:
        step = _as_int(g.get("step"))  # as inspect reads it: a group step that is no number is none
        if step is None:
            continue
        for pid in g.get("params", []):
            st = state.get(pid)
            if isinstance(st, Mapping) and "step" not in st:
                state[pid] = {**st, "step": torch.tensor(float(step))}
                changed = True
    if any(isinstance(st, Mapping) and "step" not in st for st in state.values()):
        raise InputError(
            f"{path}: a parameter's optimizer state has no step, in itself or in its param group; "
            "torch.optim.Adam cannot resume from it"
        )
    return {**optim, "state": state} if changed else optim


def load_replay_checkpoint(path: Path, *, trust: bool = False, assume: Assumptions | None = None) -> ReplayCheckpoint:
    """Read ``path`` (a file; a HF ``checkpoint-N/``, accelerate or torch.distributed.checkpoint
    directory) and check that it holds Adam/AdamW state; InputError with one line otherwise.
    ``assume`` (``--assume-*``) supplies an lr/β2/eps a param group lacks (a stored value wins)."""
    path = Path(path)
    if not path.exists():
        raise missing_path(path) if remote_location(path) else InputError(f"no such checkpoint: {path}")
    ck = _load_checkpoint_dir(path, trust) if path.is_dir() else _from_raw(path, _torch_load(path, trust))
    _refuse_other_optimizers(ck)
    _complete_groups(ck, assume)
    return ck


def _refuse_other_optimizers(ck: ReplayCheckpoint) -> None:
    """InputError naming the optimizer when the state is Adam-like but not torch.optim.Adam/AdamW's
    (NAdam, RAdam, SparseAdam, Adafactor with β1, Adam's look-alikes such as LAMB; bitsandbytes' and torchao's are
    refused on reading): replaying it with Adam would fail the
    fidelity check at best, after the model was built and the steps run."""
    from adamdiag.io.checkpoints import NOT_REPLAYABLE, _is_adafactor, _optimizer_kind

    osd = ck.optim_state
    if not (isinstance(osd, Mapping) and isinstance(osd.get("state"), Mapping) and osd.get("param_groups")):
        return
    if _is_adafactor(dict(osd)):
        kind = "Adafactor"
    else:
        kind = _optimizer_kind(dict(osd))[0]
        if kind not in NOT_REPLAYABLE:
            return
    raise InputError(
        f"{ck.path}: holds {kind} state; replay re-runs torch.optim.Adam/AdamW, which would not reproduce this "
        "run (inspect and scan read its moments)"
    )


def _complete_groups(ck: ReplayCheckpoint, assume: Assumptions | None) -> None:
    """The lr/betas/eps every param group needs to replay: a group that lacks one takes the user's
    ``--assume-*`` value (said in ``ck.notes``); without one it is an InputError naming the flag."""
    from adamdiag.io.checkpoints.hyper import FLAGS

    given = assume.given() if assume is not None else {}
    groups = []
    used: set[str] = set()
    for i, g in enumerate(ck.param_groups):
        g = dict(g)  # the loaded object stays as read
        if "betas" not in g and "beta2" in given:
            # β1 is not assumable: a group without betas lacks it too
            raise InputError(f"{ck.path}: optimizer param group {i} stores no betas (β1 and β2): cannot replay it")
        for k in ("lr", "eps"):
            if k not in g and k in given:
                g[k] = given[k]
                used.add(k)
        missing = [k for k in ("lr", "betas", "eps", "params") if k not in g]
        if missing:
            flags = [FLAGS[k] for k in missing if k in FLAGS]
            hint = f" (give {' / '.join(flags)})" if flags else ""
            raise InputError(
                f"{ck.path}: optimizer param group {i} lacks {', '.join(missing)}{hint}; not torch.optim.Adam state"
            )
        groups.append(g)
    ck.optim_state = {**ck.optim_state, "param_groups": groups}
    for k in sorted(used):
        ck.notes.append(f"{k}={given[k]:g} assumed ({FLAGS[k]}): the checkpoint does not store it")
    for k in sorted(set(given) - used):
        ck.notes.append(f"{FLAGS[k]} not used: the checkpoint stores {k}")


def _load_checkpoint_dir(d: Path, trust: bool) -> ReplayCheckpoint:
    """A Hugging Face ``Trainer`` ``checkpoint-N/`` or accelerate ``save_state`` directory: the optimizer
    file, the model weights beside it (safetensors or torch, sharded or not) and the step from
    ``trainer_state.json`` (else the directory's name for HF)."""

    from adamdiag.io.checkpoints import (
        MODEL_FILES,
        OPTIMIZER_FILES,
        _checkpoint_dir_kind,
        checkpoint_dir_step,
        shard_files,
    )

    kind = _checkpoint_dir_kind(d)
    if kind == "dcp":
        return _load_dcp(d, trust)
    if kind not in ("hf", "accelerate"):
        raise InputError(
            f"{d} is a directory (no optimizer.pt/.bin and no DCP .metadata in it); give one "
            "checkpoint file or a checkpoint directory"
        )
    opt_file = next(d / n for n in OPTIMIZER_FILES if (d / n).is_file())
    optim = _torch_load(opt_file, trust)
    from adamdiag.io.checkpoints import adam_optimizer_keys, numbered_optimizer_files, several_optimizers_message

    if kind == "accelerate" and (extra := numbered_optimizer_files(d)):  # several prepared optimizers (a GAN)
        adams = [
            f.name for f in (opt_file, *extra) if adam_optimizer_keys(optim if f == opt_file else _torch_load(f, trust))
        ]
        if len(adams) > 1:
            raise InputError(several_optimizers_message(d, adams))
    # Every tensor of the model file, buffers included (inspect's model reader keeps parameters only).
    model: dict[str, Any] = {}
    name = next((n for n in MODEL_FILES if (d / n).is_file()), None)
    if name is None:
        raise InputError(f"{d}: no model weights beside {opt_file.name} (looked for {', '.join(MODEL_FILES)})")
    files = shard_files(d / name) if name.endswith(".index.json") else [d / name]
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                model.update(load_file(f))
            except Exception as e:  # noqa: BLE001 - damaged file: one line
                raise InputError(f"cannot read {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        else:
            part = _torch_load(f, trust)
            if not _is_tensor_map(part):
                raise InputError(f"{f}: not a model state dict")
            model.update(part)
    stated = checkpoint_dir_step(d, kind, [])
    raw = {"model": model, "optimizer": optim}
    if stated is not None:
        raw["global_step"] = stated[0]
    ck = _from_raw(d, raw)
    ck.framework = kind
    return ck


def _load_dcp(d: Path, trust: bool) -> ReplayCheckpoint:
    """A ``torch.distributed.checkpoint`` directory (one writer or sharded by several), read without a
    process group by inspect's reader. Its optimizer state is keyed by parameter name (FQN): it becomes
    the ``torch.optim`` layout (ids in group order, the names as ``param_names``), so the rest of
    replay matches parameters by name."""
    from adamdiag.io.checkpoints import STEP_KEYS
    from adamdiag.io.checkpoints.dcp import DcpReader, _parse, open_dcp

    ck = open_dcp(d, trust=trust)  # the one-line errors: not Adam, no optimizer state, unsafe metadata
    keys = list(dict.fromkeys(str((e.optimizer or {}).get("key", "")) for e in ck.entries))
    if len(keys) > 1:
        from adamdiag.io.checkpoints import several_optimizers_message

        raise InputError(several_optimizers_message(d, keys))
    reader = DcpReader(d, trust)
    opts, other = _parse(reader)
    o = next(o for o in opts.values() if any("exp_avg" in st and "exp_avg_sq" in st for st in o["state"].values()))
    by_group: dict[int, list[Any]] = {}
    for e in ck.entries:
        by_group.setdefault(e.group, []).append(e)
    state: dict[int, Any] = {}
    fetch_state = ck._fetch_state
    assert fetch_state is not None  # open_dcp sets it
    groups: list[dict[str, Any]] = []
    for gi in sorted(by_group):
        entries = by_group[gi]
        keys = o["groups"][gi] if o["groups"] else o["flat_groups"].get(entries[0].name, {})
        group: dict[str, Any] = (
            _mcore_group(d, entries[0].hyper)
            if "mcore" in o
            else {k: reader.read(key) for k, key in keys.items() if k not in ("params", "param_names")}
        )
        group["params"], group["param_names"] = [], []
        for e in entries:
            pid = sum(len(g["params"]) for g in groups) + len(group["params"])  # ids in group order
            if e.shape is not None:  # a parameter that never got a gradient has no state
                state[pid] = fetch_state(e)
            group["params"].append(pid)
            group["param_names"].append(e.name)
        groups.append(group)
    model = {
        path[-1]: reader.read(key)
        for path, key in other.items()
        if path and isinstance(path[-1], str) and reader.is_tensor(key) and path[-1] not in STEP_KEYS
    }
    raw: dict[str, Any] = {"model": model, "optimizer": {"state": state, "param_groups": groups}}
    if ck.step is not None:
        raw["step"] = ck.step
    out = _from_raw(d, raw)
    out.framework = "dcp"
    return out


def _mcore_group(d: Path, hyper: dict[str, Any]) -> dict[str, Any]:
    """A torch param group for a Megatron-core checkpoint's parameters, from the hyperparameters inspect read in
    its common.pt. Megatron saves no map from parameters to param groups; when its groups differ (in weight decay,
    usually) the run's AdamW cannot be rebuilt, and replaying a guess would not be the run."""
    import math

    numbers = [hyper.get(k) for k in ("lr", "beta1", "beta2", "eps", "weight_decay")]
    if any(not isinstance(x, float) or math.isnan(x) for x in numbers) or hyper.get("group_step") is None:
        raise InputError(
            f"{d}: Megatron-core checkpoint whose param groups differ (or lack lr/betas/eps/step in common.pt), and "
            "Megatron saves no map from parameters to groups: replay cannot rebuild the run's optimizer "
            "(inspect and scan read it)"
        )
    lr, b1, b2, eps, wd = numbers
    group = {"lr": lr, "betas": (b1, b2), "eps": eps, "weight_decay": wd, "step": hyper["group_step"]}
    group |= {"amsgrad": bool(hyper.get("amsgrad")), "maximize": bool(hyper.get("maximize"))}
    if hyper.get("decoupled_weight_decay") is not None:
        group["decoupled_weight_decay"] = hyper["decoupled_weight_decay"]
    return group


def _torch_load(path: Path, trust: bool) -> Any:
    """The one safe loader (``io.checkpoints.torch_load``): weights_only first, full unpickling only
    when trusted and then with its warning; InputError / UntrustedCheckpointError in one line."""
    from adamdiag.io.checkpoints import torch_load

    return torch_load(path, trust=trust)[0]


def _from_raw(path: Path, raw: Any) -> ReplayCheckpoint:
    """The optimizer state, the model weights and the step found in a loaded checkpoint object."""
    from adamdiag.io.checkpoints import adam_optimizer_keys, several_optimizers_message, stepped_optimizers

    if len(adams := adam_optimizer_keys(raw)) > 1:  # a GAN's: replaying one of them silently is not the run
        raise InputError(several_optimizers_message(path, adams))
    if len(stepped := stepped_optimizers(raw)) > 1:  # Muon + AdamW: the Adam half alone is not the run either
        raise InputError(several_optimizers_message(path, stepped, "optimizers"))
    optim = _find(raw, _is_optim_sd, _OPTIM_KEYS)
    if optim is None:
        keys = ", ".join(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise InputError(f"{path}: no optimizer state (a dict with 'state' and 'param_groups'); found: {keys}")
    states = [s for s in optim["state"].values() if isinstance(s, Mapping)]
    if not states:
        raise InputError(f"{path}: the optimizer state is empty (saved before the first step?); nothing to replay")
    from adamdiag.io.checkpoints import lookalikes, torchao_lowbit
    from adamdiag.io.checkpoints.bnb import is_bnb_state

    like = lookalikes.identify(dict(optim))
    if like is not None:  # LAMB, AdamP, Adan...: Adam's keys, another optimizer
        read = "inspect and scan read its moments" if like.refuse is None else f"not Adam's: {like.refuse}"
        raise InputError(
            f"{path}: holds {like.name} state; replay re-runs torch.optim.Adam/AdamW, which would not reproduce "
            f"this run ({read})"
        )
    for quantized, library in ((is_bnb_state, "bitsandbytes"), (torchao_lowbit.is_state, "torchao low-bit")):
        if quantized(dict(optim)):  # inspect and scan read these; a float32 torch Adam would be another run
            raise InputError(
                f"{path}: holds {library} optimizer state; replay re-runs torch.optim.Adam/AdamW in float32, "
                "which would not reproduce this run (inspect and scan read its moments)"
            )
    if not any("exp_avg" in s and "exp_avg_sq" in s for s in states):
        from adamdiag.io.checkpoints import _describe_non_adam

        # named as inspect names it (SGD, Adafactor, Adagrad, ... by their state keys)
        raise InputError(
            f"{path}: not Adam/AdamW state: {_describe_non_adam(dict(optim))}; replay needs exp_avg and exp_avg_sq"
        )
    optim = _with_param_steps(optim, path)
    model = None
    if isinstance(raw, Mapping):
        for k in _MODEL_KEYS:
            if _is_tensor_map(raw.get(k)):
                model = raw[k]
                break
        if model is None:
            model = _find({k: v for k, v in raw.items() if v is not optim}, _is_tensor_map, _MODEL_KEYS, depth=2)
    if model is None:
        raise InputError(f"{path}: no model state dict (a mapping of parameter names to tensors) found")
    _refuse_flat_state(optim, model, path)
    lightning = isinstance(raw, Mapping) and ("pytorch-lightning_version" in raw or "optimizer_states" in raw)
    notes: list[str] = []
    step, optimizer_step = _steps_of(raw, optim, path, notes)
    return ReplayCheckpoint(
        path=path,
        step=step,
        model_state=dict(model),
        optim_state=optim,
        framework="lightning" if lightning else None,
        optimizer_step=optimizer_step,
        notes=notes,
    )


def _refuse_flat_state(optim: Mapping[str, Any], model: Mapping[str, Any], path: Path) -> None:
    """InputError for one 1-D state slot standing for several model parameters (fairseq's FP16Optimizer steps a
    flat fp32 copy of them all; inspect and scan cut it back into parameters): replay steps torch Adam on the
    model's own parameters, whose state this is not."""
    import torch

    states = [
        s
        for s in optim.get("state", {}).values()
        if isinstance(s, Mapping) and isinstance(s.get("exp_avg"), torch.Tensor)
    ]
    params = [t for t in model.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len(states) == 1 and states[0]["exp_avg"].dim() == 1 and len(params) > 1:
        n = states[0]["exp_avg"].numel()
        if not any(t.numel() == n and t.dim() == 1 for t in params):
            raise InputError(
                f"{path}: one flat optimizer state of {n} elements for the model's {len(params)} tensors (fairseq's "
                "--fp16 FP16Optimizer): replay re-runs torch.optim.Adam on the parameters themselves, which would "
                "not be this run (inspect and scan read it per parameter)"
            )


def param_order(ckpt: ReplayCheckpoint, model: torch.nn.Module) -> list[list[tuple[str, int]]]:
    """For each param group, (parameter name, optimizer state id) in the optimizer's order.

    The optimizer saved ids 0..n-1 in the order it was given its parameters. In order of preference:
    ``param_names`` saved with the groups (torch >= 2.5 when built from ``named_parameters()``); else
    ``model.parameters()`` order (``Adam(model.parameters())``), if the saved moments' shapes agree;
    else, for custom groups, the k-th state of a shape is taken to be the k-th model parameter of that
    shape (see :func:`order_is_guessed`; the fidelity check exposes a wrong guess).
    """
    named = list(model.named_parameters())
    by_name = dict(named)
    groups = ckpt.param_groups
    states = ckpt.optim_state["state"]
    n_ids = sum(len(g["params"]) for g in groups)

    def shape_of(pid: int) -> tuple[int, ...] | None:
        st = states.get(pid)
        return tuple(st["exp_avg"].shape) if isinstance(st, dict) and "exp_avg" in st else None

    if all("param_names" in g for g in groups):
        out = []
        for g in groups:
            row = []
            for name, pid in zip(g["param_names"], g["params"]):
                if name not in by_name:
                    raise InputError(
                        f"{ckpt.path}: optimizer parameter {name!r} is not a parameter of the entry's model"
                    )
                row.append((name, pid))
            out.append(row)
        return out
    if n_ids != len(named):
        raise InputError(
            f"{ckpt.path}: the optimizer holds {n_ids} parameters but the entry's model has {len(named)}; "
            "build the optimizer from model.named_parameters() (torch >= 2.5 saves the names) so replay can match them"
        )
    flat = [pid for g in groups for pid in g["params"]]
    if all(shape_of(pid) in (None, tuple(p.shape)) for pid, (_, p) in zip(flat, named)):
        names = iter(n for n, _ in named)
        return [[(next(names), pid) for pid in g["params"]] for g in groups]
    # Custom groups: match by shape, keeping model order within each shape.
    pools: dict[tuple[int, ...], list[str]] = {}
    for n, p in named:
        pools.setdefault(tuple(p.shape), []).append(n)
    out = []
    for g in groups:
        row = []
        for pid in g["params"]:
            shp = shape_of(pid)
            if shp is None or not pools.get(shp):
                raise InputError(
                    f"{ckpt.path}: cannot match the optimizer's parameters to the model (custom param groups without "
                    "saved names); build the optimizer from model.named_parameters() (torch >= 2.5)"
                )
            row.append((pools[shp].pop(0), pid))
        out.append(row)
    return out


def order_is_guessed(ckpt: ReplayCheckpoint, model: torch.nn.Module) -> bool:
    """True when :func:`param_order` had to match parameters by shape (custom groups, no names)."""
    groups = ckpt.param_groups
    if all("param_names" in g for g in groups):
        return False
    named = list(model.named_parameters())
    flat = [pid for g in groups for pid in g["params"]]
    for pid, (_, p) in zip(flat, named):
        st = ckpt.optim_state["state"].get(pid)
        if isinstance(st, dict) and "exp_avg" in st and tuple(st["exp_avg"].shape) != tuple(p.shape):
            return True
    return False


def load_model_weights(model: torch.nn.Module, ckpt: ReplayCheckpoint) -> None:
    """Copy the checkpoint's weights into ``model`` (strict: a mismatch means a different architecture)."""
    try:
        model.load_state_dict(ckpt.model_state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise InputError(f"{ckpt.path}: the checkpoint's model weights do not fit the entry's model: {first}") from None
