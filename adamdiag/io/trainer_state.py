"""Hugging Face ``Trainer``'s ``trainer_state.json`` as a log: its ``log_history`` holds every point the Trainer
logged (loss, grad_norm, learning_rate, epoch every ``logging_steps``; eval metrics), and every ``checkpoint-N/``
has one. Since transformers 5 ``report_to`` defaults to ``"none"``: a Trainer run writes no TensorBoard files at
all, and this file is the only log it leaves.

Read into the same columns as an event file (:class:`adamdiag.io.events.FileData`), the tags named as the
Trainer's own TensorBoard callback names them (``rewrite_logs``: ``eval_loss`` → ``eval/loss``, ``test_*`` →
``test/*``, anything else ``train/<key>``), at ``step`` (the Trainer's ``global_step``), so that a run scanned
from its trainer_state.json reads as the same run logged to TensorBoard.

>>> tag_of("loss"), tag_of("eval_loss"), tag_of("test_accuracy")
('train/loss', 'eval/loss', 'test/accuracy')
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError
from adamdiag.io.events import TRAINER_STATE
from adamdiag.io.filekind import ZIP_DAMAGE

if TYPE_CHECKING:
    from adamdiag.io.events import FileData

# HF Trainer's checkpoint folders in its output_dir (also how scan finds them beside the logs)
HF_CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")
# json.dumps(sort_keys=True) puts global_step before log_history: found in the file's first bytes
_GLOBAL_STEP = re.compile(rb'"global_step":\s*(\d+)')
_HEAD_BYTES = 1 << 16
# A trainer_state.json of 10^5 logged points is ~20 MB; anything far larger is not one.
MAX_BYTES = 1 << 30


def tag_of(key: str) -> str:
    """The TensorBoard tag the Trainer's TensorBoardCallback writes for a ``log_history`` key."""
    for prefix, folder in (("eval_", "eval/"), ("test_", "test/")):
        if key.startswith(prefix):
            return folder + key[len(prefix) :]
    return "train/" + key


def output_dir_of(state_file: Path, searched: Path) -> Path:
    """The run a trainer_state.json belongs to: the Trainer's ``output_dir`` (the folder above
    ``checkpoint-N/``) when that lies inside the searched path, else its own folder."""
    parent = state_file.parent
    if HF_CHECKPOINT_DIR.fullmatch(parent.name) and parent != searched:
        return parent.parent
    return parent


def newest_state(run: Path) -> Path | None:
    """The run's trainer_state.json with the most history: the highest ``global_step`` among
    ``run/trainer_state.json`` and ``run/checkpoint-*/trainer_state.json`` (each checkpoint's holds the
    log up to its step), the later-written on a tie."""
    candidates = [run / TRAINER_STATE]
    try:
        candidates += [d / TRAINER_STATE for d in run.iterdir() if HF_CHECKPOINT_DIR.fullmatch(d.name)]
    except OSError:
        pass
    best: tuple[int, float, str] | None = None
    pick = None
    for f in candidates:
        try:
            if not f.is_file():
                continue
            with open(f, "rb") as fh:
                m = _GLOBAL_STEP.search(fh.read(_HEAD_BYTES))
            key = (int(m.group(1)) if m else -1, f.stat().st_mtime, f.name)
        except OSError:
            continue
        if best is None or key > best:
            best, pick = key, f
    return pick


