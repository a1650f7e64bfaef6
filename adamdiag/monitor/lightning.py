"""PyTorch Lightning hook: ``AdamDiagCallback`` watches every optimizer of the Trainer.

Imports Lightning (``lightning.pytorch``, else ``pytorch_lightning``); ``import adamdiag.monitor``
alone does not.

>>> import lightning as L  # doctest: +SKIP
>>> from adamdiag.monitor.lightning import AdamDiagCallback  # doctest: +SKIP
>>> L.Trainer(callbacks=[AdamDiagCallback(every=10)]).fit(model)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]

from adamdiag.monitor.callback import MonitorCallbackSettings


class AdamDiagCallback(MonitorCallbackSettings, Callback):
    """Attaches an :class:`~adamdiag.monitor.core.AdamMonitor` to the Trainer's optimizers at fit start.

    ``writer="auto"`` writes the ``adamdiag/*`` tags into the TensorBoardLogger's event file when
    the Trainer has one (none otherwise); ``run_dir`` defaults to the Trainer's ``log_dir``. The
    training loss is fed to the monitor on its logging steps (AD401 on a non-finite loss).
    ``monitor`` is the live monitor once training started (findings, verdict, last signals). The
    settings are :class:`~adamdiag.monitor.callback.MonitorCallbackSettings`' (shared with the HF callback).
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        writer = self.writer
        if writer == "auto":
            writer = None
            exp = getattr(getattr(trainer, "logger", None), "experiment", None)
            if exp is not None and hasattr(exp, "add_scalar") and hasattr(exp, "add_text"):
                writer = exp  # TensorBoardLogger's SummaryWriter (a dummy on ranks > 0)
        run_dir = self.run_dir or getattr(trainer, "log_dir", None) or trainer.default_root_dir
        self.attach_monitor(list(trainer.optimizers), pl_module, writer, run_dir)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        mon = self.monitor
        step = trainer.global_step
        if mon is None or step % mon.every:
            return  # the loss only on logging steps: one host sync per logging step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            mon.log_loss(step, loss.detach() if hasattr(loss, "detach") else loss)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.close_monitor()
