"""AdamMonitor: scan's v-collapse rules on the live optimizer, after every ``every``-th step.

>>> import torch
>>> model = torch.nn.Linear(4, 1)
>>> opt = torch.optim.Adam(model.parameters())
>>> mon = AdamMonitor(opt, model=model, every=1)
>>> for _ in range(3):
...     opt.zero_grad(); model(torch.ones(2, 4)).sum().backward(); opt.step()
>>> mon.step, mon.verdict, sorted(mon.last["global"])[:3]
(3, 'healthy', ['frac_below_10eps', 'frac_below_eps', 'g2_mean'])
>>> mon.close()
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from adamdiag.monitor import LIVE_FILE, LIVE_SCHEMA
from adamdiag.monitor import rules as R
from adamdiag.monitor.stats import (
    CNT_10EPS,
    CNT_EPS,
    GN_MAX_TENSORS,
    NBINS,
    NSCALAR,
    NUMEL,
    STEP,
    SUM_G2,
    SUM_UPD,
    SUM_V,
    GradNormRing,
    StatsEngine,
    hist_quantiles,
    merged_quantiles,
)

log = logging.getLogger("adamdiag.monitor")

SIGNALS = (
    "g2_mean",
    "vhat_mean",
    "r",
    "sqrt_vhat_p01",
    "sqrt_vhat_p50",
    "sqrt_vhat_p99",
    "frac_below_eps",
    "frac_below_10eps",
    "update_rms",
)
SEVERITIES = ("info", "warning", "error")
# Fed loss points the loss-event detector looks at (its windows span ~100-200 points; a bounded tail
# keeps log_loss O(1) amortised on a run of 10^6 steps).
LOSS_WINDOW = 2048
# AD103 is not evaluated before this step (see _rules).
MIN_RMS_STEP = 10
# AD103 re-arms only once the RMS fell below this fraction of the limit: on a noisy run it hovers
# around 1 (g² ≈ v̂ element-wise), and one warning per excursion is enough.
RMS_REARM = 0.5
# A blowup's verdict waits at most this many optimizer steps for the gradient norm next to it (the fed
# loss's steps may be numbered ahead of the optimizer's; then it decides on what it has).
PENDING_MAX_STEPS = 3
# At most this many findings are kept (the live file stays small on a run of 10^6 steps).
MAX_FINDINGS = 200


class AdamDiagAlarm(RuntimeError):
    """Raised from ``optimizer.step()`` when a finding reaches ``raise_on``; carries the finding."""

    def __init__(self, finding: R.Finding) -> None:
        super().__init__(f"{finding.id} {finding.severity}: {finding.message}")
        self.finding = finding


class _Watch:
    """One optimizer under watch: its hook, its names and its rule state."""

    def __init__(self, index: int, optimizer: Any, names: dict[int, str], decoupled: bool) -> None:
        self.index = index
        self.optimizer = optimizer
        self.names = names
        self.decoupled = decoupled
        self.handle: Any = None
        self.step: int | None = None
        self.tracks: dict[str, R.Track] = {}
        self.fallback_named = 0
        self.logged = 0  # logging steps of this optimizer (all tensors every `all_every` of them)
        self.pre_handle: Any = None
        self.geff: dict[int, Any] = {}  # id(param) -> grad + wd·param before the step (Adam's L2)
        # the β2 / eps its all-parameters rules use (the longest memory, the smallest eps), last seen
        self.beta2 = 0.999
        self.eps = 1e-8
        self.grad_norm = GradNormRing()  # per-step gradient-norm estimate: scan's one-batch rule at a blowup
        self.gn_params: list[Any] | None = None  # the GN_MAX_TENSORS largest parameters (chosen once)
        # (step, lr of the first param group) at the observed steps: scan's spike-cycle rule asks whether the lr
        # rose over v's memory before a blowup (a warm-up) — the lr scan reads from a logged lr tag
        self.lrs: deque[tuple[int, float]] = deque(maxlen=R.STRETCH_WINDOW)

    def note_lr(self) -> None:
        """The first param group's lr at this step, when it is a plain number (a tensor lr is left out: reading
        it could wait for the device)."""
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
        if isinstance(lr, int | float) and self.step is not None:
            self.lrs.append((self.step, float(lr)))

    def lr_series(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.lrs:
            return None
        a = np.array(self.lrs, dtype=np.float64)
        return a[:, 0].astype(np.int64), a[:, 1]

    def record_grad_norm(self) -> None:
        if self.gn_params is None:
            ps = [p for g in self.optimizer.param_groups for p in g["params"]]
            self.gn_params = sorted(ps, key=lambda p: -p.numel())[:GN_MAX_TENSORS]
        grads = [p.grad for p in self.gn_params if p.grad is not None]
        if grads and self.step is not None:
            self.grad_norm.record(self.step, grads)

    def track(self, label: str) -> R.Track:
        t = self.tracks.get(label)
        if t is None:
            # the all-parameters trajectory keeps its recent points: scan's blowup evidence reads them
            t = self.tracks[label] = R.Track.with_history() if label == "global" else R.Track()
        return t

    def name(self, p: Any, gi: int, pi: int) -> str:
        n = self.names.get(id(p))
        if n is None:
            n = self.names[id(p)] = f"group{gi}.param{pi}"
            self.fallback_named += 1
        return n


class AdamMonitor:
    """Watches torch Adam/AdamW optimizers during training and warns before a v-collapse blowup.

    Registers a step post-hook on each optimizer; nothing else to call. Every ``every``-th step it
    computes per tensor, from the live state and gradients: mean g², mean v̂ (bias-corrected),
    r = mean(g²)/mean(v̂ of the previous step), the fractions of √v̂ below eps and 10·eps, the
    update RMS sqrt(mean(g²/max(v̂, eps²))) and a histogram of √v̂ over float32's exponent bits
    (p01/p50/p99 within one bin width, a factor √2, of the exact quantiles). One host sync per
    logging step; every step also adds a gradient-norm estimate from a strided sample of the largest
    gradients (kept on the device, no sync) for scan's one-batch rule at a blowup of the fed loss.

    Tags (``writer``: a torch or tensorboardX SummaryWriter): ``adamdiag/global/<signal>`` every
    logging step, ``adamdiag/<tensor>/<signal>`` for the ``top_k`` riskiest tensors every logging
    step and for all tensors every ``all_every`` logging steps; ``adamdiag/<i>/…`` (i = optimizer
    index) when several optimizers are watched. Findings (AD101/AD102/AD103/AD401, and AD001/AD002/AD301
    with the loss fed; scan's rules and thresholds) go to the ``adamdiag.monitor`` logger, a TensorBoard text summary,
    ``on_finding(finding)``, ``<run_dir>/adamdiag-live.json`` (rank 0) and, with
    ``raise_on="error"`` (or "warning"), an :class:`AdamDiagAlarm` out of ``optimizer.step()``.

    Any other failure inside the monitor is warned about once and disables the monitor: it never
    breaks training.

    >>> import torch
    >>> m = torch.nn.Linear(2, 1); opt = torch.optim.AdamW(m.parameters())
    >>> with AdamMonitor(opt, model=m, every=1) as mon:
    ...     m(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> [f.id for f in mon.findings]
    []
    """

    def __init__(
        self,
        optimizer: Any,
        model: Any = None,
        writer: Any = None,
        every: int = 10,
        names: Mapping[str, Any] | Sequence[str] | None = None,
        on_finding: Callable[[R.Finding], Any] | None = None,
        raise_on: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        top_k: int = 8,
        all_every: int = 10,
        live_every: int = 20,
    ) -> None:
        import torch

        if raise_on is not None and raise_on not in SEVERITIES:
            raise ValueError(f"raise_on must be one of {SEVERITIES} or None, not {raise_on!r}")
        self.every = max(1, int(every))
        self.writer = writer
        self.on_finding = on_finding
        self.raise_on = raise_on
        self.top_k = max(0, int(top_k))
        self.all_every = max(1, int(all_every))
        self.live_every = max(1, int(live_every))
        if run_dir is None and writer is not None:
            run_dir = getattr(writer, "log_dir", None) or getattr(writer, "logdir", None)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.findings: list[R.Finding] = []
        # label ("global" or a tensor name; "<i>/…" with several optimizers) -> signal -> value, of the
        # last logging step
        self.last: dict[str, dict[str, float]] = {}
        self.enabled = True
        self.warning_step: int | None = None
        self.blowup_step: int | None = None
        self._verdict = "healthy"
        self._warned: set[str] = set()
        self._engine = StatsEngine()
        self._logged = 0
        self._loss_nonfinite = False
        self._loss: list[tuple[int, float]] = []  # fed (step, loss), the last 1-2 LOSS_WINDOW of them
        self._loss_checked = -(10**18)
        self._loss_blown = False
        # a blowup whose verdict waits for one more step's gradient norm (is the jump gone at the next step?)
        self._pending_blowup: Any = None
        self._pending_waits = 0
        self._loss_seen: set[tuple[str, int | None]] = set()
        self._resumed = False  # the live file of a run restarted from a checkpoint has been read
        self._names_given = model is not None or names is not None

        opts = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        self._multi = len(opts) > 1
        by_id = _names_by_id(model, names, opts)
        self._watches: list[_Watch] = []
        for i, opt in enumerate(opts):
            if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
                self._warn_once(
                    f"type:{i}",
                    f"adamdiag monitor: {type(opt).__name__} is not torch.optim.Adam/AdamW; not watching it",
                )
                continue
            w = _Watch(i, opt, dict(by_id), isinstance(opt, torch.optim.AdamW))
            w.handle = opt.register_step_post_hook(self._hook_for(w))
            if not w.decoupled and any(
                float(g.get("weight_decay", 0) or 0) and not g.get("decoupled_weight_decay") for g in opt.param_groups
            ):
                w.pre_handle = opt.register_step_pre_hook(self._pre_hook_for(w))
            self._watches.append(w)
        if self._watches and model is None and names is None:
            self._warn_once(
                "names",
                "adamdiag monitor: no parameter names (pass model= or names=); tensors are called group<i>.param<j>",
            )

    # --- public ---------------------------------------------------------------------------------
    @property
    def step(self) -> int | None:
        """The optimizer step of the last hook call (of the first watched optimizer)."""
        return self._watches[0].step if self._watches else None

    @property
    def verdict(self) -> str:
        """scan's verdict on what the monitor has seen so far: ``healthy``; once the fed loss blew up
        (AD001), scan's rules on the monitor's evidence — ``v_collapse`` (a deep, stale or shrunken v
        before it), ``bad_batch`` (a ≥10x one-step jump of the per-step gradient-norm estimate at the
        blowup, gone at the next step) or else ``lr_too_high``; ``nonfinite`` (AD401). A collapse in
        progress is the AD101 warning (and :attr:`warning_step`), not a verdict — scan calls a run
        whose v collapses without a blowup healthy, with the same warning."""
        return self._verdict

    def log_loss(self, step: int, value: Any) -> None:
        """Feed the training loss. A non-finite loss gives AD401; a blowup of the fed curve gives AD001
        and a recovered spike AD002 (scan's loss-event detector and texts, evaluated on the last
        ``LOSS_WINDOW`` fed points at most once per ``every`` steps). Never raises except
        :class:`AdamDiagAlarm` under ``raise_on``."""
        if not self.enabled:
            return
        try:
            v = float(value)
            st = int(step)
            if not math.isfinite(v) and not self._loss_nonfinite:
                self._loss_nonfinite = True
                self.blowup_step = st if self.blowup_step is None else self.blowup_step
                self._emit([R.nonfinite_finding(st, source="loss (log_loss)")], st)
            self._loss.append((st, v))
            if len(self._loss) > 2 * LOSS_WINDOW:
                del self._loss[:LOSS_WINDOW]
            if self._loss_blown or st - self._loss_checked < self.every:
                return
            self._check_loss(st)
        except AdamDiagAlarm:
            raise
        except Exception as e:  # noqa: BLE001 - never break training
            self._fail(e)

    def _check_loss(self, st: int) -> None:
        """scan's loss-event detector on the last LOSS_WINDOW fed points (at fed step ``st``): AD001 /
        AD002 findings not said before, and at a blowup the verdict (with AD301 for a bad batch) and AD102."""
        self._loss_checked = st
        events = R.loss_events(self._loss[-LOSS_WINDOW:])
        new = [f for f in R.loss_findings([], events) if (f.id, f.step) not in self._loss_seen]
        verdict_findings: list[R.Finding] = []
        for f in new:
            self._loss_seen.add((f.id, f.step))
            if f.id == "AD001":
                self._loss_blown = True
                if f.step is not None:
                    self.blowup_step = f.step if self.blowup_step is None else min(self.blowup_step, f.step)
                verdict_findings += self._blowup_verdict(events)
        new += verdict_findings
        blown = [f.step for f in new if f.id == "AD001" and f.step is not None]
        if blown:
            new += self._regrowth(blown[0])
        if new:
            self._emit(new, st)

    def _blowup_verdict(self, events: Any, final: bool = False) -> list[R.Finding]:
        """The fed loss blew up: scan's verdict rules on the all-parameters trajectory with the event
        where scan puts it (the start of the instability episode), and on the per-step gradient-norm
        estimate at the blowup. A v collapse — deep, stale or a shrunken v̂, as scan decides it — in any
        optimizer makes the verdict ``v_collapse`` and gives scan's warning step (kept when a live AD101
        warning came earlier: the evidence was visible then); else the verdict is what scan's rules say
        on the same evidence — ``bad_batch`` (a ≥10x one-step gradient jump, with scan's AD301, returned)
        or ``lr_too_high`` (a blowup without either) — never ``healthy``. Until the gradient norm reaches
        one step past the blowup's neighbours the decision waits, at most PENDING_MAX_STEPS optimizer
        steps (``final``: decide now)."""
        start = R.event_start(events)
        if start is None or self._verdict != "healthy":
            return []
        norms = [w.grad_norm.series() for w in self._watches]  # one device → host copy each
        waited = self._pending_blowup is not None and self._pending_waits >= PENDING_MAX_STEPS
        if not (final or waited) and any(R.grad_norm_pending(gn, events.blowup_step) for gn in norms):
            # scan's one-batch rule reads the gradient norm next to the blowup and one step after a jump
            # there: decide once the optimizer has made those steps
            if self._pending_blowup is None:
                self._pending_waits = 0
            self._pending_blowup = events
            return []
        self._pending_blowup = None
        found: list[R.BlowupEvidence] = []
        for w, gn in zip(self._watches, norms):
            t = w.tracks.get("global")
            be = (
                R.blowup_evidence(
                    t, w.eps, w.beta2, start, gn, events.blowup_step, lr_series=w.lr_series(), spikes=events.spikes
                )
                if t is not None
                else None
            )
            if be is None:
                continue
            if be.verdict == "v_collapse" and be.warning_step is not None:
                self._verdict = "v_collapse"
                self.warning_step = (
                    be.warning_step if self.warning_step is None else min(self.warning_step, be.warning_step)
                )
                return []
            found.append(be)
        if not found:
            return []
        first = found[0]
        self._verdict = first.verdict
        if first.verdict == "bad_batch" and self.warning_step is None:
            self.warning_step = first.warning_step
        return first.findings

    def _regrowth(self, blowup: int) -> list[R.Finding]:
        """AD102 as scan reports it: trajectories whose r rose above REGROWTH_R in the REGROWTH_WINDOW
        steps before the blowup — widened by one logging interval after it, the first point the monitor
        sees at or after the onset. Live r spikes without a blowup (a small tensor under mini-batch
        noise) are no error: scan would not call them one either."""
        lo, hi = blowup - R.REGROWTH_WINDOW, blowup + self.every + 1
        peaks = []
        for w in self._watches:
            for label, t in w.tracks.items():
                pk = t.peak_r(lo, hi)
                if pk is not None:
                    peaks.append((label, pk[0], pk[1]))
        return R.regrowth_findings(peaks)

    def close(self) -> None:
        """Remove the hooks, look at the fed losses since the last check (a run that stops a few steps
        after its blowup must not end without its AD001), decide a blowup verdict still waiting for the
        gradient norm, and write the live file a last time."""
        for w in self._watches:
            for h in (w.handle, w.pre_handle):
                if h is not None:
                    h.remove()
            w.handle = w.pre_handle = None
        if self.enabled:
            try:
                if not self._loss_blown and self._loss and self._loss[-1][0] > self._loss_checked:
                    self._check_loss(self._loss[-1][0])
                if self._pending_blowup is not None:  # decide now on the gradient norm there is
                    new = self._blowup_verdict(self._pending_blowup, final=True)
                    if new:
                        self._emit(new, self.step or 0)
            except AdamDiagAlarm:
                raise
            except Exception as e:  # noqa: BLE001 - never break training
                self._fail(e)
        if self.enabled and self._logged:
            try:
                self._write_live()
            except Exception as e:  # noqa: BLE001
                self._fail(e)

    def __enter__(self) -> AdamMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def live_report(self) -> dict[str, Any]:
        """The ``adamdiag.live/1`` document (what ``adamdiag-live.json`` holds)."""
        from adamdiag import __version__

        run = {
            "run": str(self.run_dir) if self.run_dir is not None else None,
            "verdict": self._verdict,
            "blowup_step": self.blowup_step,
            "warning_step": self.warning_step,
            "findings": [asdict(f) for f in self.findings],
            "step": self.step,
            "sources": ["live"],
            "in_progress": True,
            # what a monitor resuming this run from a checkpoint needs to go on (not part of report/1):
            # each trajectory's peak v̂ so far, which the collapse depth is measured against
            "monitor_state": {
                "peaks": {
                    (f"{w.index}/{label}" if self._multi else label): [t.peak_step, t.peak]
                    for w in self._watches
                    for label, t in w.tracks.items()
                    if t.peak > 0
                }
            },
        }
        return R.json_safe({"schema": LIVE_SCHEMA, "tool_version": __version__, "updated": time.time(), "runs": [run]})

    # --- hook -----------------------------------------------------------------------------------
    def _hook_for(self, w: _Watch) -> Callable[..., None]:
        def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            if not self.enabled:
                return
            try:
                if w.step is None:
                    w.step = _state_step(optimizer)
                    if w.step > 1 and not self._resumed:
                        # an optimizer restored from a checkpoint: whichever watched optimizer steps
                        # first with restored state (the first one may be new after the restart, or
                        # step later than the others), once for all of them
                        self._resumed = True
                        self._resume(w.step - 1)
                else:
                    w.step += 1
                w.record_grad_norm()
                if self._pending_blowup is not None and w is self._watches[0]:
                    self._pending_waits += 1
                    new = self._blowup_verdict(self._pending_blowup)
                    if new:
                        self._emit(new, w.step)
                if w.step % self.every == 0:
                    w.note_lr()
                    self._observe(w)
                elif w.step < self.every:
                    # v̂ peaks in the first steps (v̂_1 = g²_1): a logging grid that starts at step
                    # `every` would miss the peak that the collapse depth is measured against.
                    self._observe(w, peak_only=True)
            except AdamDiagAlarm:
                raise
            except Exception as e:  # noqa: BLE001 - never break training
                self._fail(e)

        return hook

    def _pre_hook_for(self, w: _Watch) -> Callable[..., None]:
        """Adam's L2 decay squares grad + wd·p with the *pre-step* p: keep that gradient, on the
        steps that are observed only, so g² is exact (one gradient-sized copy, freed after the step)."""

        def pre_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            if not self.enabled:
                return
            try:
                nxt = (w.step + 1) if w.step is not None else _state_step(optimizer, default=0) + 1
                if nxt % self.every and nxt >= self.every:
                    return
                w.geff.clear()
                for group in optimizer.param_groups:
                    wd = float(group.get("weight_decay", 0) or 0)
                    if not wd or group.get("decoupled_weight_decay"):
                        continue
                    for p in group["params"]:
                        if p.grad is not None:
                            w.geff[id(p)] = p.grad.detach().float().add(p.detach().float(), alpha=wd)
            except Exception as e:  # noqa: BLE001 - never break training
                self._fail(e)

        return pre_hook

    def _observe(self, w: _Watch, peak_only: bool = False) -> None:
        names, rows, meta = self._rows(w)
        if not rows:
            return
        arr = _to_host(rows, list(meta["sharded"]))
        if arr is None:
            return
        step = int(w.step or 0)
        labels, sig, hist, glob = _signals(arr, meta, names)
        pre = f"{w.index}/" if self._multi else ""
        prefix = f"adamdiag/{pre}"
        if peak_only:
            w.track("global").see_peak(glob["vhat_mean"], step)
            for i, name in enumerate(labels):
                w.track(name).see_peak(float(sig["vhat_mean"][i]), step)
            # The global tags too (these few steps, once): scan measures the collapse's depth against the
            # peak v̂ of the trajectory it reads, and that peak is usually here, before the logging grid.
            # (Not per tensor — no labels given: a tensor logged every all_every·every steps would then read
            # as logged every step, and its quiet stretch would need 10-100x more points to count.)
            self._write_scalars(prefix, step, labels=[], sig=sig, glob=glob, order=[], logged=0)
            return
        self._logged += 1
        w.logged += 1
        cur = {
            pre + "global": glob,
            **{pre + labels[i]: {k: float(sig[k][i]) for k in sig} for i in range(len(labels))},
        }
        if self._multi:
            self.last.update(cur)  # "<optimizer index>/<label>", like the tags
        else:
            self.last = cur
        order = _risk_order(sig, [w.track(n).peak for n in labels])
        new = self._rules(w, step, labels, sig, glob, meta)
        self._write_scalars(prefix, step, labels, sig, glob, order, w.logged)
        if new:
            self._emit(new, step, prefix)
        elif self._logged % self.live_every == 0:
            self._write_live()

    def _rows(self, w: _Watch) -> tuple[list[str], list[Any], dict[str, np.ndarray]]:
        names, items, beta2s, epss = [], [], [], []
        sharded: list[bool] = []
        for gi, group in enumerate(w.optimizer.param_groups):
            b2, eps = float(group["betas"][1]), float(group["eps"])
            for pi, p in enumerate(group["params"]):
                st = w.optimizer.state.get(p)
                if p.grad is None or not st or "exp_avg_sq" not in st:
                    continue
                sharded.append(hasattr(st["exp_avg_sq"], "to_local"))  # a DTensor shard (FSDP2)
                wd = float(group.get("weight_decay", 0.0) or 0.0)
                l2 = wd != 0.0 and not (w.decoupled or bool(group.get("decoupled_weight_decay", False)))
                geff = w.geff.pop(id(p), None) if l2 else None
                if geff is not None:
                    items.append((geff, None, 0.0, st, group))
                elif l2:  # no pre-step copy (first step): the post-step p, off by O(lr·wd) relative
                    items.append((p.grad, p, wd, st, group))
                else:
                    items.append((p.grad, None, 0.0, st, group))
                names.append(w.name(p, gi, pi))
                beta2s.append(b2)
                epss.append(eps)
        if w.fallback_named and self._names_given:
            self._warn_once(
                "names:partial",
                f"adamdiag monitor: {w.fallback_named} optimizer parameter(s) are not in the model; "
                "they are called group<i>.param<j>",
            )
        rows = self._engine.rows(items) if items else []
        return names, rows, {"beta2": np.array(beta2s), "eps": np.array(epss), "sharded": np.array(sharded, dtype=bool)}

    # --- rules ----------------------------------------------------------------------------------
    def _rules(
        self,
        w: _Watch,
        step: int,
        labels: list[str],
        sig: dict[str, np.ndarray],
        glob: dict[str, float],
        meta: dict[str, np.ndarray],
    ) -> list[R.Finding]:
        out: list[R.Finding] = []
        beta2 = float(np.max(meta["beta2"]))  # the longest memory: the slowest collapse to confirm
        eps = float(np.min(meta["eps"]))
        w.beta2, w.eps = beta2, eps
        bad = [labels[i] for i in range(len(labels)) if not sig["finite"][i]]
        tr = w.track("global")
        if bad and not tr.nonfinite_fired:
            tr.nonfinite_fired = True
            out.append(R.nonfinite_finding(step, bad))
        # AD101 / AD102, all parameters then each tensor.
        if tr.update(step, glob["r"], glob["vhat_mean"], self.every, beta2, glob["g2_mean"]):
            f = R.collapse_finding(tr, "global", eps, beta2)
            if f is not None:
                out.append(f)
        # No live finding for scan's stale_v / shrunken_v evidence (a shallow quiet stretch for part of v's
        # memory, or v̂ 100x below its peak): early training shows it on almost every run — on the whole
        # group-0 matrix 21 of 22 healthy runs had it by step 30-80 — so it is evidence only in hindsight,
        # once the loss has blown up (then blowup_evidence gives scan's verdict and warning step).
        tr.note_r(step, glob["r"])  # AD102 when the fed loss blows up (log_loss), as scan's
        fired: list[R.Finding] = []
        for i, name in enumerate(labels):
            t = w.track(name)
            r = float(sig["r"][i])
            b2, e = float(meta["beta2"][i]), float(meta["eps"][i])
            if t.update(step, r, float(sig["vhat_mean"][i]), self.every, b2, float(sig["g2_mean"][i])):
                f = R.collapse_finding(t, name, e, b2)
                if f is not None:
                    fired.append(f)
            t.note_r(step, r)
        if fired:
            # scan's per-tensor finding for the (at most MAX_NAMES_SHOWN) deepest new ones; the others
            # are listed in the evidence of the first, so 300 tensors collapsing together are 3 lines
            fired.sort(key=lambda f: (f.severity != "warning", f.evidence.get("median_r", math.inf)))
            shown = fired[: R.MAX_NAMES_SHOWN]
            if len(fired) > len(shown):
                shown[0].evidence["also_collapsing"] = [
                    {"tensor": f.tensor, "severity": f.severity, **f.evidence} for f in fired[len(shown) :][:50]
                ]
            out.extend(shown)
        # AD103: update RMS, all parameters (re-armed when it falls back below the limit).
        u = glob["update_rms"]
        # In the first steps v̂ averages the last few g² (at t=1, v̂ = g² exactly): mean(g²/v̂) is ~1
        # by construction there, not a sign of anything (scan has no v̂_prev at t=1 either).
        over = step >= MIN_RMS_STEP and math.isfinite(u) and u > R.UPDATE_RMS_LIMIT
        if over and not tr.rms_over:
            out.append(R.update_rms_finding("global", step, u))
            tr.rms_over = True
        elif tr.rms_over and math.isfinite(u) and u < RMS_REARM * R.UPDATE_RMS_LIMIT:
            tr.rms_over = False
        return out

    def _emit(self, new: list[R.Finding], step: int, prefix: str = "adamdiag/") -> None:
        for f in new:
            if len(self.findings) < MAX_FINDINGS:
                self.findings.append(f)
            # The warning step follows scan: a collapse of all parameters that eps does not bound (a
            # single tensor's collapse is a finding only; a run whose eps bounds the step overall has no
            # warning step, as scan says of sample_logs/stable_eps1e-3). The verdict turns v_collapse
            # only when the fed loss blows up after it (log_loss), as scan's does.
            if f.id == "AD101" and f.severity == "warning" and f.tensor is None and self.warning_step is None:
                self.warning_step = f.step
            if f.id == "AD401":
                self._verdict = "nonfinite"
            log.log(
                {"error": logging.ERROR, "warning": logging.WARNING}.get(f.severity, logging.INFO),
                "adamdiag %s %s step %s: %s",
                f.id,
                f.severity,
                f.step,
                f.message,
            )
        self._writer_call(
            "add_text",
            prefix + "findings",
            "\n\n".join(f"**{f.id}** {f.severity} (step {f.step}): {f.message}" for f in new),
            step,
        )
        self._write_live()
        if self.on_finding is not None:
            for f in new:
                try:
                    self.on_finding(f)
                except Exception as e:  # noqa: BLE001 - a failing callback must not break training
                    self._warn_once("on_finding", f"adamdiag monitor: on_finding raised {type(e).__name__}: {e}")
        if self.raise_on is not None:
            rank = SEVERITIES.index(self.raise_on)
            for f in new:
                if SEVERITIES.index(f.severity) >= rank:
                    raise AdamDiagAlarm(f)

    # --- outputs --------------------------------------------------------------------------------
    def _write_scalars(
        self,
        prefix: str,
        step: int,
        labels: list[str],
        sig: dict[str, np.ndarray],
        glob: dict[str, float],
        order: list[int],
        logged: int,
    ) -> None:
        if self.writer is None:
            return
        chosen = range(len(labels)) if logged % self.all_every == 0 else order[: self.top_k]
        values = [(f"{prefix}global/{k}", float(glob[k])) for k in SIGNALS]
        values += [(f"{prefix}{labels[i]}/{k}", float(sig[k][i])) for i in chosen for k in SIGNALS]
        summary = _scalar_summary(self.writer, values)
        if summary is not None:
            # One event holding all the values (TensorBoard and adamdiag's reader take each value of
            # an event as its own scalar): ~80 add_scalar calls cost ~9 ms a logging step, mostly
            # waiting on the writer's 10-event queue; one event costs ~0.3 ms.
            self._writer_call("_get_file_writer", then=lambda fw: fw.add_summary(summary, step))
            return
        for tag, value in values:  # another writer: its own add_scalar, one value at a time
            if not self._writer_call("add_scalar", tag, value, step):
                return

    def _writer_call(self, method: str, *args: Any, then: Callable[[Any], Any] | None = None) -> bool:
        """``writer.<method>(*args)`` (and ``then`` on its result); False, with one warning, when the
        writer is closed or raises (it is dropped: training goes on without the tags)."""
        w = self.writer
        if w is None:
            return False
        # torch's and tensorboardX's writers silently open a *new* event file when used after
        # close(); a closed writer means the user is done with it, so stop writing instead.
        if hasattr(w, "file_writer") and getattr(w, "file_writer", None) is None:
            self.writer = None
            self._warn_once(
                "writer", "adamdiag monitor: the SummaryWriter is closed; adamdiag/* tags are no longer written"
            )
            return False
        try:
            out = getattr(w, method)(*args)
            if then is not None:
                then(out)
            return True
        except Exception as e:  # noqa: BLE001 - a broken writer disables the writing only
            self.writer = None
            self._warn_once(
                "writer",
                f"adamdiag monitor: writing to the SummaryWriter failed ({type(e).__name__}: {e}); "
                "adamdiag/* tags are no longer written",
            )
            return False

    def _resume(self, upto: int) -> None:
        """A run restarted from a checkpoint taken after step ``upto``: go on from the live file the
        monitor before the restart wrote in ``run_dir`` — its findings, warning step and each
        trajectory's peak v̂ up to that step (what came after belongs to the run that was abandoned).
        Without the peak the new monitor could never see a collapse as deep: v̂ is already down."""
        path = self.run_dir / LIVE_FILE if self.run_dir is not None else None
        if path is None or not path.is_file():
            return
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("schema") != LIVE_SCHEMA or not doc.get("runs"):
                return
            run = doc["runs"][0]
            kept = [
                R.Finding(**{k: f[k] for k in ("id", "severity", "message", "step", "tensor", "evidence") if k in f})
                for f in run.get("findings", [])
                if f.get("step") is not None and int(f["step"]) <= upto
            ]
            peaks = (run.get("monitor_state") or {}).get("peaks") or {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            self._warn_once("resume", f"adamdiag monitor: {path}: not resumed from it ({type(e).__name__}: {e})")
            return
        for label, (st, v) in peaks.items():
            idx, _, name = label.partition("/") if self._multi else ("0", "", label)
            for w in self._watches:
                if str(w.index) == idx and st is not None and int(st) <= upto and v is not None:
                    w.track(name).see_peak(float(v), int(st))
        self.findings = kept + self.findings
        warn = run.get("warning_step")
        if warn is not None and int(warn) <= upto:
            self.warning_step = int(warn)
        self._loss_seen |= {(f.id, f.step) for f in kept if f.id in ("AD001", "AD002")}
        log.info(
            "adamdiag monitor: resumed at step %d from %s (%d findings, %d peaks)", upto, path, len(kept), len(peaks)
        )

    def _write_live(self) -> None:
        if self.run_dir is None or not _is_rank0():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dest = self.run_dir / LIVE_FILE
        tmp = dest.with_name(f".{LIVE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.live_report(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, dest)  # atomic: `adamdiag check` never reads half a file

    # --- failure handling -----------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.warning(message)

    def _fail(self, e: BaseException) -> None:
        self.enabled = False
        for w in self._watches:
            for h in (w.handle, w.pre_handle):
                if h is not None:
                    h.remove()
            w.handle = w.pre_handle = None
        self._warn_once("fail", f"adamdiag monitor disabled after an internal error: {type(e).__name__}: {e}")


# --- helpers --------------------------------------------------------------------------------------
def _scalar_summary(writer: Any, values: list[tuple[str, float]]) -> Any:
    """A Summary proto with one simple_value per (tag, value), of the proto module ``writer``'s own
    file writer serialises (torch's writer: tensorboard's; tensorboardX: its own); None for any
    other writer."""
    if not callable(getattr(writer, "_get_file_writer", None)):
        return None
    module = type(writer).__module__
    try:
        if module.startswith("tensorboardX"):
            from tensorboardX.proto.summary_pb2 import Summary  # type: ignore[import-untyped]
        elif module.startswith("torch.utils.tensorboard"):
            from tensorboard.compat.proto.summary_pb2 import Summary
        else:
            return None
    except ImportError:
        return None
    return Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values])


def _names_by_id(model: Any, names: Any, opts: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    if model is not None and hasattr(model, "named_parameters"):
        for n, p in model.named_parameters():
            out.setdefault(id(p), n)
    if isinstance(names, Mapping):
        for n, p in names.items():
            out[id(p)] = str(n)
    elif names is not None:
        seq = list(names)
        params = [p for o in opts for g in o.param_groups for p in g["params"]]
        for n, p in zip(seq, params):
            out[id(p)] = str(n)
    return out


def _state_step(optimizer: Any, default: int = 1) -> int:
    """The optimizer's step count (read once, at the first hook call: after that step)."""
    for st in optimizer.state.values():
        s = st.get("step") if isinstance(st, dict) else None
        if s is not None:
            return int(float(s))
    return default


def _to_host(rows: list[Any], sharded: list[bool]) -> np.ndarray | None:
    """Stack the rows per device, all-reduce them over DTensor shards, move to the host: one sync
    per device (one in the usual single-device case)."""
    import torch

    by_dev: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        by_dev.setdefault(r.device, []).append(i)
    out = np.empty((len(rows), rows[0].numel()), dtype=np.float64)
    for idx in by_dev.values():
        stacked = torch.stack([rows[i] for i in idx])
        if any(sharded[i] for i in idx):
            stacked = _all_reduce(stacked, torch.tensor([sharded[i] for i in idx], device=stacked.device))
        out[idx] = stacked.cpu().numpy()
    return out


def _all_reduce(stacked: Any, sharded: Any) -> Any:
    """Sum the rows of DTensor shards over the ranks (sums, counts and histograms add up); a
    replicated tensor's row counts once (rank 0's)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stacked
    world = dist.get_world_size()
    if dist.get_rank() != 0:
        stacked[~sharded] = 0.0
    dist.all_reduce(stacked)
    stacked[sharded, STEP] /= world  # every rank holds the same step
    return stacked


def _is_rank0() -> bool:
    try:
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    except Exception:  # noqa: BLE001
        return True


def _signals(
    arr: np.ndarray, meta: dict[str, np.ndarray], names: list[str]
) -> tuple[list[str], dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    """Per-tensor and all-parameter signals from the host rows (float64, vectorised)."""
    n = arr[:, NUMEL]
    t = arr[:, STEP]
    b2 = meta["beta2"]
    hist = arr[:, NSCALAR : NSCALAR + NBINS]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g2 = arr[:, SUM_G2] / n
        v = arr[:, SUM_V] / n
        bc = -np.expm1(t * np.log(b2))
        bc_prev = -np.expm1((t - 1) * np.log(b2))
        vhat = v / bc
        # v_{t-1} from v_t and g²_t (v_t = β2·v_{t-1} + (1-β2)·g²_t): exact, and no pre-step hook.
        v_prev = np.maximum((v - (1.0 - b2) * g2) / b2, 0.0)
        vhat_prev = np.where(t > 1, v_prev / bc_prev, np.nan)
        r = np.where(vhat_prev > 0, g2 / vhat_prev, np.nan)
        sig = {
            "g2_mean": g2,
            "vhat_mean": vhat,
            "r": r,
            "frac_below_eps": arr[:, CNT_EPS] / n,
            "frac_below_10eps": arr[:, CNT_10EPS] / n,
            "update_rms": np.sqrt(arr[:, SUM_UPD] / n),
        }
        q = hist_quantiles(hist, (0.01, 0.5, 0.99), bc)
        sig["sqrt_vhat_p01"], sig["sqrt_vhat_p50"], sig["sqrt_vhat_p99"] = q[:, 0], q[:, 1], q[:, 2]
        sig["finite"] = np.isfinite(arr[:, SUM_G2]) & np.isfinite(arr[:, SUM_V])
        N = n.sum()
        gq = merged_quantiles(hist, (0.01, 0.5, 0.99), bc)
        vp_all = np.sum(vhat_prev * n) / N
        glob = {
            "g2_mean": float(arr[:, SUM_G2].sum() / N),
            "vhat_mean": float(np.sum(vhat * n) / N),
            "r": float(arr[:, SUM_G2].sum() / N / vp_all) if vp_all > 0 else float("nan"),
            "frac_below_eps": float(arr[:, CNT_EPS].sum() / N),
            "frac_below_10eps": float(arr[:, CNT_10EPS].sum() / N),
            "update_rms": float(math.sqrt(arr[:, SUM_UPD].sum() / N)) if arr[:, SUM_UPD].sum() >= 0 else float("nan"),
            "sqrt_vhat_p01": float(gq[0]),
            "sqrt_vhat_p50": float(gq[1]),
            "sqrt_vhat_p99": float(gq[2]),
        }
    return names, sig, hist, glob


def _risk_order(sig: dict[str, np.ndarray], peaks: list[float]) -> list[int]:
    """Tensors, riskiest first: non-finite, then update RMS > 1, then the deepest fall of v̂ below
    its own peak, then the smallest r.

    >>> sig = {"vhat_mean": np.array([1.0, 0.01, 0.5]), "finite": np.array([True, True, True]),
    ...        "update_rms": np.array([0.1, 0.1, 2.0]), "r": np.array([1.0, 0.01, 1.0])}
    >>> _risk_order(sig, [1.0, 1.0, 1.0])
    [2, 1, 0]
    """
    vh = np.asarray(sig["vhat_mean"], dtype=np.float64)
    pk = np.asarray(peaks, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.nan_to_num(np.where(pk > 0, vh / pk, 1.0), nan=1.0)
    r = np.nan_to_num(np.asarray(sig["r"], dtype=np.float64), nan=1.0)
    over = np.asarray(sig["update_rms"]) > R.UPDATE_RMS_LIMIT
    # np.lexsort: the last key is the primary one; ascending, so "risky" maps to small values.
    return np.lexsort((r, depth, ~over, np.asarray(sig["finite"], dtype=bool))).tolist()
