"""The replay entry-point protocol: how adamdiag gets the model, the batches and the loss of a run.

A project exposes one function (see docs/replay.md)::

    def adamdiag_replay(checkpoint: str) -> dict:
        return {"model": nn.Module,                  # architecture; adamdiag loads the checkpoint's weights
                "batch": Callable[[int], Any],       # batch of optimizer step t (1-based)
                "loss": Callable[[nn.Module, Any], torch.Tensor],   # scalar total loss
                "clip_grad_norm": float | None}

Optional key ``"lr_schedule": Callable[[int], float | list[float]]``: the learning rate that update t used
in the original run (group 0's, or one per param group), for runs with an LR scheduler; without it the
checkpoint's lr is held constant. Variants scale it by their lr / the original lr.

``batch(t)`` is the batch of the update whose completion makes the optimizer's step counter equal t,
and the logged ``train/loss`` at step t is ``loss(model, batch(t))`` computed *before* update t. So a
checkpoint after s updates replays steps s+1, s+2, ... and each replayed loss lines up with a logged one.

A second, framework-neutral kind (issue 14): the entry returns ``{"run": run}`` (or an object with a
``run`` attribute) and trains in the user's own framework (TensorFlow, JAX, numpy)::

    run(checkpoint: str, variant: dict, steps: int) -> {"loss": [...],           # per replayed step
                                                        "g2": {"global": [...], <tensor>: [...]},
                                                        "vhat": {"global": [...], <tensor>: [...]}}

``variant`` = {"name", "eps", "beta2", "lr", "lr_scale", "original"}; ``g2`` = mean g² of update t,
``vhat`` = mean v̂_{t-1} before it; optional ``sqrt_vhat_median`` (median √v̂ after update t),
``update_rms``, ``frac_eps`` (per step) and, in the entry's dict, ``"original": {"eps", "beta2", "lr",
"step"}`` for a checkpoint no adamdiag reader knows. adamdiag turns the result into the same curves the
torch engines produce (:mod:`adamdiag.replay.neutral`), so fidelity, outcomes and rendering are shared.

Where the entry point is found: ``--entry module:function`` or ``path/to/file.py:function``; else
``adamdiag.toml`` (``[replay] entry = "..."``) or ``pyproject.toml`` (``[tool.adamdiag.replay] entry``)
in the checkpoint's directory or any directory above it, then in the current working directory. A file
path in a config file is relative to that file's directory.

This module also defines the variants (alternate eps/beta2/lr) and how they map onto param groups.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: the CLI imports this package at start-up
    import torch

# The original report's candidates: each bounds the per-element step lr/(√v̂+eps) at a different level.
DEFAULT_EPS_CANDIDATES = ("1e-3", "1e-2", "1e-1")
CONFIG_FILES = ("adamdiag.toml", "pyproject.toml")


@dataclass
class ReplaySpec:
    """What an entry point returned, validated."""

    model: torch.nn.Module
    batch: Callable[[int], Any]
    loss: Callable[[Any, Any], Any]
    clip_grad_norm: float | None
    entry: str  # the entry point as resolved, for the report
    source: str  # where it came from: "--entry", or the config file's path
    lr_schedule: Callable[[int], Any] | None = None  # lr of update t in the original run (optional)


@dataclass
class NeutralSpec:
    """A framework-neutral entry: ``run(checkpoint, variant, steps)`` replays in the user's framework
    and returns per-step loss and moments (module docstring); adamdiag never sees a model."""

    run: Callable[[str, dict[str, Any], int], Any]
    entry: str
    source: str
    # eps/beta2/lr/step of the original run, for a checkpoint no adamdiag reader knows (optional)
    original: dict[str, float] | None = None
    clip_grad_norm: float | None = None  # shown in the report only; the entry clips (or not) itself


NEUTRAL_ORIGINAL_KEYS = ("eps", "beta2", "lr", "step")


def _neutral_spec(result: Any, run: Any, entry: str, source: str) -> NeutralSpec:
    """Validate a neutral entry's result (a dict with ``run`` or an object with a ``run`` attribute)."""
    where = f"entry point {entry}"
    if not callable(run):
        raise InputError(
            f"{where}: 'run' must be callable as run(checkpoint, variant, steps), got {type(run).__name__}"
        )
    raw = result.get("original") if isinstance(result, dict) else getattr(result, "original", None)
    original: dict[str, float] | None = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise InputError(f"{where}: 'original' must be a dict with eps, beta2, lr, step; got {type(raw).__name__}")
        bad = [k for k in raw if k not in NEUTRAL_ORIGINAL_KEYS]
        if bad:
            raise InputError(f"{where}: 'original' has unknown key {bad[0]!r} (allowed: eps, beta2, lr, step)")
        original = {}
        for k, x in raw.items():
            ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            ok = ok and (0 <= x < 1 if k == "beta2" else x >= 0 if k == "step" else x > 0)
            if not ok or (k == "step" and int(x) != x):
                raise InputError(f"{where}: 'original' {k} = {x!r} is not a valid {k}")
            original[k] = float(x)
    clip = result.get("clip_grad_norm") if isinstance(result, dict) else None
    clip = float(clip) if isinstance(clip, (int, float)) and not isinstance(clip, bool) else None
    return NeutralSpec(run=run, entry=entry, source=source, original=original, clip_grad_norm=clip)


