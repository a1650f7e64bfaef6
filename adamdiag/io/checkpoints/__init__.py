"""Optimizer-checkpoint reader: Adam/AdamW moments (m = exp_avg, v = exp_avg_sq) tensor by tensor.

Layouts (found by content, not by file name, wherever that is possible):

* ``torch``      — a ``torch.save`` file holding an ``optimizer.state_dict()`` anywhere in it (a bare one,
  ``{'model', 'optimizer', 'step'}``, any key path: the optimizer is the dict with ``state`` and
  ``param_groups``); a bare optimizer file is paired with a model file beside it (``optimizer_100.pt``
  ↔ ``model_100.pt``, ``model.pt``, ``model.safetensors``, ...).
* ``lightning``  — a PyTorch Lightning ``.ckpt`` (``optimizer_states``, ``state_dict``, ``global_step``).
* ``hf``         — a Hugging Face ``Trainer`` ``checkpoint-N/`` directory (``optimizer.pt`` + ``model.safetensors``
  or ``pytorch_model.bin``, ``trainer_state.json``); ``accelerate`` — ``save_state`` output
  (``optimizer.bin`` + ``model.safetensors``).
* ``dcp``        — a ``torch.distributed.checkpoint`` directory (``.metadata`` + ``*.distcp``), read without a
  process group, one tensor at a time.

Optimizer states: torch's Adam family (Adam, AdamW, NAdam, amsgrad, fused/foreach; RAdam and SparseAdam
in the tf eps convention, :data:`TF_EPS_OPTIMIZERS`), bitsandbytes' 8-/32-bit Adam (:mod:`.bnb`) and
torchao's 8-bit/4-bit/fp8 Adam (:mod:`.torchao_lowbit`), both dequantized as the library does. Other
optimizers are refused naming them (:class:`NotAdamError`), and so are other tensor subclasses (a rank's
DTensor shards): their memory is not the values they stand for.

Memory: torch files are opened with ``torch.load(mmap=True, weights_only=True)``; tensors stay on disk
until touched. Safety (:mod:`.torchload`, where every torch file is opened): ``weights_only=True`` always comes
first; objects of the training's own classes load as inert stand-ins (a pickled model as its parameters), a
call to anything outside torch's safe list is refused, and only ``trust=True`` (the CLI's
``--trust-checkpoint``) may fall back to full unpickling, with a warning on stderr.

Names: optimizer state is keyed by the parameter's index in param-group order. Names come from
``param_names`` (torch ≥ 2.6 optimizers built from ``named_parameters()``), from FQN keys (DCP), or
from the model's parameter order and shapes (:func:`map_names`) — and only where that mapping is
unique; otherwise the tensor is labelled ``group g / index i``. A wrong name is worse than none.
Several optimizers in one file: a file with one model over them all (Lightning) interleaves their
groups into it; a file with a model per network (GANs: ``netG``/``netD``/``optimizerG``/``optimizerD``)
pairs each optimizer with its model(s) by key and shapes (:mod:`.pairing`: ``<model key>.<parameter>``);
accelerate's ``optimizer_k.bin`` goes with ``model_k.safetensors`` where it fits exactly; an unnamed
tensor of one of several optimizers is ``<optimizer key>/group g / index i``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamdiag.errors import InputError, NotAdamError, missing_path
from adamdiag.errors import UntrustedCheckpointError as UntrustedCheckpointError  # re-exported, as before
from adamdiag.io.checkpoints import hyper as hyper_policy
from adamdiag.io.checkpoints import lookalikes
from adamdiag.io.checkpoints.hyper import Assumptions

# safe loading lives in its own module; these are the names this package and its readers use
from adamdiag.io.checkpoints.torchload import (
    _MAX_DEPTH,
    _is_tensor,
    _zip_pickle_mentions,
    non_regular,
    torch_load,
)
from adamdiag.io.checkpoints.torchload import _first_line as _first_line  # re-exported: dcp, dcp_hf, tf
from adamdiag.io.checkpoints.torchload import _warn_trust as _warn_trust
from adamdiag.io.checkpoints.torchload import open_regular as open_regular

if TYPE_CHECKING:  # torch is imported lazily: the CLI imports this package at start-up
    import torch

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin", "optimizer.pth", "optim.pt", "optimizer_0.bin")
MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.pt",
    "model.pth",
    "model.bin",
)
# Names of single-file checkpoints (torch, Keras/HDF5): a *directory* named like one that holds no
# checkpoint is said to be skipped (an unpacked or half-written save), not passed over without a word.
CHECKPOINT_FILE_SUFFIXES = (*TORCH_SUFFIXES, ".h5", ".hdf5", ".keras")
# What the pickle of a torch file that holds an optimizer state mentions (torch's state_dict; fastai's Adam state)
OPTIMIZER_STATE_MARKS = (b"param_groups", b"sqr_avg")
# Files that live inside checkpoints but never hold optimizer state (not worth opening).
NON_OPTIMIZER_NAMES = re.compile(r"^(scheduler|rng_state|random_states|training_args|scaler|sampler)", re.I)
# Buffers torch's own modules register (BatchNorm/InstanceNorm): never parameters, and their
# shapes equal the norm's weight/bias, which would make every norm layer ambiguous.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Keys that hold the training step in checkpoint dicts, in order of preference.
STEP_KEYS = ("global_step", "step", "iteration", "iter", "num_updates", "steps", "train_step")
# Per-parameter state keys of other optimizers: named in the "not an Adam state" message.
KNOWN_STATE_KEYS = {
    "momentum_buffer": "SGD (momentum_buffer)",
    "exp_avg_sq_row": "Adafactor (exp_avg_sq_row/exp_avg_sq_col)",
    "exp_avg_sq_col": "Adafactor (exp_avg_sq_row/exp_avg_sq_col)",
    "exp_inf": "Adamax (exp_inf)",
    "row_var": "Adafactor (row_var/col_var)",
    "col_var": "Adafactor (row_var/col_var)",
    "variance": "Adafactor (variance)",
    "sum": "Adagrad (sum)",
    "square_avg": "RMSprop (square_avg)",
    "acc_delta": "Adadelta (acc_delta)",
    "state1": "bitsandbytes 8-bit optimizer (state1/state2)",
    "prev": "Rprop (prev)",
    "old_dirs": "LBFGS (old_dirs/old_stps/H_diag)",
    "ax": "ASGD (ax)",
    # schedulefree's AdamWScheduleFree: Adam's v but no m (it averages iterates instead: z)
    "z": "Schedule-Free AdamW/SGD (z)",
    "hessian": "Sophia (hessian)",
    "exp_avg_var": "AdaBelief (exp_avg_var)",
    "exp_hessian_diag_sq": "AdaHessian (exp_hessian_diag_sq)",
    "grad_sum_sq": "MADGRAD (grad_sum_sq)",
    "approx_hessian": "Apollo (approx_hessian)",
    "exp_avg_sq_r": "Adafactor (exp_avg_sq_r/exp_avg_sq_c)",
    "exp_avg_sq_c": "Adafactor (exp_avg_sq_r/exp_avg_sq_c)",
}
# Adafactor's factored second moment (torch.optim.Adafactor, Hugging Face / fairseq Adafactor): where
# these are present the state is Adafactor's even if some 1-D tensors hold exp_avg/exp_avg_sq — those
# are Adafactor's unfactored v (β2 = 1 - t^-0.8, eps added to g², m an EMA of the *update*), not Adam's.
ADAFACTOR_STATE_KEYS = ("exp_avg_sq_row", "exp_avg_sq_col", "row_var", "col_var", "exp_avg_sq_r", "exp_avg_sq_c")
ADAFACTOR_GROUP_KEYS = ("decay_rate", "clip_threshold", "relative_step")
# Optimizers whose eps is added to the un-corrected √v (step lr·√(1-β2^t)/(1-β1^t) · m/(√v+eps)): the
# tf convention (:func:`_optimizer_kind`). torch.optim.RAdam (its adaptive term √bc2/(√v+eps)) and
# torch.optim.SparseAdam (step_size lr·√bc2/bc1, denominator √v+eps).
TF_EPS_OPTIMIZERS = (
    "RAdam",
    "SparseAdam",
    *(la.name for la in lookalikes.LOOKALIKES if la.tf_eps and la.name != "RAdam"),
)
# Adam-like states inspect and scan read (saying what differs) but replay cannot re-run: it steps
# torch.optim.Adam/AdamW in float32, which would be another run (:func:`replay_refusal`)
NOT_REPLAYABLE = frozenset({"NAdam", "RAdam", "SparseAdam", "Adafactor"}) | lookalikes.NAMES


@dataclass
class TensorMoments:
    """One parameter's Adam state (torch tensors, possibly memory-mapped: read-only)."""

    name: str | None  # parameter name when resolvable, else None (label 'group g / index i')
    index: int | str  # optimizer state key (int index, or FQN for DCP)
    group: int
    shape: tuple[int, ...]
    step: int | None
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    max_exp_avg_sq: torch.Tensor | None = None
    param: torch.Tensor | None = None  # the parameter value if the checkpoint holds the model
    decoupled_weight_decay: bool | None = None  # True: AdamW; False: Adam (L2); None: unknown
    maximize: bool = False
    # TF/Keras readers: (1-β1^t, 1-β2^t) as the optimizer itself used them where that differs from
    # the step's (TF1 beta2_power underflowed to 0: TF divides by 1), and where each hyperparameter
    # came from ('file' | 'default' | 'unknown'; the <name>_source keys of docs/architecture.md, "Contracts").
    bias_correction: tuple[float, float] | None = None
    hyper_source: dict[str, str] | None = None
    # which optimizer of the checkpoint this tensor belongs to: {"index", "key", "type"} (a file can
    # hold several: a GAN's two Adams, Muon + AdamW); state indices repeat across optimizers.
    optimizer: dict[str, Any] | None = None
    # For values a reader put together from pieces (DeepSpeed's flat partitions): per state key, the
    # stored tensors they came from — the zip CRC check verifies those instead of the copy.
    crc_sources: dict[str, list[Any]] | None = None

    @property
    def label(self) -> str:
        return self.name if self.name else f"group {self.group} / index {self.index}"


