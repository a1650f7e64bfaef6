"""Which scalar tags hold the training loss and the gradient norm: one auto-pick for scan, check,
replay and plot, and the user's ``--loss-tag`` / ``--grad-norm-tag`` when given.

>>> pick_loss_tag(["val/loss", "train/loss", "lr"])
'train/loss'
>>> pick_grad_norm_tag(["grad_norm_preclip", "train/grad_norm"])
'train/grad_norm'
"""

from __future__ import annotations

import re
from collections.abc import Mapping

LOSS_TAGS = (
    # fairseq: train_inner/ every --log-interval updates, train/ one point per epoch (the same loss, coarser)
    "train_inner/loss",
    "train/loss",
    "loss",
    "train_loss",
    "loss/train",
    "Loss/train",
    "training/loss",
    "train/total_loss",
    "total_loss",
    "train/loss_total",
    # Keras' TensorBoard callback: the per-batch running mean (rebuilt per batch before detection)
    "batch_loss",
    "train/batch_loss",
)
GRAD_NORM_TAGS = (
    "train/grad_norm",
    "grad_norm",
    "train/gradient_norm",
    "gradient_norm",
    "grad_norm/total",
    "train/grad_norm_clipped",
    # fairseq's total gradient norm (before clipping, which is off unless --clip-norm > 0)
    "train_inner/gnorm",
    "gnorm",
    # big_vision's global gradient norm
    "l2_grads",
    "train/l2_grads",
)
# Tags that are not the training loss although they contain "loss" (evaluation curves, the loss
# scale of mixed precision, auxiliary terms added to the loss — a z-loss (OLMo's train/ZLoss, OLMo-core's
# "train/Z loss"), an MoE load-balancing or router aux loss — and, last, per-task parts named loss_<task>).
_LOSS_AVOID = ("val", "eval", "test", "scale", "zloss", "z_loss", "z loss", "aux", "load_balanc", "lb_loss", "loss_")
# Gradient norms measured before clipping are not what Adam saw.
_GRAD_AVOID = ("preclip", "pre_clip", "unclipped", "val")
# Names of the training loss itself, not of a part of it, beside the total in its folder: the per-micro-batch
# loss (diffusers' step_loss beside train_loss), a reduction over ranks (NeMo's reduced_train_loss, torchtitan's
# global_max_loss beside global_avg_loss) or a smoothing of it.
_SAME_LOSS_PREFIXES = (
    *("batch_", "epoch_", "step_", "iter_", "reduced_", "global_", "avg_", "mean_", "max_", "min_"),
    *("running_", "smoothed_", "ema_"),
)
# Learning-rate tags, for the lr at the blowup.
LR_TAGS = ("train_inner/lr", "train/lr", "lr", "learning_rate", "train/learning_rate", "lr-Adam", "lr/0")


def pick_tag(tags: list[str], preferred: tuple[str, ...], must: tuple[str, ...], avoid: tuple[str, ...]) -> str | None:
    """The first preferred tag present, else the shortest tag containing all of ``must`` and none of
    ``avoid`` (case-insensitive); among those, one that names a total first (``loss/total`` over
    ``loss/cls``: the parts of a detection or multi-task loss are often shorter than their sum)."""
    for t in preferred:
        if t in tags:
            return t
    low = {t: t.lower() for t in tags}
    cands = [t for t in tags if all(m in low[t] for m in must) and not any(a in low[t] for a in avoid)]
    return min(cands, key=lambda t: ("total" not in low[t], len(t))) if cands else None


# Training losses not called "loss": a language model's negative log-likelihood, a cross-entropy, TF1 tutorials'
# "cost", a regression's "mse" — only where no tag says "loss". ("objective" stays a name to give with --loss-tag:
# an RL or contrastive objective is often maximised.)
_OTHER_LOSS_NAMES = ("nll", "cross_entropy", "xent", "cost", "mse")


def pick_loss_tag(tags: list[str], counts: Mapping[str, int] | None = None) -> str | None:
    """The training-loss tag: a known name, else the shortest "loss" tag that is not an eval curve or
    a per-task part (a total first), else any "loss" tag that is not an eval curve, else an "nll" /
    "cross_entropy" one. With ``counts`` (logged steps per tag), Lightning's pair of the same loss is
    resolved to the denser curve (:func:`denser_lightning_split`).

    >>> pick_loss_tag(["loss/cls", "loss/box", "loss/total"]), pick_loss_tag(["train/nll", "train/ppl"])
    ('loss/total', 'train/nll')
    >>> pick_loss_tag(["losses/entropy", "losses/policy_loss", "charts/learning_rate"])
    'losses/policy_loss'
    """
    # CleanRL files its entropy and KL under "losses/": a name that says loss only through such a folder is
    # a loss curve only when nothing else is.
    named = [t for t in tags if not _loss_only_in_folder(t)] or tags
    tag = (
        pick_tag(named, LOSS_TAGS, ("loss",), _LOSS_AVOID)
        or pick_tag(named, (), ("loss",), _LOSS_AVOID[:-1])
        or next((t for n in _OTHER_LOSS_NAMES if (t := pick_tag(tags, (), (n,), _LOSS_AVOID)) is not None), None)
    )
    return denser_lightning_split(tag, tags, counts) if tag is not None and counts is not None else tag