# --------------------------------------------------------------------------------------------
# Entry-point resolution


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise InputError(f"cannot read {path}: Python 3.10 needs the 'tomli' package for TOML") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def _entry_in_config(path: Path) -> str | None:
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        section = data.get("tool", {}).get("adamdiag", {}).get("replay", {})
    else:
        section = data.get("replay", {})
    entry = section.get("entry") if isinstance(section, dict) else None
    if entry is not None and not isinstance(entry, str):
        raise InputError(f"{path}: replay entry must be a string like 'module:function', got {entry!r}")
    return entry


def find_config_entry(start: Path, cwd: Path | None = None) -> tuple[str, Path] | None:
    """First ``entry`` in adamdiag.toml / pyproject.toml from ``start`` upward, then in ``cwd``.

    Returns (entry, config file) or None.
    """
    dirs: list[Path] = []
    d = start.resolve()
    while True:
        dirs.append(d)
        if d.parent == d:
            break
        d = d.parent
    cwd = (cwd or Path.cwd()).resolve()
    if cwd not in dirs:
        dirs.append(cwd)
    for d in dirs:
        for name in CONFIG_FILES:
            p = d / name
            if p.is_file():
                entry = _entry_in_config(p)
                if entry:
                    return entry, p
    return None


def _is_file_entry(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_file(path: Path) -> Any:
    """Import a Python file as a module under a unique name; its directory goes on sys.path so its
    sibling imports work (that is how the file is normally run)."""
    if not path.is_file():
        raise InputError(f"entry point file not found: {path}")
    name = "adamdiag_entry_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    parent = str(path.resolve().parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot import entry point file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of user code is an input problem
        del sys.modules[name]
        raise InputError(f"importing entry point file {path} failed: {type(e).__name__}: {e}") from None
    return module


def print_notice(msg: str) -> None:
    """The import notice on stderr (the default route); nothing with ``--quiet``, which asks for errors only."""
    from adamdiag import console

    if not console.QUIET:
        print(f"adamdiag: {msg}", file=sys.stderr, flush=True)


def load_entry_function(
    entry: str, base: Path | None = None, notify: Callable[[str], None] | None = None, source: str = ""
) -> Callable[[str], Any]:
    """The function named by ``module:function`` or ``path/file.py:function`` (relative to ``base``).

    "importing entry X from FILE" goes to ``notify`` (None: stderr) *before* the import runs any code:
    importing an entry executes it, and the user must always be able to see what ran (issue 12)."""
    notify = notify or print_notice
    target, sep, func = entry.rpartition(":")
    if not sep or not target or not func:
        raise InputError(f"bad entry point {entry!r}: expected 'module:function' or 'path/to/file.py:function'")
    named_by = f" (named by {source})" if source and source != "--entry" else ""
    if _is_file_entry(target):
        path = Path(target).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        notify(f"importing entry {entry} from {path}{named_by}")
        module = _import_file(path)
    else:
        notify(f"importing entry {entry} from module {target}{named_by}")
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise InputError(
                f"entry point module {target!r} not found ({e}); is it installed or on PYTHONPATH?"
            ) from None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"importing entry point module {target!r} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, func, None)
    if fn is None:
        raise InputError(f"entry point {entry!r}: {target} has no attribute {func!r}")
    if not callable(fn):
        raise InputError(f"entry point {entry!r} is not callable")
    return fn


def validate_spec(result: Any, entry: str, source: str) -> ReplaySpec | NeutralSpec:
    """Check the shape of what an entry point returned; one clear line per problem. A ``run`` key
    (or attribute) makes it a framework-neutral entry (:class:`NeutralSpec`)."""
    run = result.get("run") if isinstance(result, dict) else getattr(result, "run", None)
    if run is not None or (isinstance(result, dict) and "run" in result):
        return _neutral_spec(result, run, entry, source)
    import torch

    where = f"entry point {entry}"
    if not isinstance(result, dict):
        raise InputError(
            f"{where} must return a dict with keys model, batch, loss, clip_grad_norm (or run, for a "
            f"framework-neutral entry); got {type(result).__name__}"
        )
    missing = [k for k in ("model", "batch", "loss") if k not in result]
    if missing:
        raise InputError(
            f"{where} returned a dict without {', '.join(missing)} (keys: {', '.join(map(str, result)) or 'none'})"
        )
    model = result["model"]
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{where}: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    for key in ("batch", "loss"):
        if not callable(result[key]):
            raise InputError(f"{where}: '{key}' must be callable, got {type(result[key]).__name__}")
    clip = result.get("clip_grad_norm")
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
            raise InputError(f"{where}: 'clip_grad_norm' must be a positive number or None, got {clip!r}")
        clip = float(clip)
    schedule = result.get("lr_schedule")
    if schedule is not None and not callable(schedule):
        raise InputError(f"{where}: 'lr_schedule' must be callable (step -> lr) or None, got {type(schedule).__name__}")
    return ReplaySpec(
        model=model,
        batch=result["batch"],
        loss=result["loss"],
        clip_grad_norm=clip,
        entry=entry,
        source=source,
        lr_schedule=schedule,
    )


class NoEntry(InputError):
    """No replay entry point was given or found (``scan --verify``: "not verified: no replay entry")."""


class NoNeutralEntry(NoEntry):
    """A checkpoint only a framework-neutral entry can replay (TensorFlow, Keras) and no entry at all:
    the message says what to provide."""


class UntrustedEntry(InputError):
    """An entry point was found by discovery in a config outside the current directory's, and trust
    was required (``scan --verify`` without ``--trust-entry``): it is not imported."""


def cwd_config(cwd: Path | None = None) -> Path | None:
    """The current directory's config: the nearest adamdiag.toml / pyproject.toml naming a replay
    entry at or above ``cwd`` (the user's own project, as for every other option)."""
    d = (cwd or Path.cwd()).resolve()
    while True:
        for name in CONFIG_FILES:
            p = d / name
            if p.is_file() and _entry_in_config(p):
                return p
        if d.parent == d:
            return None
        d = d.parent


def load_spec(
    checkpoint: Path,
    entry: str | None = None,
    cwd: Path | None = None,
    *,
    notify: Callable[[str], None] | None = None,
    require_trust: bool = False,
) -> ReplaySpec | NeutralSpec:
    """Resolve, import and call the entry point for ``checkpoint``.

    ``require_trust``: an entry found by discovery runs only when its config is the current
    directory's (:func:`cwd_config`); any other (e.g. an ``adamdiag.toml`` inside a scanned log tree,
    which anyone who wrote the tree controls) raises :class:`UntrustedEntry` before anything is
    imported. ``--entry`` is always trusted: the user typed it. ``notify`` gets the import notice
    (None: stderr)."""
    if entry:
        base, source = (cwd or Path.cwd()), "--entry"
    else:
        found = find_config_entry(checkpoint.parent, cwd)
        if found is None:
            raise NoEntry(
                "no replay entry point: pass --entry module:function (or file.py:function), or add "
                '[replay] entry = "file.py:function" to an adamdiag.toml next to the run (see docs/replay.md)'
            )
        entry, cfg = found
        if require_trust:
            own = cwd_config(cwd)
            if own is None or own.resolve() != cfg.resolve():
                raise UntrustedEntry(
                    f"replay entry {entry} named by {cfg} was found inside the scanned tree and is not run "
                    "without --trust-entry (or pass --entry)"
                )
        base, source = cfg.parent, str(cfg)
    fn = load_entry_function(entry, base, notify, source)
    check_entry_signature(fn, entry)
    # The entry is often a training script's function: it must not parse adamdiag's own argv.
    saved_argv = sys.argv
    sys.argv = [entry]
    try:
        result = fn(str(checkpoint))
    except InputError:
        raise
    except SystemExit as e:  # an argparse main() called by mistake
        raise InputError(
            f"entry point {entry} exited ({e.code}): is it a script's main()? it must return the spec"
        ) from None
    except Exception as e:  # noqa: BLE001 - user code
        raise InputError(f"entry point {entry} raised {type(e).__name__}: {e}") from None
    finally:
        sys.argv = saved_argv
    return validate_spec(result, entry, source)


def check_entry_signature(fn: Callable[..., Any], entry: str) -> None:
    """An entry takes exactly one positional argument, the checkpoint path: checked before it is
    called, so `--entry train:main` fails with a clear line instead of running a whole training."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    required_kw = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_kw or len(required) > 1 or (not positional and not varargs):
        raise InputError(
            f"entry point {entry}{sig} must take exactly one argument, the checkpoint path, and return the "
            "replay spec (docs/replay.md)"
        )


# --------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class Variant:
    """One set of hyperparameters to replay. ``lr`` is param group 0's lr (others scale with it)."""

    name: str
    eps: float
    beta2: float
    lr: float


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_values(
    raw: Sequence[str] | None, what: str, lo: float, hi: float, *, lo_closed: bool = False, hi_open: bool = False
) -> list[float]:
    """Floats from repeatable and/or comma-separated options, validated to lie between lo and hi
    (each end open or closed as told), in the order given, duplicates dropped."""
    out: list[float] = []
    for item in raw or []:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                x = float(part)
            except ValueError:
                raise InputError(f"--{what}: not a number: {part!r}") from None
            ok = math.isfinite(x) and (x >= lo if lo_closed else x > lo) and (x < hi if hi_open else x <= hi)
            if not ok:
                rng = f"{'[' if lo_closed else '('}{lo:g}, {hi:g}{')' if hi_open else ']'}"
                raise InputError(f"--{what}: {part} is outside {rng}")
            if x not in out:
                out.append(x)
    return out


def make_variants(
    original: Variant,
    eps: Sequence[str] | None,
    beta2: Sequence[str] | None,
    lr: Sequence[str] | None,
    *,
    grid: bool = False,
) -> list[Variant]:
    """The original first, then one variant per value given, each changing that one hyperparameter
    (``--eps A --lr B`` tries eps=A and lr=B separately, so the table says which change helped); with
    ``grid``, the cross product of the given values instead (an axis not given keeps the original
    value). With no option at all, the default eps candidates. Duplicates of the original are dropped.
    """
    eps_v = parse_values(eps, "eps", 0.0, math.inf)
    b2_v = parse_values(beta2, "beta2", 0.0, 1.0, lo_closed=True, hi_open=True)
    lr_v = parse_values(lr, "lr", 0.0, math.inf)
    if not (eps_v or b2_v or lr_v):
        eps_v = [float(x) for x in DEFAULT_EPS_CANDIDATES]
    o = original
    if grid:
        combos = [(e, b, r) for e in eps_v or [o.eps] for b in b2_v or [o.beta2] for r in lr_v or [o.lr]]

        def name(e: float, b: float, r: float) -> str:
            parts = [f"eps={_fmt(e)}"] if eps_v else []
            parts += [f"beta2={_fmt(b)}"] if b2_v else []
            parts += [f"lr={_fmt(r)}"] if lr_v else []
            return ",".join(parts)

        candidates = [Variant(name(e, b, r), e, b, r) for e, b, r in combos]
    else:
        candidates = (
            [Variant(f"eps={_fmt(e)}", e, o.beta2, o.lr) for e in eps_v]
            + [Variant(f"beta2={_fmt(b)}", o.eps, b, o.lr) for b in b2_v]
            + [Variant(f"lr={_fmt(r)}", o.eps, o.beta2, r) for r in lr_v]
        )
    out = [original]
    for v in candidates:
        if all((v.eps, v.beta2, v.lr) != (u.eps, u.beta2, u.lr) for u in out):
            out.append(v)
    return out


def variant_groups(param_groups: list[dict[str, Any]], variant: Variant) -> list[dict[str, Any]]:
    """Hyperparameters of each param group under ``variant`` (copies; ``params`` untouched).

    eps and beta2 replace every group's value; lr sets group 0 and scales the others by the same
    factor, so per-group lr ratios (e.g. a lower lr for embeddings) are kept.
    """
    lr0 = float(param_groups[0]["lr"])
    scale = variant.lr / lr0 if lr0 else 1.0
    out = []
    for i, g0 in enumerate(param_groups):
        g = dict(g0)
        g["betas"] = (float(g0["betas"][0]), float(variant.beta2))
        g["eps"] = float(variant.eps)
        g["lr"] = float(variant.lr) if i == 0 or not lr0 else float(g0["lr"]) * scale
        out.append(g)
    return out


def scheduled_lrs(spec: ReplaySpec, t: int, original: list[float], variant: list[float]) -> list[float]:
    """Per-group lr of update t for a variant whose constant per-group lrs are ``variant`` (the original's
    are ``original``): the schedule's value for the original, scaled by variant/original per group.

    For the original settings the schedule's numbers are used as they are, so the replay uses the very
    floats the run used."""
    try:
        raw = spec.lr_schedule(t)  # type: ignore[misc]
    except Exception as e:  # noqa: BLE001 - user code
        raise InputError(f"entry point {spec.entry}: lr_schedule({t}) raised {type(e).__name__}: {e}") from None
    if isinstance(raw, (list, tuple)):
        if len(raw) != len(original):
            raise InputError(
                f"entry point {spec.entry}: lr_schedule({t}) gave {len(raw)} lrs for {len(original)} param groups"
            )
        sched = [float(x) for x in raw]
    else:
        x = float(raw)
        # one number = group 0's lr; other groups keep their ratio to group 0
        sched = [x] + [x * (o / original[0]) if original[0] else x for o in original[1:]]
    return [s if v == o else s * (v / o) if o else v for s, o, v in zip(sched, original, variant)]


__all__ = [
    "scheduled_lrs",
    "DEFAULT_EPS_CANDIDATES",
    "NeutralSpec",
    "NoEntry",
    "NoNeutralEntry",
    "ReplaySpec",
    "UntrustedEntry",
    "cwd_config",
    "Variant",
    "find_config_entry",
    "load_entry_function",
    "load_spec",
    "make_variants",
    "parse_values",
    "validate_spec",
    "variant_groups",
]
