"""Losses logged as a running *median* (Detectron2's writers): what such a log can and cannot show.

Detectron2's trainer (``SimpleTrainer.write_metrics``) puts ``total_loss`` and each loss of the model's loss dict in
its EventStorage every iteration with a smoothing hint, and its writers (``JSONWriter`` → metrics.json,
``TensorboardXWriter`` → event files, ``CommonMetricPrinter``) write each as the median of its last ``window_size``
= 20 iterations. A median cannot be inverted (unlike Keras' running mean, AD603, or fastai's moving average, AD605):
a spike shorter than half the window never shows — a bad batch is invisible — and a rise shows once it holds more
than half the window, up to ~window/2 iterations after it began. The series is read as logged and rule AD606 says
so.

>>> median_window("total_loss", ["total_loss", "loss_cls", "data_time", "lr"])
20
>>> median_window("loss_cls", ["total_loss", "loss_cls", "data_time", "lr"]), median_window("loss", ["loss", "lr"])
(20, None)
"""

from __future__ import annotations

from collections.abc import Iterable

# Detectron2's writers' default window_size (JSONWriter, TensorboardXWriter, CommonMetricPrinter)
DETECTRON2_WINDOW = 20
# What Detectron2's SimpleTrainer.write_metrics puts every iteration besides the model's own losses: the sum of
# the losses and the data-loading time — its signature, at the same prefix as the loss tag
DETECTRON2_SIGNATURE = ("total_loss", "data_time")


def median_window(tag: str, tags: Iterable[str]) -> int | None:
    """The window of the running median ``tag`` was logged as, when its log is Detectron2's (its trainer's
    signature tags beside it, same prefix, and the tag a loss: ``total_loss`` or ``loss*``); None otherwise."""
    base = tag.rsplit("/", 1)[-1]
    prefix = tag[: len(tag) - len(base)]
    have = set(tags)
    if not base.startswith(("total_loss", "loss")) or not all(prefix + s in have for s in DETECTRON2_SIGNATURE):
        return None
    return DETECTRON2_WINDOW