def read_trainer_state(path: Path | str) -> FileData:
    """One trainer_state.json as event-file columns. Raises :class:`InputError` (one line) when the
    file cannot be read or is not a Trainer state."""
    from adamdiag.io.events import TRAINER_STATE_VERSION
    from adamdiag.io.framework_logs import LogRows, read_log_file

    path = Path(path)
    raw, size, mtime = read_log_file(path, MAX_BYTES, "trainer_state.json")
    try:
        state = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError as e:
        raise InputError(
            f"{path}: not valid JSON ({str(e).splitlines()[0]}): a truncated or damaged trainer_state.json"
        ) from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise InputError(f"{path}: no log_history list in it: not a Hugging Face Trainer state")
    rows = LogRows()
    for entry in history:
        step = entry.get("step") if isinstance(entry, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            rows.skipped["log_history entries without a step"] += 1
            continue
        for key, value in entry.items():
            if key == "step":
                continue
            # the Trainer's TensorBoard callback writes ints and floats (a NaN loss too), nothing else
            if isinstance(value, bool) or not isinstance(value, int | float):
                rows.skipped["non-numeric log values"] += 1
                continue
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf if value > 0 else -math.inf
            rows.add(tag_of(str(key)), step, number)
    empty = (
        [] if rows.codes else [f"{path}: its log_history holds no logged value (saved before the first logging step?)"]
    )
    return rows.file_data(
        path,
        size,
        mtime,
        version=TRAINER_STATE_VERSION,
        kind="trainer_state",
        records=len(history),
        warnings=empty,
        note=describe(path),
        arguments=_arguments_beside(path),
    )


def _arguments_beside(state: Path) -> dict[str, Any]:
    """The TrainingArguments pickled beside a state (a Trainer run without TensorBoard), with where from."""
    from adamdiag.io.events import ARGS_SOURCE

    args = training_arguments(state.parent / TRAINING_ARGS)
    if args:
        args[ARGS_SOURCE] = os.path.join(state.parent.name, TRAINING_ARGS)
    return args


def describe(path: Path | str) -> str:
    """The note scan prints for a run read from a trainer_state.json."""
    p = Path(path)
    where = os.path.join(p.parent.name, p.name) if HF_CHECKPOINT_DIR.fullmatch(p.parent.name) else p.name
    return (
        f"read from Hugging Face's {where} (the Trainer's log_history: its loss is the mean over each "
        "logging interval, as in its TensorBoard logs); no TensorBoard event files in this run"
    )


TRAINING_ARGS = "training_args.bin"
# What a pickled TrainingArguments names: its own class, transformers' / accelerate's enums and config
# classes, torch.device. Each is replaced by an inert stand-in: nothing is imported, no code from the file runs.
_ARGS_MODULES = ("transformers.", "accelerate.")


class _StandIn:
    """Any object the pickle builds: keeps the arguments it was called with and the state it was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _enum_member(cls: Any, name: Any) -> _StandIn:
    """Stands in for ``getattr(EnumClass, "NAME")`` on one of the stand-in classes only: the member, by its name
    in lower case (transformers' enum values are their names in lower case: ``IntervalStrategy.STEPS`` = "steps")."""
    import pickle

    if not (isinstance(cls, type) and issubclass(cls, _StandIn) and isinstance(name, str)):
        raise pickle.UnpicklingError("getattr on something other than a TrainingArguments enum")
    return cls(name.lower())


def _plain(value: Any) -> Any:
    """An argument's value as JSON would hold it: an enum member or a torch.device by its value."""
    if isinstance(value, _StandIn):
        args: tuple[Any, ...] = tuple(getattr(value, "args", ()))
        return args[0] if len(args) == 1 and isinstance(args[0], str | int | float) else None
    return value if isinstance(value, str | int | float | bool) or value is None else None


def training_arguments(path: Path) -> dict[str, Any]:
    """The fields of the ``TrainingArguments`` the Trainer pickled into ``training_args.bin`` beside its
    trainer_state.json (``max_grad_norm``, ``adam_beta2``, ``adam_epsilon``, ...: what its TensorBoard ``args`` text
    summary would hold), read without transformers and without running code; {} when absent or unreadable.

    The file is a torch zip whose pickle names TrainingArguments and a few enums; those become inert stand-ins
    (:class:`_StandIn`), anything else stops the read.
    """
    import pickle
    import zipfile

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.startswith(_ARGS_MODULES) or (module == "torch" and name == "device"):
                return type(name, (_StandIn,), {})
            if module in ("builtins", "__builtin__") and name == "getattr":
                # Python 3.11.0-3.11.4 (Debian 12's system Python) pickle an enum member as getattr(Enum, "NAME")
                return _enum_member
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a TrainingArguments")

        def persistent_load(self, pid: Any) -> Any:
            raise pickle.UnpicklingError("tensor data in training_args.bin")

    # what a damaged file raises while it is read (it is optional: nothing read then)
    damage: tuple[type[BaseException], ...] = (*ZIP_DAMAGE, pickle.UnpicklingError, TypeError, AttributeError)
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                return {}
            import io

            obj = _Unpickler(io.BytesIO(z.read(name))).load()
    except damage:
        return {}
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return {}
    return {str(k): v for k, v in ((k, _plain(v)) for k, v in state.items()) if v is not None}