@dataclass
class _Entry:
    """A parameter slot of the optimizer: what is known before any tensor is read."""

    group: int
    index: int | str
    pos: int  # position inside its group's 'params' list
    name: str | None
    shape: tuple[int, ...] | None  # None: the optimizer holds no state for it (never stepped)
    hyper: dict[str, Any]
    optimizer: dict[str, Any] | None = None  # {"index", "key", "type"} of the optimizer it belongs to
    # A parameter cut out of one flat state (fairseq's FP16Optimizer): (the flat slot's index, offset, elements,
    # the flat state's length)
    flat: tuple[int | str, int, int, int] | None = None


@dataclass
class OptimizerCheckpoint:
    """An opened checkpoint: metadata now, tensors on demand (:meth:`tensors` streams them)."""

    path: str
    step: int | None
    layout: str  # "torch" | "lightning" | "hf" | "accelerate" | "dcp"
    # "Adam" | "AdamW" | "NAdam" | "RAdam" | "SparseAdam" | "Adam/AdamW (bitsandbytes 8-bit)" | "unknown-adam" (+-joined)
    optimizer: str
    convention: str  # "torch" | "tf"
    name_mapping: str  # "param_names" | "fqn" | "model-order" | "shape-unique" | "partial" | "ambiguous" | "none"
    warnings: list[str] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list, repr=False)
    # (entry) -> per-parameter state dict with tensors; (name) -> parameter tensor or None
    _fetch_state: Callable[[_Entry], dict[str, Any]] | None = field(default=None, repr=False)
    _fetch_param: Callable[[str], Any] | None = field(default=None, repr=False)
    # hands the tensors a reader assembled back to its buffer pool (buffers.BufferPool.give_back)
    _recycle: Callable[..., None] | None = field(default=None, repr=False)
    # Address ranges of the file mappings behind the tensors (for releasing pages after use).
    mmap_files: list[str] = field(default_factory=list, repr=False)
    # Optimizers in the file that are not Adam-family: {"index", "key", "type"} (type says what they are).
    other_optimizers: list[dict[str, Any]] = field(default_factory=list)
    # The two step quantities (:func:`resolve_steps`): ``step`` is the log step (global_step & co, for
    # lining up with the event files); ``optimizer_step`` Adam's own t (the largest per-parameter
    # state step; each tensor's bias correction uses its own). None where the reader does not say.
    optimizer_step: int | None = None

    @property
    def log_step(self) -> int | None:
        return self.step

    def __len__(self) -> int:
        return sum(1 for e in self.entries if e.shape is not None)

    def tensors(self, *, with_params: bool = True) -> Iterator[TensorMoments]:
        """Yield every parameter that has Adam state, in optimizer order (group, then position)."""
        for e in self.stateful_entries():
            yield self.tensor(e, with_params=with_params)

    def recycle(self, t: TensorMoments) -> None:
        """``t`` is no longer used: memory the reader assembled it in may hold the next tensor.
        Only for a caller that keeps no reference to ``t``'s tensors (``summarize_checkpoint``)."""
        if self._recycle is not None:
            self._recycle(t.exp_avg, t.exp_avg_sq, t.max_exp_avg_sq, t.param)

    def stateful_entries(self) -> list[_Entry]:
        """The entries that have Adam state (what :meth:`tensors` yields), in optimizer order."""
        return [e for e in self.entries if e.shape is not None]

    def tensor(self, e: _Entry, *, with_params: bool = True) -> TensorMoments:
        """Read one entry's state (and parameter). Readers open files per call or share read-only
        mappings, so entries may be read from several threads at once (``summarize_checkpoint(jobs=)``)."""
        assert self._fetch_state is not None and e.shape is not None
        st = self._fetch_state(e)
        h = e.hyper
        # m and v (and amsgrad's max) of one parameter have its element count in every Adam: a
        # mismatch is a damaged or foreign state, and every statistic would pair wrong elements
        sizes = {
            k: int(st[k].numel())
            for k in ("exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if h["amsgrad"] else ()))
            if _is_tensor(st.get(k))
        }
        if len(set(sizes.values())) > 1:
            label = e.name or f"group {e.group} / index {e.index}"
            raise InputError(
                f"{self.path}: `{label}`: {', '.join(f'{k} has {n} elements' for k, n in sizes.items())}: "
                "not a state Adam writes (the file is damaged)"
            )
        param = None
        master: Any = st.get("master_param")
        if with_params and _is_tensor(master) and sizes and master.numel() == next(iter(sizes.values())):
            # Transformer Engine's FusedAdam(master_weights=True) keeps the fp32 master weight in the state (its
            # state_dict() hands it over unscaled): what Adam updates, not the bf16/fp8 model weight
            param = master
        elif with_params and e.name is not None and self._fetch_param is not None:
            param = self._fetch_param(e.name)
        return TensorMoments(
            name=e.name,
            index=e.index,
            group=e.group,
            shape=e.shape,
            step=_state_step(st, h),
            lr=h["lr"],
            beta1=h["beta1"],
            beta2=h["beta2"],
            eps=h["eps"],
            weight_decay=h["weight_decay"],
            amsgrad=h["amsgrad"],
            exp_avg=st["exp_avg"],
            exp_avg_sq=st["exp_avg_sq"],
            max_exp_avg_sq=st.get("max_exp_avg_sq") if h["amsgrad"] else None,
            param=param,
            decoupled_weight_decay=h.get("decoupled_weight_decay"),
            maximize=bool(h.get("maximize", False)),
            bias_correction=h.get("bias"),
            hyper_source=h.get("sources"),
            optimizer=e.optimizer,
            crc_sources=st.get("_crc_sources"),
        )


# --- small helpers --------------------------------------------------------------------------------
def _as_int(x: Any) -> int | None:
    if x is None:
        return None
    try:
        if hasattr(x, "numel"):
            if x.numel() != 1:
                return None
            x = x.item()
        return int(x)
    except (TypeError, ValueError, RuntimeError):
        return None


def _as_float(x: Any, default: float = float("nan")) -> float:
    if x is None:
        return default
    try:
        return float(x.item() if hasattr(x, "item") else x)
    except (TypeError, ValueError, RuntimeError):
        return default


def step_from_name(path: Path) -> int | None:
    """The step a file/dir name states: ``step=200`` / ``step_000100`` / ``checkpoint-500`` / last number."""
    name = path.name
    m = re.search(r"step[=_\-]?(\d+)", name, re.I) or re.search(r"checkpoint[-_](\d+)", name, re.I)
    if m:
        return int(m.group(1))
    nums = re.findall(r"\d+", path.stem if path.is_file() else name)
    return int(nums[-1]) if nums else None


# --- loading ---------------------------------------------------------------------------------------
def _checkpoint_dir_kind(d: Path) -> str | None:
    from adamdiag.io.checkpoints import deepspeed

    if (d / ".metadata").is_file():
        return "dcp"
    if deepspeed.is_tag_dir(d):
        return "deepspeed"
    if any((d / n).is_file() for n in OPTIMIZER_FILES):
        return "hf" if (d / "trainer_state.json").is_file() else "accelerate"
    from adamdiag.io.checkpoints import dcp_hf

    if dcp_hf.is_hf_dcp_dir(d):
        return "dcp-hf"
    return None


def find_checkpoints(root: Path, *, skipped: list[str] | None = None) -> list[Path]:
    """Optimizer checkpoints under ``root`` (a file is returned as is): torch files that hold an
    optimizer state (checked by reading the pickle's bytes, without unpickling), and checkpoint
    directories (DCP, HF ``checkpoint-N``, accelerate). Sorted by the step in the name, then name.
    Linked folders are followed, as the event-file walker follows them (checkpoints on another volume,
    ``checkpoints -> /scratch/run7/ckpt``, are a common layout), but each real folder is entered once, so a
    link loop ends.
    A FIFO, socket or device with a checkpoint's name is never opened (a FIFO would block forever):
    it is left out, with a message in ``skipped`` (scan: a run warning, AD902). So is a directory named
    like a single-file checkpoint (``step_000050.pt/``) that is no checkpoint folder and holds none
    (:func:`_file_named_dirs_left_out`).

    Raises :class:`InputError` when ``root`` does not exist.
    """
    root = Path(root)
    # TensorFlow / Keras formats (adamdiag.io.checkpoints.tf): a bundle prefix is no file, so this
    # comes before the existence check; None means the path names none of them.
    from adamdiag.io.checkpoints.tf import find_foreign

    foreign = find_foreign(root)
    if foreign is not None and not root.is_dir():
        return foreign
    if not root.exists():
        raise missing_path(root)
    what = non_regular(root)
    if what:
        raise InputError(f"{root}: a {what}, not a checkpoint file or directory (not opened)")
    if root.is_file():
        return [root]
    if _checkpoint_dir_kind(root):
        return [root]
    found: list[Path] = []
    seen: set[str] = set()
    file_named: list[Path] = []  # directories named like a checkpoint file (step_000050.pt/)
    visited: set[str] = set()  # real folders entered: a folder reached again through a link is skipped
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        d = Path(dirpath)
        keep_dirs = []
        for sub in sorted(dirnames):
            if sub.startswith("."):
                continue
            if _checkpoint_dir_kind(d / sub):
                found.append(d / sub)
            else:
                keep_dirs.append(sub)
                if sub.endswith(CHECKPOINT_FILE_SUFFIXES) and not NON_OPTIMIZER_NAMES.match(sub):
                    file_named.append(d / sub)
        dirnames[:] = keep_dirs
        for fn in sorted(filenames):
            p = d / fn
            if not fn.endswith(TORCH_SUFFIXES) or NON_OPTIMIZER_NAMES.match(fn):
                continue
            what = non_regular(p)
            if what:
                if skipped is not None:
                    skipped.append(f"skipped {p}: a {what}, not a regular file (not opened)")
                continue
            mentions = _zip_pickle_mentions(p, OPTIMIZER_STATE_MARKS)
            if mentions is False:
                continue  # a model-only or other torch file
            if mentions is None and fn.endswith(".bin"):
                continue  # .bin that is no torch zip: not ours
            found.append(p)
    out = []
    for p in found:
        rp = os.path.realpath(p)
        if rp not in seen:
            seen.add(rp)
            out.append(p)
    out += foreign or []
    if skipped is not None:
        skipped += _file_named_dirs_left_out(file_named, out)
    big = 1 << 62
    return sorted(out, key=lambda p: (step_from_name(p) if step_from_name(p) is not None else big, str(p)))


def _file_named_dirs_left_out(dirs: list[Path], found: list[Path]) -> list[str]:
    """One message for each directory in ``dirs`` (named like a single-file checkpoint, and no DCP, HF,
    accelerate or DeepSpeed tag folder) under which nothing in ``found`` lies. A checkpoint folder may be
    named so — Lightning's FSDP (DCP) and DeepSpeed strategies save ``epoch=0-step=50.ckpt/`` — and is
    then found, or what it holds is; one that yields nothing is an unpacked or half-written save."""
    from adamdiag.io.checkpoints import deepspeed

    out = []
    for d in dirs:
        # by real path: a folder reached through a link may have been searched under its other name
        inside = os.path.realpath(d) + os.sep
        if any(os.path.realpath(p).startswith(inside) for p in found) or deepspeed.has_pointer(d):
            continue
        what = "a link to a directory" if d.is_symlink() else "a directory"
        out.append(
            f"skipped {d}: {what} named like a checkpoint file, with no checkpoint in it (no DCP, HF or "
            "DeepSpeed folder)"
        )
    return out


# --- walking a loaded object -----------------------------------------------------------------------
def _is_opt_state(x: Any) -> bool:
    return isinstance(x, dict) and isinstance(x.get("state"), dict) and isinstance(x.get("param_groups"), list | tuple)


def _is_model_state(x: Any) -> bool:
    if not isinstance(x, dict) or not x:
        return False
    vals = list(x.values())
    n_t = sum(1 for v in vals if _is_tensor(v))
    return all(isinstance(k, str) for k in x) and n_t >= 1 and n_t >= 0.9 * len(vals)


def _walk(obj: Any, path: tuple = (), depth: int = 0) -> Iterator[tuple[tuple, Any]]:
    yield path, obj
    if depth >= _MAX_DEPTH or _is_opt_state(obj) or _is_model_state(obj):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict | list | tuple):
                yield from _walk(v, (*path, k), depth + 1)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            if isinstance(v, dict | list | tuple):
                yield from _walk(v, (*path, i), depth + 1)


