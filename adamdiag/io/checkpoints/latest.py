"""``--latest``: the newest checkpoint a path names, for every format the readers know.

One rule for all of them (torch files, HF/accelerate/DCP/DeepSpeed directories, TF bundle prefixes,
the TF ``checkpoint`` file, Keras ``.keras``/``.weights.h5``): the candidates are what
:func:`adamdiag.io.checkpoints.find_checkpoints` finds under the path (for a ``checkpoint`` file: the
prefixes it lists), each is opened (metadata only, no tensor is read) and the one whose *file* states
the highest step wins. The step comes from the file, not from the name, because names lie about
steps: a ``tf.train.CheckpointManager`` numbers its saves (``ckpt-1`` holds step 20), Keras'
``ModelCheckpoint`` names epochs (``epoch020.keras``), a torch file may have no number at all. The
name's number is used only for a candidate that cannot be opened (it would fail later with its own
message anyway; ranking it by name keeps a newer but unreadable file from being silently skipped in
favour of an older one).

Ties (a ``.keras`` and a ``.weights.h5`` written at the same step) go to the candidate whose file
states more of lr/β1/β2/eps (the ``.keras`` file's config.json), then to the first name; the pick is
reported with the tie, so nothing is chosen silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adamdiag.errors import InputError


@dataclass
class LatestPick:
    """The checkpoint :func:`latest_checkpoint` chose and why."""

    path: Path
    step: int | None
    step_from: str  # "file" (the checkpoint states it) | "name" (the number in its name)
    candidates: int  # how many checkpoints the root holds
    notes: list[str] = field(default_factory=list)

    def describe(self, root: Path) -> str:
        """One line for stderr: what was picked under ``root`` and on what grounds."""
        if self.candidates == 1:
            single = Path(self.path) == Path(root)
            head = (
                f"--latest: {root} is a single checkpoint"
                if single
                else f"--latest: {root} holds one checkpoint: {self.path}"
            )
        else:
            how = "stated in the file" if self.step_from == "file" else "from its name"
            where = "listed in" if root.is_file() else "under"
            head = f"--latest: {self.path} (step {self.step}, {how}), the newest of {self.candidates} {where} {root}"
        return "; ".join([head, *self.notes])


@dataclass
class _Candidate:
    path: Path
    step: int | None
    step_from: str
    stated: int  # how many of lr/β1/β2/eps the file itself states (tie-break)
    error: str | None = None


def _candidates(root: Path) -> tuple[list[Path], list[str]]:
    """The checkpoints ``root`` names: a TF ``checkpoint`` file lists its prefixes; anything else is
    searched by :func:`find_checkpoints`. Notes say what was resolved on the way."""
    from adamdiag.io.checkpoints import find_checkpoints
    from adamdiag.io.checkpoints.tf import checkpoint_state, is_checkpoint_file

    if is_checkpoint_file(root):
        _, every, notes = checkpoint_state(root)
        if not every:
            raise InputError(f"{root}: names no checkpoint that exists here (model_checkpoint_path)")
        return every, notes
    return find_checkpoints(root), []


def _rank(path: Path, trust: bool) -> _Candidate:
    from adamdiag.io.checkpoints import open_checkpoint, step_from_name

    try:
        ck = open_checkpoint(path, trust=trust)
    except InputError as err:  # not Adam, damaged, or needs --trust-checkpoint: ranked by its name
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        return _Candidate(path, step_from_name(path), "name", 0, why)
    stated = 0
    for entry in ck.entries:
        if entry.shape is not None:
            sources = entry.hyper.get("sources") or {}
            # torch param groups always carry their values: no 'sources' dict means "in the file".
            stated = sum(1 for k in ("lr", "beta1", "beta2", "eps") if sources.get(k, "file") == "file")
            break
    if ck.step is not None:
        return _Candidate(path, ck.step, "file", stated)
    return _Candidate(path, step_from_name(path), "name", stated)


def latest_checkpoint(root: Path, *, trust: bool = False) -> LatestPick:
    """The checkpoint with the highest step under ``root`` (a directory, a TF ``checkpoint`` file, or a
    single checkpoint, which is its own latest).

    Raises :class:`InputError` when ``root`` holds no checkpoint, or when no candidate states a step
    (neither in the file nor in the name): there is then no "latest" to pick.
    """
    root = Path(root)
    paths, notes = _candidates(root)
    if not paths:
        raise InputError(f"{root}: no optimizer checkpoint found under it")
    if len(paths) == 1:
        c = _rank(paths[0], trust)
        return LatestPick(paths[0], c.step, c.step_from, 1, notes)
    ranked = [_rank(p, trust) for p in paths]
    stepped = [c for c in ranked if c.step is not None]
    if not stepped:
        raise InputError(
            f"{root}: none of its {len(ranked)} checkpoints states a step (in the file or its name): "
            "name the one to use instead of --latest"
        )
    top = max(c.step for c in stepped if c.step is not None)
    tied = [c for c in stepped if c.step == top]
    # max() keeps the first of equals: most hyperparameters stated in the file, then the name order.
    best = max(sorted(tied, key=lambda c: str(c.path)), key=lambda c: c.stated)
    if len(tied) > 1:
        others = ", ".join(_rel(c.path, root) for c in tied if c is not best)
        rivals = [c for c in tied if c is not best]
        if all(c.stated < best.stated for c in rivals):
            why = "its file states the most of lr/beta1/beta2/eps"
        elif all(c.stated == best.stated for c in rivals):
            why = "the first by path"
        else:
            why = "of those whose file states the most of lr/beta1/beta2/eps, the first by path"
        notes.append(f"{len(tied)} checkpoints are at step {top} (also {others}): took this one, {why}")
    unstepped = len(ranked) - len(stepped)
    if unstepped:
        notes.append(f"{unstepped} checkpoint(s) state no step and were not considered")
    if best.error is not None:
        notes.append(f"it does not open: {best.error}")
    if root.is_dir():
        _note_checkpoint_file(best.path, notes)
    return LatestPick(best.path, best.step, best.step_from, len(ranked), notes)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it (ties across runs need the run's folder)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _note_checkpoint_file(picked: Path, notes: list[str]) -> None:
    """Say so when the TF ``checkpoint`` file beside the pick names another checkpoint as its latest
    (a run restarted from an older save rewrites it): the highest step still wins, but not silently."""
    from adamdiag.io.checkpoints.tf import checkpoint_state, is_checkpoint_file

    f = picked.parent / "checkpoint"
    if not is_checkpoint_file(f):
        return
    try:
        named, _, _ = checkpoint_state(f)
    except InputError:
        return
    if named is not None and named.resolve() != picked.resolve():
        notes.append(f"{f} names {named.name} as the latest; took the higher step")


def single_checkpoint(path: Path, *, latest: bool, trust: bool = False) -> Path:
    """The one checkpoint a command that starts from one checkpoint (``replay``) uses for ``path``.

    ``latest``: the highest step under ``path`` (said on stderr). Without it, a directory that holds
    exactly one checkpoint means that one; one that holds several is an :class:`InputError` naming
    the steps, scan's ``verify:`` line (the last checkpoint before the blowup, where a replay starts) and
    ``--latest`` (the newest is a guess only the user may make: it is usually after the blowup, and a run
    restarted from an older save has newer files that are not the ones wanted). Anything else is returned as given, for
    the command's own reader to accept or refuse.
    """
    from adamdiag.console import info
    from adamdiag.io.checkpoints import find_checkpoints, step_from_name

    path = Path(path)
    if latest:
        pick = latest_checkpoint(path, trust=trust)
        info(pick.describe(path))
        return pick.path
    if not path.is_dir():
        return path
    found = find_checkpoints(path)
    if not found or path in found:
        return path
    if len(found) == 1:
        info(f"{path} holds one checkpoint: {found[0]}")
        return found[0]
    steps = sorted({s for p in found if (s := step_from_name(p)) is not None})
    shown = f" (named steps {steps[0]}…{steps[-1]})" if steps else ""
    # A replay must start before the blowup, and the newest save usually comes after it: point at scan,
    # whose verify: line names the last checkpoint before the logged blowup, before --latest.
    raise InputError(
        f"{path} holds {len(found)} checkpoints{shown}: name the last one before the blowup (the one in "
        f"`adamdiag scan RUN`'s verify: line), or pass --latest for the one with the highest step"
    )
