"""The loss / gradient-norm / lr auto-pick on the tag names real trainers write (scan, check, replay and
plot share it; ``--loss-tag`` overrides). Names as the frameworks log them."""

from __future__ import annotations

import pytest

from adamdiag.analysis.tags import pick_grad_norm_tag, pick_loss_tag, pick_lr_tag, pick_task_loss_tags

LOSS_CASES = [
    # (framework, tags, the training loss)
    ("torch SummaryWriter", ["train/loss", "val/loss", "train/lr"], "train/loss"),
    ("Lightning self.log(on_step, on_epoch)", ["train_loss_step", "train_loss_epoch", "val_loss"], "train_loss_step"),
    ("HF Trainer", ["train/loss", "train/grad_norm", "train/learning_rate", "eval/loss"], "train/loss"),
    ("Keras TensorBoard callback", ["batch_loss", "epoch_loss", "epoch_accuracy"], "batch_loss"),
    (
        "TF Object Detection API",
        ["Loss/classification_loss", "Loss/localization_loss", "Loss/total_loss"],
        "Loss/total_loss",
    ),
    ("a detection loss split by part", ["loss/cls", "loss/box", "loss/total"], "loss/total"),
    ("Detectron2", ["total_loss", "loss_cls", "loss_box_reg"], "total_loss"),
    ("fairseq, one split folder", ["train/loss", "train/nll_loss", "train/ppl"], "train/loss"),
    # fairseq's --tensorboard-logdir as one run: train_inner/ every --log-interval updates, train/ per epoch
    (
        "fairseq tree",
        ["train/loss", "train/nll_loss", "train_inner/loss", "train_inner/nll_loss", "valid/loss", "train_inner/gnorm"],
        "train_inner/loss",
    ),
    ("an LM logging its NLL only", ["train/nll", "train/ppl", "valid/nll"], "train/nll"),
    ("Megatron", ["lm loss", "lm loss vs samples", "grad-norm"], "lm loss"),
    ("DeepSpeed monitor", ["Train/Samples/train_loss", "Train/Samples/lr"], "Train/Samples/train_loss"),
    # auxiliary terms are shorter than the loss they are added to: not the training loss
    ("OLMo", ["train/CrossEntropyLoss", "train/Perplexity", "train/ZLoss"], "train/CrossEntropyLoss"),
    ("OLMo-core", ["train/CE loss", "train/PPL", "train/Z loss"], "train/CE loss"),
    ("an MoE's aux losses", ["loss", "aux_loss", "load_balancing_loss", "router_z_loss"], "loss"),
    ("MaxText", ["learning/loss", "learning/moe_lb_loss", "learning/grad_norm"], "learning/loss"),
    ("torchtitan", ["loss_metrics/global_avg_loss", "loss_metrics/global_max_loss", "grad_norm"], None),
    # CleanRL: entropy and KL filed under losses/ are not losses (was: losses/entropy, the shortest)
    ("CleanRL PPO", ["losses/entropy", "losses/approx_kl", "losses/policy_loss", "losses/value_loss"], None),
    ("Composer", ["loss/train/total", "metrics/train/LanguageCrossEntropy", "l2_norm/grad/global"], "loss/train/total"),
    ("TF1 tutorial", ["cost", "accuracy", "learning_rate"], "cost"),
    ("a regression logging its MSE", ["train/mse", "val/mse", "train/mae"], "train/mse"),
]


