"""Stable rule ids. CI pipelines filter on these: never renumber, only add.

Each rule: id -> (short name, what it means). The README's rule table is generated from this dict
(``python -m adamdiag.results.rules``) so the docs cannot drift from the code.
"""

from __future__ import annotations

RULES: dict[str, tuple[str, str]] = {
    # 0xx: the loss itself
    "AD001": (
        "loss-blowup",
        "The loss rose to 10x its trailing robust level within 100 steps, the median of its next 10 steps above 2x "
        "and 3 noise-sigmas of the loss's own swings.",
    ),
    "AD002": (
        "loss-spike",
        "A loss excursion (>= 2x, far outside its noise) that recovered before it became a blowup.",
    ),
    "AD003": (
        "loss-above-start",
        "No blowup, but the loss ended >= 2x above its first logged points (the median of its last 10% of points): "
        "the run got worse than it started. A warning; a healthy verdict beside it has low confidence, "
        "lr_too_high the alternative.",
    ),
    # 1xx: v collapse mechanism
    "AD101": (
        "v-collapse",
        "Gradients stayed far below the second-moment estimate for many steps (g²/v̂ << 1): v decayed "
        "toward zero and sqrt(v̂) approached eps.",
    ),
    "AD102": (
        "gradient-regrowth",
        "After the collapse, mean(g²)/mean(v̂) jumped far above 1: m reacts ~100x faster than v, so the "
        "update lr*m̂/(sqrt(v̂)+eps) explodes.",
    ),
    "AD103": ("update-rms", "Update RMS sqrt(mean(g²/max(v̂, eps²))) exceeded 1 (precedes spikes by 1-8 steps)."),
    "AD104": ("sqrt-vhat-below-eps", "Reserved (not emitted yet): many elements have sqrt(v̂) below (or near) eps."),
    "AD105": ("decay-ratio", "Between two checkpoints v decayed like beta2^Δ: no gradient signal arrived."),
    "AD106": (
        "postponed",
        "Replay: a change only postponed the blowup — the variant is at risk (v still collapsing at the end of the "
        "horizon) or blows up later than the original; with --verify, also: no tried change avoided it.",
    ),
    # 2xx: learning rate too high
    "AD201": (
        "lr-too-high",
        "Loss oscillates or diverges while g²/v̂ stays O(1): steps are too large even with a healthy v.",
    ),
    # 3xx: bad batch
    "AD301": (
        "bad-batch",
        "The gradient norm jumped >= 10x in one step at the loss event: one batch, not the optimizer. A warning "
        "on a run whose loss shows no event: such a jump, back at the next step, that Adam absorbed. Without a "
        "logged gradient norm: a recovered loss spike one point >= 10x both neighbours, back at its level next "
        "(a warning), or a blowup whose first point, in a loss logged every step, is >= 10x both neighbours: one "
        "batch's own loss, the climb after it what that batch's update did (an error).",
    ),
    # 4xx: non-finite values
    "AD401": (
        "nonfinite",
        "NaN or Inf in the loss, gradients or optimizer state (an error). An info when only the logged gradient "
        "norm was non-finite while the loss stayed finite and training went on: steps that mixed-precision loss "
        "scaling skipped (GradScaler, DeepSpeed/Megatron fp16), not a failure.",
    ),
    "AD403": (
        "state-corruption",
        "The optimizer state cannot be what Adam wrote (negative v, a checksum mismatch): the file is damaged; "
        "it is never used as a replay start.",
    ),
    # 5xx: eps too large
    "AD501": ("eps-too-large", "sqrt(v̂) << eps for most elements: Adam degraded to SGD with step lr/eps."),
    # 6xx: context
    "AD601": (
        "grad-clipping",
        "Gradient clipping detected: Adam saw the clipped gradients. When the writer logged the clip value — HF "
        "Trainer's `max_grad_norm` in its `args` text summary, Megatron-LM's `clip_grad` text summary, fairseq's "
        "`--clip-norm` in its `sys.argv` text summary (their `train/grad_norm` / `grad-norm` / `gnorm` is the norm *before* "
        "clipping) — v is reconstructed from min(norm, clip) and this info says so; `--grad-clip NORM` says it "
        "for runs that do not log it; without either, when every step between two checkpoints is logged, the "
        "checkpoints' own v shows the clip (mean v rebuilt from the logged norm lands ≥ 1.5x above the next "
        "checkpoint's): it is estimated from them and used the same way; otherwise a pre-clip norm that falls "
        "while every step is clipped reads as a stale v.",
    ),
    "AD602": ("lr-schedule", "Reserved (not emitted yet): the learning rate changed around the blowup."),
    "AD603": (
        "keras-running-mean",
        "Keras logs batch_* scalars as the running mean since the start of the epoch: the per-batch loss was "
        "reconstructed before detection (no spikes at epoch boundaries).",
    ),
    # 7xx: verification by replay (scan --verify / check --verify)
    "AD701": (
        "verified",
        "A replay from the checkpoint before the blowup confirmed the verdict: its fix avoided the blowup.",
    ),
    "AD702": (
        "replay-contradicts",
        "The replay contradicts the log verdict (e.g. an eps fix avoided the blowup while lr/3 did not): the verdict "
        "follows the replay.",
    ),
    "AD703": (
        "not-verified",
        "The verdict could not be verified by replay (no replay entry, no checkpoint before the blowup, the replay "
        "did not reproduce the log, the budget ran out, or every tried change blew up at one later step together: "
        "an event in the data or the objective there, which no eps or lr moves — replay up to it to judge).",
    ),
    # 9xx: data quality
    "AD604": (
        "keras-epoch-axis",
        "Keras logs epoch_* scalars at the epoch index while its checkpoints count optimizer iterations: the "
        "epoch points were moved to their epoch's last iteration (from evaluation_loss_vs_iterations).",
    ),
    "AD605": (
        "fastai-smoothed-loss",
        "fastai logs train_loss as its smoothed loss (a debiased moving average of the batch losses, β 0.98): the "
        "per-batch loss was reconstructed before detection (a one-batch spike is not read as a slow rise).",
    ),
    "AD606": (
        "median-smoothed-loss",
        "Detectron2 logs each loss as the median of its last 20 iterations: read as logged (a median cannot be "
        "inverted), so a spike shorter than half that window — one bad batch — is invisible and a blowup shows up to "
        "~10 iterations late.",
    ),
    "AD901": (
        "insufficient-data",
        "Not enough data to decide, or how the data was read (too few steps, missing loss tag, a log axis converted "
        "to optimizer steps, checkpoints that cannot be placed on the log, ...).",
    ),
    "AD902": ("damaged-input", "Some input records were damaged or unreadable and were skipped."),
    "AD903": (
        "not-adam",
        "A checkpoint holds another optimizer's state (SGD, Adafactor, ...), or the logged configuration names one"
        " (HF Trainer's `optim`, torchtune, mmcv; StableAdamW and APOLLO too): no Adam facts are claimed from it.",
    ),
    "AD904": ("skipped-file", "A file was skipped: not a regular file (FIFO, socket, device) or unreadable."),
    "AD905": (
        "evaluation-curve",
        "Evaluation curve: not diagnosed. The run holds only validation/eval curves (a Keras `validation/` "
        "or Estimator `eval/` directory): an evaluation loss is measured, not optimized, so its rise is no "
        "Adam blowup.",
    ),
}


# Ids kept for their meaning but not emitted by any code path yet (never renumbered, never reused).
RESERVED = frozenset({"AD104", "AD602"})


def rule_name(rule_id: str) -> str:
    return RULES[rule_id][0]


def markdown_table() -> str:
    """The rule table for the README."""
    lines = ["| id | name | meaning |", "|---|---|---|"]
    lines += [f"| {rid} | `{name}` | {text} |" for rid, (name, text) in RULES.items()]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