def _keypath(p: tuple) -> str:
    return "".join(f"[{k!r}]" for k in p) or "<top level>"


MODEL_KEY_PREFERENCE = ("model", "state_dict", "model_state_dict", "model_state", "module", "net", "network", "ema")


def _pick_model_state(obj: Any) -> tuple[tuple, dict] | None:
    cands = [(p, x) for p, x in _walk(obj) if _is_model_state(x)]
    if not cands:
        return None

    def rank(c):
        p, x = c
        last = str(p[-1]).lower() if p else ""
        pref = MODEL_KEY_PREFERENCE.index(last) if last in MODEL_KEY_PREFERENCE else len(MODEL_KEY_PREFERENCE)
        return (pref, -len(x))

    return sorted(cands, key=rank)[0]


def find_step(obj: Any) -> tuple[int, str] | None:
    """The step a checkpoint dict states, and the key it came from: ``STEP_KEYS`` in order of
    preference (``global_step`` first), at the top level, else in a trainer-state-like sub-dict."""
    if not isinstance(obj, dict):
        return None
    for key in STEP_KEYS:
        if key in obj:
            v = _as_int(obj[key])
            if v is not None:
                return v, key
    for sub in ("trainer_state", "meta", "metadata", "extra_state", "progress"):
        if isinstance(obj.get(sub), dict):
            found = find_step(obj[sub])
            if found is not None:
                return found[0], f"{sub}.{found[1]}"
    return None


def resolve_steps(
    stated: tuple[int, str] | None, optimizer_steps: Iterable[int | None], path: Path | None, warnings: list[str]
) -> tuple[int | None, int | None]:
    """(log_step, optimizer_step) of a checkpoint — how ``inspect``, ``scan`` and ``replay`` all read
    them (docs/architecture.md, "Contracts").

    * ``optimizer_step``: Adam's t, the largest per-parameter state ``step`` (bias correction).
    * ``log_step``: the step the event files use: what the checkpoint states (``stated``: value and
      key, e.g. ``global_step``; HF's ``trainer_state.json``), else the optimizer step, else the
      number in the file's name.

    They differ legitimately (a fresh optimizer after a restart, gradient accumulation counted in
    batches, a counter of epochs): when both are known and differ, a warning names both.
    """
    opt = max((s for s in optimizer_steps if s is not None), default=None)
    if stated is not None:
        log: int | None = stated[0]
        if opt is not None and opt != stated[0]:
            warnings.append(
                f"log_step {stated[0]} ({stated[1]}) and optimizer_step {opt} (the optimizer's own step count) "
                f"disagree: the event files are matched at step {stated[0]}, bias corrections use the optimizer's"
            )
    elif opt is not None:
        log = opt
    else:
        log = step_from_name(path) if path is not None else None
    return log, opt


def moments_without_a_step(ck: OptimizerCheckpoint, entries: Iterable[_Entry], unchecked: str) -> str | None:
    """A one-line warning when one of ``entries`` — those whose state ``step`` reads 0 — holds a nonzero
    m or v, else None. Adam counts the step before it first updates m and v, so that state is impossible:
    the step or the moments were damaged. For formats whose data carry no checksum (``unchecked``: what
    they are, e.g. "DCP shards"), where damaged bytes are otherwise read as if they were right. Never a
    refusal: the other tensors' statistics still hold. Only step-0 entries are read here: none in a
    checkpoint of a run that trained, so a sound checkpoint costs nothing."""
    bad: list[str] = []
    assert ck._fetch_state is not None
    for e in entries:
        st = ck._fetch_state(e)
        moments = [st[k] for k in ("exp_avg", "exp_avg_sq") if _is_tensor(st.get(k))]
        try:
            if any(bool(t.ne(0).any()) for t in moments):  # NaN counts: != 0
                bad.append(e.name or f"group {e.group} / index {e.index}")
        finally:
            if ck._recycle is not None:
                ck._recycle(*moments)
    if not bad:
        return None
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return (
        f"{ck.path}: `{bad[0]}`{more}: step 0 with nonzero m or v, which Adam cannot write (it counts the step "
        f"before it first updates them): the checkpoint looks damaged ({unchecked} carry no checksum)"
    )


# --- optimizer state -> entries --------------------------------------------------------------------
def _describe_non_adam(osd: dict) -> str:
    keys: set[str] = set()
    for st in osd["state"].values():
        if isinstance(st, dict):
            keys.update(str(k) for k in st)
    group_keys: set[str] = set()
    for g in osd["param_groups"]:
        if isinstance(g, dict):
            group_keys.update(g)
    known = sorted({v for k, v in KNOWN_STATE_KEYS.items() if k in keys})
    if not keys:
        if {"momentum", "dampening", "nesterov"} <= group_keys:
            return "an SGD state (param_groups with momentum/nesterov, no per-parameter state)"
        return "an empty optimizer state (saved before the first optimizer step?)"
    if known:
        return f"{', '.join(known)} state (per-parameter keys: {', '.join(sorted(keys))})"
    if "exp_avg" in keys and "exp_avg_sq" not in keys:
        return f"a momentum-only state such as Lion (per-parameter keys: {', '.join(sorted(keys))})"
    return f"an unknown optimizer state (per-parameter keys: {', '.join(sorted(keys))})"


def _is_adafactor(osd: dict) -> bool:
    """Adafactor (torch's, Hugging Face's, fairseq's): factored second-moment keys in any state, or
    Hugging Face/fairseq's group keys. Its 1-D tensors' exp_avg/exp_avg_sq are no Adam moments."""
    for st in osd["state"].values():
        if isinstance(st, dict) and any(k in st for k in ADAFACTOR_STATE_KEYS):
            return True
    return any(isinstance(g, dict) and all(k in g for k in ADAFACTOR_GROUP_KEYS) for g in osd["param_groups"])


def _is_sparse_adam(group: dict) -> bool:
    """torch.optim.SparseAdam's param group: exactly lr, betas, eps, maximize (no weight decay, no
    amsgrad, no foreach/fused flags), besides the parameters and what an lr scheduler adds."""
    return set(group) - {"params", "param_names", "initial_lr"} == {"lr", "betas", "eps", "maximize"}


def _radam_adaptive_from(beta2: float) -> int | None:
    """The first step at which torch.optim.RAdam uses √v at all (its ρ_t > 5); before, its update
    is momentum SGD. None when β2 is no number in (0, 1)."""
    if not (isinstance(beta2, float) and 0.0 < beta2 < 1.0):
        return None
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    for t in range(1, 100_000):
        if rho_inf - 2.0 * t * beta2**t / (1.0 - beta2**t) > 5.0:
            return t
    return None


def replay_refusal(optimizer: str) -> str | None:
    """Why ``replay`` (torch.optim.Adam/AdamW, float32) cannot re-run a state of ``optimizer`` (a checkpoint's
    optimizer name, '+'-joined for several), else None."""
    for kind in optimizer.split("+"):
        if "(bitsandbytes" in kind or "(torchao" in kind:
            return f"they hold {kind} state, which a float32 torch Adam would not reproduce"
        if kind in NOT_REPLAYABLE:
            return f"they hold {kind} state; replay re-runs torch.optim.Adam/AdamW, another optimizer"
    return None


