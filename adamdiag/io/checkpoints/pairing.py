"""Several models and several optimizers in one file (GANs): which optimizer steps which model.

The layouts: PyTorch's DCGAN example ``{'netG', 'netD', 'optimizerG', 'optimizerD', 'epoch'}``, and the
same with ``G``/``D``/``opt_G``/``opt_D``, ``generator``/``discriminator``/``g_optimizer``/``d_optimizer``,
``gen``/``disc``/``gen_opt``/``disc_opt``, StyleGAN2's ``g``/``d``/``g_ema``/``g_optim``/``d_optim``, and
CycleGAN's ``G_A``, ``G_B``, ``D_A``, ``D_B`` with ``optimizer_G`` over ``chain(G_A.parameters(),
G_B.parameters())``. There is no single model to interleave every optimizer into (what
:func:`~adamdiag.io.checkpoints._finish` does for a Lightning module or ``{'model', 'optimizers'}``): each
optimizer is paired with the model state dict(s) its parameters come from.

A pairing needs both (a wrong name is worse than none):

* **key affinity** — the optimizer's key and the model's key name the same role (``optimizerG`` ↔
  ``netG``, ``g_optim`` ↔ ``g``, ``optimizer_G`` ↔ ``G_A`` + ``G_B``, ``optimizers.1`` ↔ ``models.1``);
  a model whose role words equal the optimizer's is preferred to one whose words only contain them
  (``g`` before ``g_ema``);
* **shapes in order** — the optimizer's slots fit the model's parameters (BatchNorm statistics and
  other buffers left out) in order (:func:`~adamdiag.io.checkpoints.map_names`, the single-optimizer rule).

An optimizer no model has affinity with is paired by shapes alone only when exactly one model fits it
exactly (every parameter, in order). Tensors are then named ``<model key>.<parameter>`` — the name the
parameter has when the networks are attributes of one module, as in a Lightning GAN (``gen.0.weight``);
the optimizer stays in each tensor's ``optimizer`` field. An optimizer that cannot be paired keeps
positional names ``<optimizer key>/group g / index i`` (:func:`positional_name`), with a one-line warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Words of a key that say "this is a model / an optimizer / a state", not which one.
_FILLER = {
    "opt", "optim", "optimizer", "optimiser", "optimizers", "optimisers", "optims", "opts",
    "state", "states", "dict", "sd", "net", "nets", "network", "networks", "model", "models",
    "module", "modules", "param", "params", "parameters", "weights", "checkpoint", "ckpt",
}  # fmt: skip
# Role synonyms: generator / discriminator spelled the ways GAN code spells them.
_ROLE = {
    "g": "g", "gen": "g", "generator": "g", "generators": "g", "netg": "g",
    "d": "d", "dis": "d", "disc": "d", "discriminator": "d", "discriminators": "d", "critic": "d", "netd": "d",
}  # fmt: skip
# Trailing key components that only say "the state dict of": dropped from a model's name prefix.
_STATE_WORDS = ("state_dict", "model_state_dict", "model_state", "model", "module", "net", "network", "params")
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def role_words(path: tuple) -> frozenset[str]:
    """The words of a key path that say which network it is: ``('optimizerG',)`` → {g},
    ``('G_A',)`` → {g, a}, ``('optimizers', 1)`` → {#1} (a list position), ``('g_ema',)`` → {g, ema}."""
    out = set()
    for comp in path:
        if isinstance(comp, int):  # a list position: optimizers[1] <-> models[1], not a digit in a key
            out.add(f"#{comp}")
            continue
        for w in _WORD.findall(str(comp)):
            lw = w.lower()
            if lw not in _FILLER:
                out.add(_ROLE.get(lw, lw))
    return frozenset(out)


def affinity(opt_path: tuple, model_path: tuple) -> int:
    """2: the same role words; 1: one's words contain the other's; 0: no affinity."""
    o, m = role_words(opt_path), role_words(model_path)
    if not o or not m:
        return 0
    if o == m:
        return 2
    return 1 if (o <= m or m <= o) else 0


def model_prefix(path: tuple) -> str:
    """The name prefix of a model state dict at ``path``: its dotted key path without trailing
    'state dict' words (``('G', 'state_dict')`` → ``G``; ``('netG',)`` → ``netG``)."""
    comps = [str(c) for c in path]
    while len(comps) > 1 and comps[-1].lower() in _STATE_WORDS:
        comps.pop()
    return ".".join(comps)


def positional_name(opt_key: str, group: int, index: Any) -> str:
    """The label of a tensor of one of several optimizers whose parameter is not known for certain:
    the optimizer's key first, as the live monitor's ``adamdiag/<optimizer>/...`` tags, so that
    ``group 0 / index 3`` of two optimizers stay two tensors."""
    return f"{opt_key or '<top level>'}/group {group} / index {index}"


@dataclass
class Pairing:
    """The model(s) an optimizer's parameters come from, in the order it steps them."""

    models: list[tuple[tuple, dict]]  # (key path, state dict)
    how: str  # "key and shapes" | "shapes"

    def describe(self) -> str:
        return " + ".join(model_prefix(p) for p, _ in self.models)


def _fits(shapes: list[list[tuple[int, ...] | None]], cands: list[tuple[str, tuple]]) -> tuple[bool, bool]:
    """(fits, exact): the optimizer's slots fit ``cands`` in order; exact: one slot per candidate."""
    from adamdiag.io.checkpoints import map_names

    n_slots = sum(len(g) for g in shapes)
    _, status = map_names(shapes, cands, ordered=True)
    ok = status != "unmatched" and n_slots <= len(cands)
    return ok, ok and n_slots == len(cands)


def _cands(models: list[tuple[tuple, dict]]) -> list[tuple[str, tuple]]:
    from adamdiag.io.checkpoints import model_candidates

    return [(f"{model_prefix(p)}.{n}", s) for p, sd in models for n, s in model_candidates(sd)]


def _by_names(names: list[str | None], shapes: list[tuple | None], model: dict) -> bool:
    """Every name the optimizer saved (``param_names``) is a parameter of ``model`` with the state's shape."""
    from adamdiag.io.checkpoints import model_candidates

    own = dict(model_candidates(model))
    return all(n in own and (s is None or own[n] == s) for n, s in zip(names, shapes) if n is not None)


def pair(
    opts: list[tuple[dict, tuple, dict]],
    shapes: dict[int, list[list[tuple[int, ...] | None]]],
    given: dict[int, tuple[list[str | None], list[tuple | None]] | None],
    models: list[tuple[tuple, dict]],
    warnings: list[str],
) -> dict[int, Pairing | None] | None:
    """Per optimizer index, the model(s) it steps (None: not certain; its tensors get positional
    names). None when the file is not a several-models layout (fewer than two model state dicts, or
    no optimizer's key has affinity with a model's): then the caller's one-model rule applies.

    ``shapes``: per optimizer, per param group, its slots' shapes; ``given``: per optimizer, the
    ``param_names`` it saved (with the slots' shapes), or None."""
    if len(models) < 2 or not any(affinity(p, mp) for _, p, _ in opts for mp, _ in models):
        return None
    out: dict[int, Pairing | None] = {}
    for info, p, _ in opts:
        i = info["index"]
        found = _pair_by_key(p, shapes[i], given[i], models)
        if found is None and not any(affinity(p, mp) for mp, _ in models):
            found = _pair_by_shapes(shapes[i], given[i], models, out)
        out[i] = found
    _say(opts, out, models, warnings)
    return out


def _pair_by_key(
    p: tuple,
    shapes: list[list[tuple[int, ...] | None]],
    given: tuple[list[str | None], list[tuple | None]] | None,
    models: list[tuple[tuple, dict]],
) -> Pairing | None:
    for tier in (2, 1):
        near = [m for m in models if affinity(p, m[0]) == tier]
        if not near:
            continue
        if given is not None:  # the optimizer saved its parameters' names: one model must hold them all
            hits = [m for m in near if _by_names(*given, m[1])]
            if len(hits) == 1:
                return Pairing(hits, "key and names")
            continue
        # all of them, in the file's order (CycleGAN: chain(G_A.parameters(), G_B.parameters())), then each
        if len(near) > 1 and _fits(shapes, _cands(near))[1]:
            return Pairing(near, "key and shapes")
        fits = [(m, _fits(shapes, _cands([m]))) for m in near]
        ok = [m for m, (f, _) in fits if f]
        exact = [m for m, (_, e) in fits if e]
        if len(ok) == 1:
            return Pairing(ok, "key and shapes")
        if len(exact) == 1:
            return Pairing(exact, "key and shapes")
    return None


def _pair_by_shapes(
    shapes: list[list[tuple[int, ...] | None]],
    given: tuple[list[str | None], list[tuple | None]] | None,
    models: list[tuple[tuple, dict]],
    taken: dict[int, Pairing | None],
) -> Pairing | None:
    """No key affinity: the one model that fits every parameter exactly, in order (or holds every
    saved name), and that no other optimizer of the file was paired with."""
    used = {id(sd) for pr in taken.values() if pr is not None for _, sd in pr.models}
    free = [m for m in models if id(m[1]) not in used]
    if given is not None:
        hits = [m for m in free if _by_names(*given, m[1])]
    else:
        hits = [m for m in free if _fits(shapes, _cands([m]))[1]]
    return Pairing(hits, "shapes") if len(hits) == 1 else None


def _say(
    opts: list[tuple[dict, tuple, dict]],
    out: dict[int, Pairing | None],
    models: list[tuple[tuple, dict]],
    warnings: list[str],
) -> None:
    from adamdiag.io.checkpoints import _keyname, model_candidates

    done = [(info, out[info["index"]]) for info, _, _ in opts if out[info["index"]] is not None]
    if done:
        what = ", ".join(f"{info['key']} → {pr.describe()}" for info, pr in done if pr is not None)
        warnings.append(f"optimizers paired with their models by key and parameter shapes: {what}")
    for info, pr in done:
        assert pr is not None
        if pr.how == "shapes":
            warnings.append(
                f"{info['key']} paired with {pr.describe()} by parameter shapes alone (their keys say nothing)"
            )
        shapes = [[s for _, s in model_candidates(sd)] for _, sd in pr.models]
        if len(shapes) > 1 and len({tuple(s) for s in shapes}) < len(shapes):
            warnings.append(
                f"names of {info['key']}'s tensors assume it steps {', then '.join(pr.describe().split(' + '))} "
                "(the file's order): their shapes are the same, so the order cannot be checked"
            )
    for info, _, _ in opts:
        if out[info["index"]] is None:
            keys = ", ".join(_keyname(p) for p, _ in models)
            warnings.append(
                f"{info['key']}: no model in the file ({keys}) is certainly the one it steps (key and parameter "
                f"shapes in order): its tensors are labelled '{positional_name(info['key'], 0, 'i')}'-style"
            )