@pytest.mark.parametrize(("framework", "tags", "want"), LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_loss_tag(framework: str, tags: list[str], want: str | None) -> None:
    if want is None:  # several names fit; the test is what is not picked
        assert pick_loss_tag(tags) not in (None, "losses/entropy", "losses/approx_kl", "loss_metrics/global_max_loss")
    else:
        assert pick_loss_tag(tags) == want


def test_no_training_loss_is_none() -> None:
    """Only evaluation curves, or nothing loss-like: None (scan says "no loss scalar found")."""
    assert pick_loss_tag(["val/loss", "eval/loss"]) is None
    assert pick_loss_tag(["accuracy", "lr"]) is None


def test_grad_norm_and_lr_tags() -> None:
    assert pick_grad_norm_tag(["train/grad_norm_preclip", "train/grad_norm"]) == "train/grad_norm"
    assert pick_grad_norm_tag(["grad-norm", "lm loss"]) == "grad-norm"  # Megatron
    assert pick_grad_norm_tag(["train_inner/gnorm", "train_inner/clip", "train_inner/loss"]) == "train_inner/gnorm"
    assert pick_grad_norm_tag(["training_loss", "l2_grads", "l2_params", "l2_updates"]) == "l2_grads"  # big_vision
    assert pick_lr_tag(["train/lr", "train_inner/lr"]) == "train_inner/lr"  # fairseq: the denser one
    # Lightning's grad_norm() utility, logged with log_dict: per parameter and the total (was: the bias's)
    assert pick_grad_norm_tag(["grad_2.0_norm/bias", "grad_2.0_norm/weight", "grad_2.0_norm_total"]) == (
        "grad_2.0_norm_total"
    )
    assert pick_lr_tag(["train_loss", "lr-AdamW"]) == "lr-AdamW"  # Lightning's LearningRateMonitor
    assert pick_lr_tag(["lr-AdamW/pg1", "lr-AdamW/pg2"]) == "lr-AdamW/pg1"
    assert pick_lr_tag(["train/learning_rate", "train/loss"]) == "train/learning_rate"


LR_CASES = [
    ("Megatron", ["lm loss", "learning-rate vs samples", "learning-rate", "grad-norm"], "learning-rate"),
    ("YOLOv5", ["train/box_loss", "x/lr1", "x/lr0", "x/lr2"], "x/lr0"),
    ("OLMo", ["optim/learning_rate_group1", "optim/learning_rate_group0"], "optim/learning_rate_group0"),
    ("OLMo-core", ["optim/LR (group 1)", "optim/LR (group 0)", "train/CE loss"], "optim/LR (group 0)"),
    ("Keras", ["epoch_loss", "epoch_learning_rate"], "epoch_learning_rate"),
    ("CamelCase", ["Loss/train", "LearningRate"], "LearningRate"),
    ("CamelCase in a folder", ["Train/Loss", "Train/LearningRate"], "Train/LearningRate"),
    ("no lr, lr-like words", ["lr_warmup_steps", "clr_loss", "train/loss"], None),
]


@pytest.mark.parametrize(("framework", "tags", "want"), LR_CASES, ids=[c[0] for c in LR_CASES])
def test_lr_tag(framework: str, tags: list[str], want: str | None) -> None:
    assert pick_lr_tag(tags) == want


def test_auxiliary_losses_are_not_task_parts() -> None:
    """An MoE's balancing loss or a z-loss is added to the loss, not a task head whose blowup the total hides."""
    assert pick_task_loss_tags(["train/loss", "train/aux_loss", "train/z_loss", "train/seg_loss"], "train/loss") == [
        "train/seg_loss"
    ]


SAME_LOSS_CASES = [
    # (framework, tags, total, the parts)  — the same loss under another reduction is no part of it
    ("NeMo", ["train_loss", "reduced_train_loss", "val_loss"], "train_loss", []),
    (
        "torchtitan",
        ["loss_metrics/global_avg_loss", "loss_metrics/global_max_loss"],
        "loss_metrics/global_avg_loss",
        [],
    ),
    ("diffusers examples", ["train_loss", "step_loss", "lr"], "train_loss", []),
    ("MaxText", ["learning/loss", "learning/moe_lb_loss"], "learning/loss", []),
    ("Detectron2", ["total_loss", "loss_cls", "loss_box_reg", "lr"], "total_loss", ["loss_cls", "loss_box_reg"]),
]


@pytest.mark.parametrize(("framework", "tags", "total", "want"), SAME_LOSS_CASES, ids=[c[0] for c in SAME_LOSS_CASES])
def test_same_loss_is_no_task_part(framework: str, tags: list[str], total: str, want: list[str]) -> None:
    assert pick_task_loss_tags(tags, total) == want