def _optimizer_kind(osd: dict) -> tuple[str, list[str]]:
    warns = []
    g0 = osd["param_groups"][0] if osd["param_groups"] else {}
    sample = next((st for st in osd["state"].values() if isinstance(st, dict)), {})
    caution = lookalikes.caution_note(osd)
    if caution:
        warns.append(caution)
    like = lookalikes.identify(osd)
    if like is not None:
        warns.append(like.note or like.refuse or "")
        return like.name, warns
    if "momentum_decay" in g0 or "mu_product" in sample:
        warns.append(
            "NAdam state: √v̂ and eps mean what they mean for Adam (its denominator is √v̂+eps); update statistics "
            "use Adam's m̂ numerator, not NAdam's momentum-scheduled one (mu_product)"
        )
        return "NAdam", warns
    from adamdiag.io.checkpoints import bnb

    named = bnb.optimizer_name(osd)
    if named is not None:
        if "8-bit" in named:
            warns.append(
                "bitsandbytes 8-bit state: m and v are read as the optimizer dequantizes them (blockwise, 256 "
                "levels); a v under the dynamic map's smallest step (3.25e-7 of its block's absmax in bitsandbytes "
                "0.50) is stored as 0, so v = 0 there need not mean 'never received a gradient'"
            )
        return named, warns
    from adamdiag.io.checkpoints import torchao_lowbit

    named = torchao_lowbit.optimizer_name(osd)
    if named is not None:
        warns.append(torchao_lowbit.warning(osd))
        return named, warns
    if "amsgrad" not in g0 and "decoupled_weight_decay" in g0:
        b2 = _hyper(g0)["beta2"]
        start = _radam_adaptive_from(b2)
        when = f"from step {start} on (ρ_t > 5 at β2={b2:g}); before that its update is momentum SGD" if start else ""
        warns.append(
            "RAdam state (no amsgrad flag): its adaptive term is √(1-β2^t)/(√v+eps), eps on the un-corrected √v, "
            f"so eps is compared in the tf convention (eps/√(1-β2^t)); it divides by √v̂ only {when or 'once ρ_t > 5'}; "
            "update statistics leave out its rectification factor"
        )
        return "RAdam", warns
    if _is_sparse_adam(g0):
        warns.append(
            "SparseAdam state: it adds eps to the un-corrected √v (step lr·√(1-β2^t)/(1-β1^t)), so eps is compared "
            "in the tf convention (eps/√(1-β2^t)); rows that got no gradient kept their old m and v (no decay)"
        )
        return "SparseAdam", warns
    dwd = g0.get("decoupled_weight_decay")
    if dwd is True:
        return "AdamW", warns
    if dwd is False:
        return "Adam", warns
    return "unknown-adam", warns


def _hyper(group: dict) -> dict[str, Any]:
    """A torch param group's hyperparameters. One torch never leaves out is NaN ("unknown", see
    :mod:`adamdiag.io.checkpoints.hyper`) when a group lacks it, never a silent default."""
    betas: Any = group.get("betas")
    if _is_tensor(betas):
        betas = tuple(betas.tolist())
    b1, b2 = (_as_float(b) for b in betas) if isinstance(betas, list | tuple) and len(betas) == 2 else (math.nan,) * 2
    return {
        "lr": _as_float(group.get("lr")),
        "beta1": b1,
        "beta2": b2,
        "eps": _as_float(group.get("eps")),
        # SparseAdam has no weight decay at all (its group has no such key): 0, not unknown
        "weight_decay": 0.0 if _is_sparse_adam(group) else _as_float(group.get("weight_decay")),
        "amsgrad": bool(group.get("amsgrad", False)),
        "decoupled_weight_decay": group.get("decoupled_weight_decay"),
        "maximize": bool(group.get("maximize", False)),
        # apex's, Transformer Engine's and DeepSpeed's FusedAdam (Megatron-LM's optimizer) count steps per
        # param group, not per parameter, and may turn bias correction off there: m and v then enter the
        # update undivided (the divisors (1, 1))
        "group_step": _as_int(group.get("step")),
        "bias": (1.0, 1.0) if group.get("bias_correction", True) is False else None,
    }


def _state_step(st: dict, hyper: dict[str, Any]) -> int | None:
    """A parameter's step: its own state's (torch), else its param group's (a FusedAdam)."""
    own = _as_int(st.get("step"))
    return own if own is not None else hyper.get("group_step")


def entries_from_state_dict(osd: dict, path: Path) -> tuple[list[_Entry], bool]:
    """Optimizer slots in param-group order. Returns (entries, names_given) where names_given says
    that names came from ``param_names`` or FQN state keys. Raises InputError on non-Adam state."""
    state = osd["state"]
    if _is_adafactor(osd):
        raise NotAdamError(f"{path}: not an Adam optimizer state: found {_describe_non_adam(osd)}")
    like = lookalikes.identify(osd)
    if like is not None and like.refuse:
        raise NotAdamError(f"{path}: not an Adam optimizer state: found {like.name} state ({like.refuse})")
    has_adam = any(isinstance(st, dict) and "exp_avg" in st and "exp_avg_sq" in st for st in state.values())
    if not has_adam:
        raise NotAdamError(f"{path}: not an Adam optimizer state: found {_describe_non_adam(osd)}")
    entries: list[_Entry] = []
    names_given = True
    for g, group in enumerate(osd["param_groups"]):
        params = list(group.get("params", []))
        names = group.get("param_names")
        if names is not None and len(names) != len(params):
            names = None
        h = _hyper(group)
        if like is not None and like.uncorrected_in(group):
            h["bias"] = (1.0, 1.0)  # m and v stored uncorrected (or already unbiased): divided by nothing
        for j, pid in enumerate(params):
            st = state.get(pid)
            name = names[j] if names is not None else (pid if isinstance(pid, str) else None)
            if name is None:
                names_given = False
            shape = None
            lazy_shape = getattr(st, "shape", None) if isinstance(st, dict) else None
            if lazy_shape is not None:
                shape = tuple(lazy_shape)  # a reader's lazy state (bnb: dequantized when read)
            elif isinstance(st, dict) and _is_tensor(st.get("exp_avg")) and _is_tensor(st.get("exp_avg_sq")):
                shape = tuple(int(s) for s in st["exp_avg"].shape)
            entries.append(_Entry(group=g, index=pid, pos=j, name=name, shape=shape, hyper=h))
    return entries, names_given