def _loss_only_in_folder(tag: str) -> bool:
    """``losses/entropy``: "loss" only in a folder named ``losses``, not in the curve's own name."""
    *folders, name = tag.lower().split("/")
    return "loss" not in name and "losses" in folders


def denser_lightning_split(tag: str, tags: list[str], counts: Mapping[str, int]) -> str:
    """Lightning's ``self.log(name, on_step=True, on_epoch=True)`` writes ``<name>_step`` (every
    ``log_every_n_steps`` = 50 steps by default) and ``<name>_epoch`` (every epoch: the epoch's mean, at its
    last step). When an epoch is shorter than the logging interval — a small data set, full-batch training —
    the step curve keeps a point in 50 and misses the blowup, while the epoch curve has one per epoch (the
    loss itself when an epoch is one step): the curve with more logged steps is the loss; a tie keeps the
    per-step values.

    >>> denser_lightning_split("train_loss_step", ["train_loss_epoch", "train_loss_step"],
    ...                        {"train_loss_step": 8, "train_loss_epoch": 400})
    'train_loss_epoch'
    >>> denser_lightning_split("train_loss_step", ["train_loss_epoch", "train_loss_step"],
    ...                        {"train_loss_step": 400, "train_loss_epoch": 40})
    'train_loss_step'
    """
    if not tag.endswith("_step"):
        return tag
    epoch = tag[: -len("_step")] + "_epoch"
    return epoch if epoch in tags and counts.get(epoch, 0) > counts.get(tag, 0) else tag


def pick_grad_norm_tag(tags: list[str]) -> str | None:
    """The (post-clip) gradient-norm tag, if the run logs one."""
    return pick_tag(tags, GRAD_NORM_TAGS, ("grad", "norm"), _GRAD_AVOID)


# A tag's last part naming the lr of the run or of its first group: "lr", "learning_rate" (Megatron's
# "learning-rate", a CamelCase "LearningRate"), "lr0" (YOLOv5's x/lr0), "learning_rate_group0" (OLMo),
# "LR (group 0)" (OLMo-core) — matched after lower-casing with "-" and " " read as "_".
_LR_NAME = re.compile(r"(lr|learning_?rate)(_?(pg|group|\(group)?_?\d+\)?)?")


def _names_lr(tag: str) -> bool:
    low = tag.lower()
    norm = low.replace("-", "_").replace(" ", "_")
    return (
        _LR_NAME.fullmatch(norm.rsplit("/", 1)[-1]) is not None
        or norm.endswith(("learning_rate", "learningrate"))
        # Lightning's LearningRateMonitor: "lr-<optimizer class>", "lr-<optimizer class>/pg<i>" per group;
        # a SummaryWriter's add_scalars("lr", {group: lr}), read as "lr/<group>"
        or low.startswith(("lr-", "lr/", "learning_rate/"))
    )


def pick_lr_tag(tags: list[str]) -> str | None:
    """The learning-rate tag, if the run logs one: a known name, else the shortest tag naming an lr
    (the first group's among several; Megatron's "learning-rate" over its "learning-rate vs samples").

    >>> pick_lr_tag(["train_loss", "lr-AdamW/pg2", "lr-AdamW"]), pick_lr_tag(["loss", "lr/group1", "lr/group0"])
    ('lr-AdamW', 'lr/group0')
    >>> pick_lr_tag(["learning-rate vs samples", "learning-rate"]), pick_lr_tag(["x/lr1", "x/lr0", "x/lr2"])
    ('learning-rate', 'x/lr0')
    """
    for t in LR_TAGS:
        if t in tags:
            return t
    low = [t for t in tags if _names_lr(t)]
    return min(low, key=lambda t: (len(t), t)) if low else None


def pick_task_loss_tags(tags: list[str], total: str | None) -> list[str]:
    """Per-task parts of the total loss logged beside it: in the total's folder, a name starting with
    ``loss_`` or ending with ``_loss``/``_mse`` (``train/loss_reg_a``, ``sincos_mse``), evaluation
    curves and auxiliary terms (a z-loss, an MoE balancing loss) excluded. A multi-task total can hide one
    head's blowup behind a dominant term.

    >>> pick_task_loss_tags(["train/loss", "train/loss_prob", "train/sincos_mse", "val/loss_prob", "lr"], "train/loss")
    ['train/loss_prob', 'train/sincos_mse']
    """
    if total is None:
        return []
    folder = total.rsplit("/", 1)[0] + "/" if "/" in total else ""
    out = []
    for t in tags:
        if t == total or not t.startswith(folder) or "/" in t[len(folder) :]:
            continue
        base = t[len(folder) :].lower()
        if any(a in base for a in _LOSS_AVOID[:-1]) or base.startswith(_SAME_LOSS_PREFIXES):
            continue
        if base.startswith("loss_") or base.endswith(("_loss", "_mse")):
            out.append(t)
    return out