# --- names from the model --------------------------------------------------------------------------
def model_candidates(model: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the model state_dict entries that can be parameters, in order: floating
    tensors, without BatchNorm statistics, and tied tensors (same storage) only once — the first
    name, as ``named_parameters()`` reports them."""
    seen: set[tuple] = set()
    out = []
    for name, t in model.items():
        if not _is_tensor(t) or not (t.is_floating_point() or t.is_complex()):
            continue
        if name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES:
            continue
        key = _storage_key(t)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append((name, tuple(int(s) for s in t.shape)))
    return out


def _storage_key(t: Any) -> tuple | None:
    try:
        if t.device.type == "meta":
            return None
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
    except (RuntimeError, NotImplementedError):
        return None


def map_names(
    groups: list[list[tuple[int, ...] | None]],
    candidates: list[tuple[str, tuple[int, ...]]],
    *,
    ordered: bool = True,
    max_states: int = 300_000,
) -> tuple[list[list[str | None]], str]:
    """Names for optimizer slots from the model's parameters, only where they are certain.

    ``groups``: per param group, the shapes of its slots in order (None: no state, shape unknown).
    ``candidates``: (name, shape) of the model's possible parameters, in model order.

    Assumption (``ordered``): each param group lists its parameters in model order — how groups are
    built in practice (``[p for n, p in model.named_parameters() if ...]``) — and the optimizer's
    parameters are a subset of the candidates (frozen parameters and buffers are skipped). Every
    interleaving of the groups into the model order that fits the shapes is considered; a slot is
    named only if it lands on the same candidate in all of them. ``ordered=False`` (model order
    unknown, e.g. a safetensors file, which stores keys sorted) names only shapes that occur exactly
    once on both sides.

    Returns (names per group, status): status is "model-order" (all named), "shape-unique",
    "partial", "ambiguous" (none named) or "unmatched" (no assignment fits the shapes).
    """
    out: list[list[str | None]] = [[None] * len(g) for g in groups]
    n_slots = sum(len(g) for g in groups)
    if n_slots == 0:
        return out, "model-order"
    if n_slots > len(candidates):
        return out, "unmatched"
    if not ordered:
        return _map_unordered(groups, candidates, out)
    feasible = _interleave_dp(groups, candidates, max_states)
    if feasible is None:
        return out, "ambiguous"
    if feasible == {}:
        return out, "unmatched"
    named = 0
    for (g, i), js in feasible.items():
        if len(js) == 1:
            out[g][i] = candidates[next(iter(js))][0]
            named += 1
    if named == n_slots:
        return out, "model-order"
    return out, ("partial" if named else "ambiguous")


def _map_unordered(groups, candidates, out):
    from collections import Counter

    if any(s is None for g in groups for s in g):
        return out, "ambiguous"
    cand_count = Counter(s for _, s in candidates)
    slot_count = Counter(s for g in groups for s in g)
    if any(slot_count[s] > cand_count[s] for s in slot_count):
        return out, "unmatched"
    by_shape = {s: n for n, s in candidates if cand_count[s] == 1}
    named = 0
    for g, shapes in enumerate(groups):
        for i, s in enumerate(shapes):
            if slot_count[s] == 1 and s in by_shape:
                out[g][i] = by_shape[s]
                named += 1
    total = sum(len(g) for g in groups)
    return out, ("model-order" if named == total else "shape-unique" if named else "ambiguous")


def _interleave_dp(groups, candidates, max_states) -> dict[tuple[int, int], set[int]] | None:
    """For every slot (g, i): the set of candidate positions it takes in some full interleaving.
    {} when none fits; None when the search exceeds ``max_states`` (then nothing is certain)."""
    k = len(groups)
    lens = tuple(len(g) for g in groups)
    n = len(candidates)
    skips_total = n - sum(lens)
    shapes = [s for _, s in candidates]

    def moves(state, j):
        ptrs, sk = state
        if sk < skips_total:
            yield (ptrs, sk + 1), None
        cs = shapes[j]
        for g in range(k):
            p = ptrs[g]
            if p < lens[g]:
                want = groups[g][p]
                if want is None or want == cs:
                    yield (ptrs[:g] + (p + 1,) + ptrs[g + 1 :], sk), (g, p)

    layers: list[set] = [{((0,) * k, 0)}]
    total = 1
    for j in range(n):
        nxt = set()
        for st in layers[j]:
            for st2, _ in moves(st, j):
                nxt.add(st2)
        total += len(nxt)
        if total > max_states:
            return None
        if not nxt:
            return {}
        layers.append(nxt)
    end = (lens, skips_total)
    if end not in layers[n]:
        return {}
    alive = {end}
    feasible: dict[tuple[int, int], set[int]] = {}
    for j in range(n - 1, -1, -1):
        alive_j = set()
        for st in layers[j]:
            for st2, slot in moves(st, j):
                if st2 in alive:
                    alive_j.add(st)
                    if slot is not None:
                        feasible.setdefault(slot, set()).add(j)
        alive = alive_j
    return feasible


def _apply_model_names(
    entries: list[_Entry], cands: list[tuple[str, tuple]], ordered: bool, warnings: list[str]
) -> str:
    n_groups = max((e.group for e in entries), default=-1) + 1
    groups: list[list] = [[] for _ in range(n_groups)]
    for e in entries:
        groups[e.group].append(e.shape)
    names, status = map_names(groups, cands, ordered=ordered)
    by_group_pos = {(e.group, e.pos): e for e in entries}
    for g, ns in enumerate(names):
        for i, nm in enumerate(ns):
            by_group_pos[(g, i)].name = nm
    n_unnamed = sum(1 for e in entries if e.shape is not None and e.name is None)
    if status == "unmatched":
        warnings.append("the model's parameter shapes do not fit the optimizer's: tensors are labelled by group/index")
    elif status in ("ambiguous", "partial") and n_unnamed:
        why = (
            "model order unknown (safetensors stores names sorted)"
            if not ordered
            else ("several parameters of equal shape could be in either place")
        )
        warnings.append(f"{n_unnamed} tensor(s) without a certain name ({why}): labelled 'group g / index i'")
    elif status == "model-order" and n_groups > 1:
        warnings.append(
            "names inferred from the model's parameter order and shapes (each param group "
            "assumed to list its parameters in model order)"
        )
    return status


def _check_named(entries: list[_Entry], cands: list[tuple[str, tuple]], warnings: list[str]) -> None:
    shape_of = dict(cands)
    bad = [e.name for e in entries if e.shape is not None and e.name in shape_of and shape_of[e.name] != e.shape]
    if bad:
        warnings.append(f"param_names disagree with the model's shapes for {len(bad)} tensor(s), e.g. {bad[0]}")


# --- model files beside an optimizer file ----------------------------------------------------------
class _ModelSource:
    """Model parameters: names in order (when the format keeps it), shapes, lazy tensors."""

    def __init__(
        self,
        names_shapes: list[tuple[str, tuple]],
        ordered: bool,
        get: Callable[[str], Any],
        desc: str,
        mmap_files: list[str] | None = None,
    ) -> None:
        self.cands = names_shapes
        self.ordered = ordered
        self.get = get
        self.desc = desc
        self.mmap_files = mmap_files or []  # memory-mapped files its tensors live in


def _model_from_state(sd: dict, mmap_files: list[str] | None = None) -> _ModelSource:
    return _ModelSource(model_candidates(sd), True, lambda n: sd.get(n), "model state_dict", mmap_files)


def _model_from_safetensors(files: list[Path]) -> _ModelSource:
    from safetensors import safe_open

    handles = []
    where: dict[str, Any] = {}
    shapes: list[tuple[str, tuple]] = []
    for f in files:
        try:
            h = safe_open(str(f), framework="pt", device="cpu")
            handles.append(h)
            for k in h.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
                sl = h.get_slice(k)
                dtype = str(sl.get_dtype())
                if not dtype.startswith(("F", "BF", "C")):
                    continue
                if k.rsplit(".", 1)[-1] in BUFFER_SUFFIXES:
                    continue
                where[k] = h
                shapes.append((k, tuple(int(s) for s in sl.get_shape())))
        except Exception as e:  # noqa: BLE001 - safetensors' own error type (a damaged header): one line
            raise InputError(
                f"{f}: not a readable safetensors file ({_first_line(str(e)) or type(e).__name__})"
            ) from None
    return _ModelSource(shapes, False, lambda n: where[n].get_tensor(n) if n in where else None, "safetensors")


def _model_beside(opt_path: Path, trust: bool, warnings: list[str]) -> _ModelSource | None:
    d = opt_path.parent
    cands: list[Path] = []
    stem = opt_path.name
    for word in ("optimizer", "optim", "opt"):
        if word in stem.lower():
            i = stem.lower().index(word)
            for repl in ("model", "pytorch_model", "weights", "net"):
                cands.append(d / (stem[:i] + repl + stem[i + len(word) :]))
            break
    numbered = _NUMBERED_OPTIMIZER.match(stem)
    if numbered and int(numbered.group(1)) >= 1:
        # accelerate's k-th optimizer: its model is model_k.safetensors; model.safetensors is the first one's
        cands += [d / f"model_{numbered.group(1)}.safetensors"]
    else:
        cands += [d / n for n in MODEL_FILES]
    for p in cands:
        if p == opt_path or not p.is_file():
            continue
        try:
            return _open_model_file(p, trust)
        except InputError as e:
            warnings.append(f"model file {p.name} beside the optimizer could not be read: {e}")
            return None
    return None


def shard_files(index: Path) -> list[Path]:
    """The weight files a sharded model's ``*.index.json`` names (its ``weight_map`` values), sorted."""
    try:
        wm = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{index}: unreadable shard index ({e})") from None
    return sorted({index.parent / f for f in wm.values()})


def _open_model_file(p: Path, trust: bool) -> _ModelSource:
    if p.name.endswith(".index.json"):
        files = shard_files(p)
        if p.name.startswith("model.safetensors"):
            return _model_from_safetensors(files)
        merged: dict[str, Any] = {}
        mapped = []
        for f in files:
            obj, mm = torch_load(f, trust=trust)
            merged.update(obj)
            if mm:
                mapped.append(os.path.realpath(f))
        return _model_from_state(merged, mapped)
    if p.suffix == ".safetensors":
        return _model_from_safetensors([p])
    obj, mm = torch_load(p, trust=trust)
    found = _pick_model_state(obj)
    if found is None:
        raise InputError(f"{p}: no model state_dict in it")
    return _model_from_state(found[1], [os.path.realpath(p)] if mm else [])


def _hf_model_order(d: Path, warnings: list[str]) -> list[tuple[str, tuple]] | None:
    """Model parameter order of a Hugging Face checkpoint, from ``config.json`` and the installed
    ``transformers`` (model built on the meta device: no weights, no code from the checkpoint —
    configs that need remote code are skipped)."""
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return None
    if cfg.get("auto_map") or not cfg.get("architectures"):
        return None
    try:
        import torch
        import transformers
    except ImportError:
        return None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # config complaints are not ours to print
    try:
        cls = getattr(transformers, cfg["architectures"][0])
        config = transformers.AutoConfig.from_pretrained(str(d))
        with torch.device("meta"):
            model = cls(config)
        return [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    except Exception as e:  # noqa: BLE001 - optional help for naming; never fatal
        warnings.append(f"could not rebuild the model from config.json for parameter order ({type(e).__name__})")
        return None
    finally:
        transformers.logging.set_verbosity(verbosity)


# --- open ------------------------------------------------------------------------------------------
def open_checkpoint(
    path: Path, *, trust: bool = False, convention: str | None = None, assume: Assumptions | None = None
) -> OptimizerCheckpoint:
    """Open an optimizer checkpoint (file or directory) without reading its tensors.

    Every entry's hyperparameters end with their sources ('file' | 'default' | 'user' | 'unknown'):
    ``assume`` (``--assume-*``) fills those the file does not store (:mod:`.hyper`, one policy for
    every format).

    Raises :class:`InputError` (missing path, no optimizer state, non-Adam state: the message names
    what was found) and :class:`UntrustedCheckpointError` (needs arbitrary unpickling; pass
    ``trust=True`` only for files you trust).
    """
    path = Path(path)
    if convention not in (None, "torch", "tf"):
        raise InputError(f"unknown convention {convention!r} (torch or tf)")
    ck = _open_any(path, trust)
    if convention:
        ck.convention = convention
    # one policy for every format: the user's assumptions, then what Adam cannot have stored
    hyper_policy.apply(ck.entries, assume, ck.warnings)
    hyper_policy.check_domain(ck.entries, path)
    return ck


def _open_any(path: Path, trust: bool) -> OptimizerCheckpoint:
    """The reader of ``path``'s format, its result as read (:func:`open_checkpoint` adds the rest)."""
    from adamdiag.io.checkpoints.tf import open_foreign  # TF / Keras formats (before: a prefix is no file)

    foreign = open_foreign(path)
    if foreign is not None:
        return foreign
    if not path.exists():
        raise missing_path(path)
    what = non_regular(path)
    if what:
        raise InputError(f"{path}: a {what}, not a checkpoint file (not opened)")
    if path.is_dir():
        from adamdiag.io.checkpoints import deepspeed

        kind = _checkpoint_dir_kind(path)
        if kind is None and deepspeed.has_pointer(path):
            kind = "deepspeed"  # a save directory or HF+DeepSpeed checkpoint-N/: `latest` names the tag
        if kind == "deepspeed":
            ck = deepspeed.open_deepspeed(path, trust=trust)
        elif kind == "dcp":
            from adamdiag.io.checkpoints.dcp import open_dcp

            ck = open_dcp(path, trust=trust)
        elif kind == "dcp-hf":
            from adamdiag.io.checkpoints.dcp_hf import open_hf_dcp

            ck = open_hf_dcp(path)
        elif kind in ("hf", "accelerate"):
            ck = _open_dir(path, kind, trust)
        else:
            raise InputError(f"{path}: directory holds no optimizer checkpoint (no .metadata, no optimizer.pt/.bin)")
    else:
        ck = _open_torch_file(path, trust)
    for e in ck.entries:  # one optimizer (DCP, DeepSpeed...): every tensor still says which
        if e.optimizer is None:
            e.optimizer = {"index": 0, "key": "", "type": ck.optimizer}
    return ck


def _keyname(p: tuple) -> str:
    """A key path as a dotted string for reports: ('optimizer_states', 1) -> 'optimizer_states.1'."""
    return ".".join(str(k) for k in p)


def _pick_optimizers(obj: Any, path: Path, warnings: list[str]) -> tuple[list[tuple[dict, tuple, dict]], list[dict]]:
    """Every optimizer state in ``obj`` (Lightning's ``optimizer_states`` list, ``optimizers: [...]``
    or ``{name: ...}``, a bare one). Returns ([(info, keypath, state_dict)] of the Adam-family ones,
    [info] of the others); info = {"index": position among all optimizers found, "key": dotted key
    path, "type": "Adam"/"AdamW"/... or what the other optimizer is}. Raises InputError when there
    is no optimizer, or no Adam-family one (naming what was found)."""
    states = [(p, x) for p, x in _walk(obj) if _is_opt_state(x)]
    if not states:
        model = _pick_model_state(obj)
        top = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
        extra = f"; it holds a model state_dict of {len(model[1])} tensors" if model else ""
        if isinstance(obj, dict) and "pytorch-lightning_version" in obj and "optimizer_states" not in obj:
            # ModelCheckpoint(save_weights_only=True) / trainer.save_checkpoint(..., weights_only=True)
            extra += " (a Lightning checkpoint saved with save_weights_only=True keeps no optimizer state)"
        if isinstance(obj, dict) and "per_bucket_numel" in obj:
            # Megatron's distributed optimizer, legacy format: exp_avg / exp_avg_sq as flat buffers per
            # (data-parallel rank, dtype, bucket), without the map from buffer ranges to parameters
            extra += (
                " — Megatron's distributed-optimizer buffers (distrib_optim.pt): flat m and v with no parameter "
                "names; a checkpoint saved with --ckpt-format torch_dist is read per parameter"
            )
        raise InputError(
            f"{path}: no optimizer state in it (no dict with 'state' and 'param_groups'; top-level keys: {top}){extra}"
        )
    adam: list[tuple[dict, tuple, dict]] = []
    others: list[dict] = []
    first_err = None
    from adamdiag.io.checkpoints import bnb, torchao_lowbit

    for i, (p, x) in enumerate(states):
        try:
            if bnb.is_bnb_state(x):
                x = bnb.adapt(x, path)  # its 8-bit/32-bit state1/state2 read as exp_avg/exp_avg_sq
            elif torchao_lowbit.is_state(x):
                x = torchao_lowbit.adapt(x, path)  # its quantized exp_avg/exp_avg_sq dequantized when read
            entries_from_state_dict(x, path)
            adam.append(({"index": i, "key": _keyname(p), "type": _optimizer_kind(x)[0]}, p, x))
        except InputError as e:
            first_err = first_err or e
            others.append({"index": i, "key": _keyname(p), "type": _describe_non_adam(x)})
    if not adam:
        raise first_err  # type: ignore[misc]
    per_param = per_parameter_optimizers(adam)
    if per_param is not None and not others:
        parent, _ = per_param
        warnings.append(
            f"{len(adam)} optimizers of one parameter each under '{parent or '<top level>'}' (an optimizer stepped in "
            "backward: torchtune's optimizer_in_bwd): each parameter named by its optimizer's key"
        )
    elif len(states) > 1:
        shown = adam[:MAX_OPTIMIZERS_LISTED]
        what = ", ".join(f"[{a['index']}] {a['key'] or '<top level>'} ({a['type']})" for a, _, _ in shown)
        if len(adam) > len(shown):
            what += f" and {len(adam) - len(shown)} more"
        warnings.append(f"{len(states)} optimizer states in the file; Adam-family ones analysed: {what}")
        for o in others:
            warnings.append(f"optimizer [{o['index']}] at {o['key'] or '<top level>'} is not Adam: {o['type']}")
    return adam, others


MAX_OPTIMIZERS_LISTED = 8  # in the one-line note on a file's several optimizers


def per_parameter_optimizers(adam: list[tuple[dict, tuple, dict]]) -> tuple[str, list[str]] | None:
    """(the key path they sit under, each one's last key) when a file's optimizers are one per parameter, keyed by
    its name under one dict — torchtune's ``optimizer_in_bwd`` recipe state, ``{param_name: optim.state_dict()}``
    (OptimizerInBackwardWrapper), the layout of any optimizer stepped from a gradient hook; None otherwise."""
    if len(adam) < 2:
        return None
    parents = {p[:-1] for _, p, _ in adam}
    names = [str(p[-1]) for _, p, _ in adam if p]
    if len(parents) != 1 or len(names) != len(adam) or len(set(names)) != len(names):
        return None
    for _, _, osd in adam:
        groups = osd.get("param_groups") or []
        params = [g.get("params") for g in groups if isinstance(g, dict)]
        if sum(len(x) if isinstance(x, (list, tuple)) else 2 for x in params) != 1:
            return None
    return _keyname(next(iter(parents))), names


def adam_optimizer_keys(obj: Any) -> list[str]:
    """The key paths of the Adam-family optimizer states in a loaded checkpoint object (those with
    ``exp_avg`` and ``exp_avg_sq``): replay, which steps one optimizer, refuses a file with several."""
    out = []
    for p, x in _walk(obj):
        if _is_opt_state(x) and any(
            isinstance(st, dict) and "exp_avg" in st and "exp_avg_sq" in st for st in x["state"].values()
        ):
            out.append(_keyname(p) or "<top level>")
    return out


def stepped_optimizers(obj: Any) -> list[str]:
    """Every optimizer state in a loaded checkpoint object that holds per-parameter state, as 'key (what)':
    what = its Adam kind, else the per-parameter keys (Muon's or SGD's 'momentum_buffer'). replay, which
    steps one torch.optim.Adam, refuses a file that stepped several (Muon for the matrices + AdamW for the
    rest: replaying the AdamW half alone is not the run)."""
    out = []
    for p, x in _walk(obj):
        if not _is_opt_state(x):
            continue
        per = [st for st in x["state"].values() if isinstance(st, dict) and st]
        if not per:
            continue
        name = _keyname(p) or "<top level>"
        if all("exp_avg" in st and "exp_avg_sq" in st for st in per):
            out.append(f"{name} ({_optimizer_kind(x)[0]})")
        else:
            out.append(f"{name} ({', '.join(sorted({k for st in per for k in st if k != 'step'}))})")
    return out


def several_optimizers_message(path: Any, keys: list[str], what: str = "Adam optimizers") -> str:
    """replay's one line for a file with several optimizers (a GAN's two Adams, Muon beside AdamW): what it
    cannot do, the choices."""
    return (
        f"{path}: holds {len(keys)} {what} ({', '.join(keys)}); replay re-runs one model with one "
        "torch.optim.Adam and cannot step them together: save the one to replay with its model as "
        "{'model': ..., 'optimizer': ..., 'step': ...} and replay that file, or pass --entry returning "
        "{'run': run} that trains them all (docs/replay.md, 'Any framework')"
    )


def _finish(
    path: Path,
    layout: str,
    opts: list[tuple[dict, tuple, dict]],
    model: _ModelSource | None,
    stated: tuple[int, str] | None,
    warnings: list[str],
    mmap_files: list[str],
    others: list[dict] | None = None,
    models: list[tuple[tuple, dict]] | None = None,
    *,
    sources: dict[int, _ModelSource | None] | None = None,
) -> OptimizerCheckpoint:
    """An OptimizerCheckpoint over one or several optimizer state dicts of one file/directory.
    ``models``: every model state dict of the file; with two or more, each optimizer is paired with
    the one(s) it steps where its key and shapes say so (:mod:`.pairing`, GAN checkpoints)."""
    entries: list[_Entry] = []
    names_given = True
    kinds = []
    given_of: dict[int, bool] = {}
    for info, _, osd in opts:
        es, given = entries_from_state_dict(osd, path)
        for e in es:
            e.optimizer = info
        entries += es
        names_given = names_given and given
        given_of[info["index"]] = given
        kind, w = _optimizer_kind(osd)
        kinds.append(kind)
        warnings += [x for x in w if x not in warnings]
    osds = {info["index"]: osd for info, _, osd in opts}
    # A GAN file's networks saved apart: pair each optimizer with its own — unless one model of the file
    # holds every optimizer's parameters (a Lightning module beside an EMA copy): then the rule below.
    several = models is not None and len(models) > 1 and not _one_model_holds_all(entries, model, names_given)
    pairs = _pairs(opts, entries, given_of, models, warnings) if several and models else None
    if sources is not None:  # each optimizer's own model, found by the reader (accelerate)
        mapping, model = _name_each(entries, opts, sources, warnings)
    elif pairs is not None:
        mapping, model = _name_paired(entries, opts, pairs, warnings)
    elif names_given:
        mapping = "fqn" if all(isinstance(e.index, str) for e in entries) else "param_names"
        if model is not None:
            _check_named(entries, model.cands, warnings)
    elif model is not None and len(opts) == 1 and (split := _split_flat_state(entries, model)) is not None:
        # one 1-D slot as long as all the model's parameters together: no shape of the model fits it
        entries, mapping = split, "model-order"
        warnings.append(
            f"one flat fp32 state for all {len(split)} parameters (fairseq's FP16Optimizer, --fp16): cut back "
            "into the model's parameters by their order and sizes, which add up to its length exactly"
        )
    elif model is not None:
        # Several optimizers share one model: their groups are interleaved into the model order
        # together (each parameter belongs to one slot), so every (optimizer, group) is one group here.
        own = [e.group for e in entries]
        ids: dict[tuple, int] = {}
        for e in entries:
            e.group = ids.setdefault((_opt_index(e), e.group), len(ids))
        try:
            mapping = _apply_model_names(entries, model.cands, model.ordered, warnings)
        finally:
            for e, g in zip(entries, own):
                e.group = g
    elif per_parameter_optimizers(opts) is not None:
        # one optimizer per parameter, keyed by the parameter's name (an optimizer stepped in backward)
        mapping = "optimizer-keys"
        by_index = {info["index"]: str(p[-1]) for info, p, _ in opts}
        for e in entries:
            e.name = by_index[_opt_index(e)]
    else:
        mapping = "none"
    if len(opts) > 1:
        _label_by_optimizer(entries)

    def state_of(e: _Entry) -> Any:
        if e.flat is None:
            return osds[_opt_index(e)]["state"][e.index]
        return _flat_slice(osds[_opt_index(e)]["state"][e.flat[0]], e)

    read_steps = [_state_step(state_of(e), e.hyper) for e in entries if e.shape is not None]
    step, optimizer_step = resolve_steps(stated, read_steps, path, warnings)
    if model is not None:
        mmap_files = mmap_files + [f for f in model.mmap_files if f not in mmap_files]
    convention = "torch"
    if kinds and all(k in TF_EPS_OPTIMIZERS for k in kinds):
        convention = "tf"
    elif any(k in TF_EPS_OPTIMIZERS for k in kinds):
        warnings.append(
            f"optimizers of both eps conventions in one file ({', '.join(dict.fromkeys(kinds))}): all read "
            "in the torch convention (eps on √v̂); --convention tf for the RAdam/SparseAdam ones"
        )
    ck = OptimizerCheckpoint(
        path=str(path),
        step=step,
        layout=layout,
        optimizer="+".join(dict.fromkeys(kinds)),
        convention=convention,
        name_mapping=mapping,
        warnings=warnings,
        entries=entries,
        mmap_files=mmap_files,
        other_optimizers=list(others or []),
        optimizer_step=optimizer_step,
    )
    ck._fetch_state = state_of
    ck._fetch_param = model.get if model is not None else None
    return ck


# fairseq's persistent float buffers, in its model state_dict but never parameters: TransformerEncoder/Decoder's
# `version`, SinusoidalPositionalEmbedding's `_float_tensor` (one element each)
_FLAT_BUFFER_NAMES = ("version", "_float_tensor")


def _split_flat_state(entries: list[_Entry], model: _ModelSource) -> list[_Entry] | None:
    """A state of one 1-D slot whose length is exactly the sum of the model's parameter sizes: fairseq's
    FP16Optimizer (``--fp16`` without ``--fp16-no-flatten-grads``) steps one flat fp32 copy of every trainable
    parameter, laid end to end in ``model.parameters()`` order. Cut back into one entry per parameter (named, with
    its shape) when the sizes add up exactly; None otherwise (then it stays one tensor)."""
    stated = [e for e in entries if e.shape is not None]
    if len(stated) != 1 or len(stated[0].shape or ()) != 1 or not model.ordered:
        return None
    flat = stated[0]
    n = (flat.shape or (0,))[0]
    cands = [(name, shape) for name, shape in model.cands if name.rsplit(".", 1)[-1] not in _FLAT_BUFFER_NAMES]
    sizes = [math.prod(shape) for _, shape in cands]
    if len(cands) < 2 or sum(sizes) != n:
        return None
    out = []
    offset = 0
    for pos, ((name, shape), size) in enumerate(zip(cands, sizes)):
        out.append(
            _Entry(
                group=flat.group,
                index=name,
                pos=pos,
                name=name,
                shape=shape,
                hyper=flat.hyper,
                optimizer=flat.optimizer,
                flat=(flat.index, offset, size, n),
            )
        )
        offset += size
    return out


def _flat_slice(state: dict[str, Any], e: _Entry) -> dict[str, Any]:
    """One parameter's part of a flat state: each tensor of the flat length cut to ``e.flat`` and shaped (views:
    nothing copied); the step and anything else as stored."""
    assert e.flat is not None
    _, offset, size, total = e.flat
    return {
        k: v.reshape(-1)[offset : offset + size].view(e.shape or (size,))
        if _is_tensor(v) and v.numel() == total and v.dim() == 1
        else v
        for k, v in state.items()
    }


def _one_model_holds_all(entries: list[_Entry], model: _ModelSource | None, names_given: bool) -> bool:
    """``model`` names every optimizer slot of the file for certain (saved names all in it, or the
    groups of all optimizers interleaved into its parameter order, as :func:`_finish` does)."""
    if model is None:
        return False
    if names_given:
        own = dict(model.cands)
        return all(e.name in own and own[e.name] == e.shape for e in entries if e.shape is not None)
    ids: dict[tuple, int] = {}
    groups: list[list[tuple[int, ...] | None]] = []
    for e in entries:
        g = ids.setdefault((_opt_index(e), e.group), len(ids))
        if g == len(groups):
            groups.append([])
        groups[g].append(e.shape)
    return map_names(groups, model.cands, ordered=model.ordered)[1] == "model-order"


def _pairs(
    opts: list[tuple[dict, tuple, dict]],
    entries: list[_Entry],
    given_of: dict[int, bool],
    models: list[tuple[tuple, dict]],
    warnings: list[str],
) -> dict[int, Any] | None:
    """Which model(s) each optimizer steps, when the file holds several models (:func:`.pairing.pair`)."""
    from adamdiag.io.checkpoints import pairing

    shapes: dict[int, list[list[tuple[int, ...] | None]]] = {}
    given: dict[int, tuple[list[str | None], list[tuple | None]] | None] = {}
    for info, _, _ in opts:
        es = [e for e in entries if _opt_index(e) == info["index"]]
        groups: list[list[tuple[int, ...] | None]] = [[] for _ in range(max((e.group for e in es), default=-1) + 1)]
        for e in es:
            groups[e.group].append(e.shape)
        shapes[info["index"]] = groups
        given[info["index"]] = ([e.name for e in es], [e.shape for e in es]) if given_of[info["index"]] else None
    return pairing.pair(opts, shapes, given, models, warnings)


def _name_paired(
    entries: list[_Entry], opts: list[tuple[dict, tuple, dict]], pairs: dict[int, Any], warnings: list[str]
) -> tuple[str, _ModelSource | None]:
    """Names ``<model key>.<parameter>`` for the entries of each paired optimizer (:func:`_name_each`
    over the model(s) :func:`.pairing.pair` found for it)."""
    from adamdiag.io.checkpoints import pairing

    sources: dict[int, _ModelSource | None] = {}
    for i, pr in pairs.items():
        if pr is None:
            sources[i] = None
            continue
        where = {f"{pairing.model_prefix(p)}.{n}": (sd, n) for p, sd in pr.models for n, _ in model_candidates(sd)}
        src = _ModelSource(pairing._cands(pr.models), True, functools.partial(_get_from, where), "paired")
        # names the optimizer saved (param_names) are its model's own: prefixed like the rest
        src.desc = pairing.model_prefix(pr.models[0][0]) if pr.how == "key and names" else ""
        sources[i] = src
    return _name_each(entries, opts, sources, warnings)


def _get_from(where: dict[str, tuple[Any, str]], name: str) -> Any:
    sd, n = where.get(name, ({}, ""))
    return sd.get(n)


def _name_each(
    entries: list[_Entry], opts: list[tuple[dict, tuple, dict]], sources: dict[int, Any], warnings: list[str]
) -> tuple[str, _ModelSource | None]:
    """Each optimizer's entries named from its own model source (names already prefixed with the
    model's key; ``desc`` non-empty: the optimizer saved ``param_names``, prefixed with ``desc``), else
    by :func:`map_names` over the source in order (or shape-unique where the order is unknown). None:
    no certain model (saved names stay; the rest get positional labels later). Returns (name_mapping,
    one model source over them all for the parameter values)."""
    getters: dict[str, Callable[[str], Any]] = {}
    cands: list[tuple[str, tuple]] = []
    statuses = []
    for info, _, _ in opts:
        es = [e for e in entries if _opt_index(e) == info["index"]]
        src = sources.get(info["index"])
        if src is None:
            given = bool(es) and all(e.name is not None for e in es)
            statuses.append("param_names" if given else "unmatched")
            continue
        getters.update({n: src.get for n, _ in src.cands})
        cands += src.cands
        if src.desc and all(e.name is not None for e in es):
            for e in es:
                e.name = f"{src.desc}.{e.name}"
            statuses.append("param_names")
            continue
        for e in es:
            e.name = None
        w: list[str] = []
        statuses.append(_apply_model_names(es, src.cands, src.ordered, w))
        warnings += [f"{info['key']}: {x}" for x in w]
    mapping = statuses[0] if len(set(statuses)) == 1 else "partial"

    def get(name: str) -> Any:
        g = getters.get(name)
        return g(name) if g is not None else None

    return mapping, (_ModelSource(cands, True, get, "model state_dicts") if getters else None)


def _label_by_optimizer(entries: list[_Entry]) -> None:
    """Several optimizers in one file: a tensor without a certain name is labelled by its optimizer's
    key and its position (``group 0 / index 3`` exists in every optimizer), and a name two optimizers
    both give (two models saved apart, each optimizer with ``param_names``) gets its optimizer's key."""
    from collections import Counter

    from adamdiag.io.checkpoints.pairing import positional_name

    def key(e: _Entry) -> str:
        return str((e.optimizer or {}).get("key", ""))

    for e in entries:
        if e.shape is not None and e.name is None:
            e.name = positional_name(key(e), e.group, e.index)
    owners = Counter((e.name, _opt_index(e)) for e in entries if e.name is not None)
    per_name = Counter(n for n, _ in owners)
    for e in entries:
        if e.name is not None and per_name[e.name] > 1:
            e.name = f"{key(e) or '<top level>'}/{e.name}"


def _opt_index(e: _Entry) -> int:
    """Which of the file's optimizers an entry belongs to (``_finish`` sets it on every entry; a
    reader of one optimizer may leave it unset: then 0)."""
    return int(e.optimizer["index"]) if e.optimizer is not None else 0


def _open_torch_file(path: Path, trust: bool) -> OptimizerCheckpoint:
    warnings: list[str] = []
    obj, mmapped = torch_load(path, trust=trust)
    from adamdiag.io.checkpoints import fastai

    for p, x in [(p, x) for p, x in _walk(obj) if fastai.is_fastai_state(x)]:
        # learn.save(): fastai's own optimizer state, replaced (in the loaded object) by the torch state it stands for
        torch_state = fastai.to_torch_state(x, _keyname(p) or "the file", warnings)
        parent = obj
        for k in p[:-1]:
            parent = parent[k]
        if not p:
            obj = torch_state
        elif isinstance(parent, dict | list):
            parent[p[-1]] = torch_state
    opts, others = _pick_optimizers(obj, path, warnings)
    keypath = opts[0][1] if len(opts) == 1 else None
    is_lightning = isinstance(obj, dict) and "optimizer_states" in obj
    layout = "lightning" if is_lightning else "torch"
    model: _ModelSource | None = None
    found = _pick_model_state(obj)
    if found is not None:
        model = _model_from_state(found[1])
    elif keypath == ():
        model = _model_beside(path, trust, warnings)
    stated = find_step(obj)  # none for a bare optimizer: then the optimizer's own step count
    models = [(p, x) for p, x in _walk(obj) if _is_model_state(x)]  # a GAN's netG and netD
    mm = [os.path.realpath(path)] if mmapped else []
    return _finish(path, layout, opts, model, stated, warnings, mm, others, models)


def _open_dir(d: Path, kind: str, trust: bool) -> OptimizerCheckpoint:
    warnings: list[str] = []
    opt_file = next(d / n for n in OPTIMIZER_FILES if (d / n).is_file())
    obj, mmapped = torch_load(opt_file, trust=trust)
    opts, others = _pick_optimizers(obj, opt_file, warnings)
    model = None
    for n in MODEL_FILES:
        if (d / n).is_file():
            try:
                model = _open_model_file(d / n, trust)
            except InputError as e:
                warnings.append(f"model file {n} could not be read: {e}")
            break
    if model is not None and not model.ordered:
        order = _hf_model_order(d, warnings)
        present = dict(model.cands)
        # Only an order that agrees with the file (same names, same shapes) is used.
        if order is not None and all(present.get(n, s) == s for n, s in order):
            model.cands = [(n, s) for n, s in order if n in present]
            model.ordered = True
    stated = checkpoint_dir_step(d, kind, warnings)
    mm = [os.path.realpath(opt_file)] if mmapped else []
    extra = numbered_optimizer_files(d) if kind == "accelerate" else []
    if extra:  # accelerate with several prepared optimizers (a GAN's): optimizer.bin, optimizer_1.bin, ...
        opts, others, sources = _accelerate_optimizers(d, opt_file, opts, others, model, extra, trust, warnings, mm)
        return _finish(d, kind, opts, None, stated, warnings, mm, others, sources=sources)
    return _finish(d, kind, opts, model, stated, warnings, mm, others)


_NUMBERED_OPTIMIZER = re.compile(r"^optimizer_(\d+)\.(bin|pt)$")


def numbered_optimizer_files(d: Path) -> list[Path]:
    """accelerate's ``save_state`` writes its k-th prepared optimizer (k >= 1) as ``optimizer_k.bin``
    (and the k-th model as ``model_k.safetensors``): those files, by k."""
    found = []
    for p in d.iterdir():
        m = _NUMBERED_OPTIMIZER.match(p.name)
        if m and int(m.group(1)) >= 1 and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _accelerate_optimizers(
    d: Path,
    first: Path,
    opts: list[tuple[dict, tuple, dict]],
    others: list[dict],
    model: _ModelSource | None,
    extra: list[Path],
    trust: bool,
    warnings: list[str],
    mmap_files: list[str],
) -> tuple[list[tuple[dict, tuple, dict]], list[dict], dict[int, _ModelSource | None]]:
    """Every optimizer file of an accelerate state, each with the model saved at its position
    (``optimizer_k.bin`` ↔ ``model_k.safetensors``: accelerate numbers models and optimizers apart, in
    ``prepare`` order) where the model's parameters fit it exactly (one slot per parameter, the shapes,
    in order where the format keeps it) — else its tensors keep positional labels (a warning)."""
    all_opts: list[tuple[dict, tuple, dict]] = []
    all_others: list[dict] = []
    sources: dict[int, _ModelSource | None] = {}
    said = []
    for k, f in enumerate([first, *extra]):
        if k == 0:
            found, not_adam = opts, others
        else:
            obj, mm = torch_load(f, trust=trust)
            if mm:
                mmap_files.append(os.path.realpath(f))
            try:
                found, not_adam = _pick_optimizers(obj, f, [])
            except InputError:
                desc = _describe_non_adam(obj) if _is_opt_state(obj) else "no optimizer state"
                found, not_adam = [], [{"type": desc}]
        src = model if k == 0 else _numbered_model(d, k, trust, warnings)
        for o in not_adam:
            all_others.append({"index": len(all_opts) + len(all_others), "key": f.name, "type": o["type"]})
            warnings.append(f"optimizer file {f.name} is not Adam: {o['type']}")
        for info, p, x in found:
            i = len(all_opts) + len(all_others)
            all_opts.append(
                ({"index": i, "key": f.name + (f".{_keyname(p)}" if p else ""), "type": info["type"]}, p, x)
            )
            mname = "model" if k == 0 else f"model_{k}"
            sources[i] = _prefixed(src, mname) if src is not None and _fits_exactly(x, f, src) else None
            said.append(f"{f.name} → {mname}" if sources[i] is not None else f"{f.name} → ?")
            if src is not None and sources[i] is None:
                warnings.append(
                    f"{f.name}: the parameters of the model saved at its position ({mname}) do not fit it "
                    "exactly: its tensors are labelled by position"
                )
    warnings.append(
        f"accelerate state with {len([first, *extra])} optimizer files; each named from the model saved at its "
        f"position: {', '.join(said)} (names <model>.<parameter>)"
    )
    return all_opts, all_others, sources


def _numbered_model(d: Path, k: int, trust: bool, warnings: list[str]) -> _ModelSource | None:
    for n in (f"model_{k}.safetensors", f"pytorch_model_{k}.bin", f"model_{k}.bin"):
        if (d / n).is_file():
            try:
                return _open_model_file(d / n, trust)
            except InputError as e:
                warnings.append(f"model file {n} could not be read: {e}")
                return None
    return None


def _fits_exactly(osd: dict, path: Path, src: _ModelSource) -> bool:
    """One optimizer slot per model parameter, and the shapes fit (in order when the format keeps it)."""
    es, _ = entries_from_state_dict(osd, path)
    groups: list[list[tuple[int, ...] | None]] = [[] for _ in range(max((e.group for e in es), default=-1) + 1)]
    for e in es:
        groups[e.group].append(e.shape)
    return len(es) == len(src.cands) and map_names(groups, src.cands, ordered=src.ordered)[1] != "unmatched"


def _prefixed(src: _ModelSource, prefix: str) -> _ModelSource:
    out = _ModelSource(
        [(f"{prefix}.{n}", s) for n, s in src.cands],
        src.ordered,
        lambda name: src.get(name[len(prefix) + 1 :]),
        src.desc,
        src.mmap_files,
    )
    out.desc = prefix  # names the optimizer saved (param_names) get the same prefix
    return out


def checkpoint_dir_step(d: Path, kind: str, warnings: list[str]) -> tuple[int, str] | None:
    """The log step a HF/accelerate checkpoint directory states, and where from: ``trainer_state.json``'s
    global_step, else (HF only) the N of ``checkpoint-N``; accelerate's directory names count saves,
    not steps."""
    ts = d / "trainer_state.json"
    if ts.is_file():
        try:
            step = _as_int(json.loads(ts.read_text()).get("global_step"))
            if step is not None:
                return step, "trainer_state.json global_step"
        except (OSError, ValueError):
            warnings.append("trainer_state.json is unreadable")
    if kind == "hf":
        n = step_from_name(d)
        return (n, "the directory's name") if n is not None else None
    return None


# --- memory: give back the pages of tensors already read ----------------------------------------------
class PageReleaser:
    """Drops the resident pages of memory-mapped checkpoint tensors once they have been read.

    ``torch.load(mmap=True)`` maps the whole file; every page touched stays resident (and counts in
    the process's RSS) until the mapping goes away — reading a 20 GB checkpoint would hold 20 GB.
    After a tensor is done, ``madvise(MADV_DONTNEED)`` on its pages drops them from this process
    (they stay in the page cache; a later read faults them back in from the unchanged file). Only
    ranges inside a mapping of the checkpoint file itself are touched (checked against
    /proc/self/maps), never heap memory. torch maps the file private (copy-on-write): call this only
    on tensors nobody wrote to. A no-op where that is not available (non-Linux).
    """

    MADV_DONTNEED = 4

    def __init__(self, files: list[str]) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.libc = None
        if not files or not sys.platform.startswith("linux"):
            return
        try:
            import ctypes

            wanted = set(files)
            # (a mapped path that is not UTF-8 reads back as the same lone surrogates as its str)
            with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() in wanted:
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
            if self.ranges:
                self.libc = ctypes.CDLL(None, use_errno=True)
                self.libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except OSError:
            self.ranges = []

    def release(self, *tensors: Any) -> None:
        if self.libc is None:
            return
        page = os.sysconf("SC_PAGE_SIZE")
        for t in tensors:
            if t is None or not _is_tensor(t) or t.numel() == 0:
                continue
            st = t.untyped_storage()
            lo = st.data_ptr()
            hi = lo + st.nbytes()
            for a, b in self.ranges:
                if a <= lo and hi <= b:
                    start = lo - lo % page
                    end = min(b, hi + (-hi) % page)
                    self.libc.madvise(start, end - start, self.MADV_DONTNEED)
                    break
