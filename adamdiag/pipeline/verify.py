"""``scan --verify`` / ``check --verify``: back a log verdict by replaying the suspect steps.

For each blown-up run diagnosed ``v_collapse`` or ``lr_too_high`` with a checkpoint before the
blowup and a replay entry, the run is replayed from that checkpoint with its own settings, the
recommendation's candidates and the competing cause's fix, one change at a time, for the default
horizon (long enough to tell "avoided" from "postponed"). The outcomes decide (README, "Verification"):

==========================================  ============================================================
eps fix avoided, no lr reduction did        ``v_collapse``
an lr reduction avoided, no eps fix did     ``lr_too_high``
both avoided                                keep the log verdict; the other cause is the ``alternative``;
                                            confidence medium
neither avoided                             keep the verdict; confidence low; AD106 "no tried change
                                            avoids it"
replay did not reproduce the log / budget   ``confirms: null``, ``verdict_source: logs`` (AD703)
==========================================  ============================================================

When the replay overrides the log verdict the run says ``verdict_source: "replay"`` and AD702 says
what changed. ``best`` is the ``avoided`` variant with the smallest change (smallest eps, largest lr).
No verification for ``bad_batch``/``nonfinite`` (nothing an eps or lr change would prove), nor for
runs without a blowup. An entry found by discovery inside the scanned tree runs only with
``--trust-entry`` (a third-party log tree may carry an ``adamdiag.toml``); "importing entry X from
FILE" is always printed on stderr before an entry is imported.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

from adamdiag.results.report import Finding, RunReport, Severity

VERIFIED_VERDICTS = ("v_collapse", "lr_too_high")
OTHER_CAUSE = {"v_collapse": "lr_too_high", "lr_too_high": "v_collapse"}


def _variants(plan: dict[str, Any]) -> list[Any]:
    from adamdiag.replay.protocol import Variant

    o = plan["original"]
    out = [Variant(f"eps={e:g}", e, o["beta2"], o["lr"]) for e in plan["eps"]]
    out += [Variant(f"lr={x:.3g}", o["eps"], o["beta2"], x) for x in plan["lr"]]
    return out


def _not_verified_finding(rep: RunReport, why: str, severity: Severity = "warning") -> None:
    """AD703 "not verified: <why>" at the blowup step: the one wording of every reason a log verdict
    stays unverified, whether or not a replay result is there to show."""
    rep.findings.append(Finding("AD703", severity, f"not verified: {why}", step=rep.blowup_step))


def _not_verified(rep: RunReport, why: str, severity: Severity = "warning") -> None:
    """AD703 when there is no replay result to show: the verification block holds only the reason."""
    _not_verified_finding(rep, why, severity)
    rep.verification = {"confirms": None, "reason": why}


def _kind(v: Any, original: dict[str, Any]) -> str | None:
    """Which single change a variant made: "eps", "lr", or None (the original)."""
    if not math.isclose(v.eps, original["eps"], rel_tol=1e-9):
        return "eps"
    if not math.isclose(v.lr, original["lr"], rel_tol=1e-9):
        return "lr"
    return None


def decide(rep: RunReport, result: Any, plan: dict[str, Any]) -> None:
    """Apply the decision table to ``rep`` from a replay ``result`` (adamdiag.replay.result.ReplayResult)."""
    from adamdiag.replay.result import common_blowup, unmoved_blowup

    original = plan["original"]
    variants = [
        {
            "name": v.name,
            "eps": v.eps,
            "beta2": v.beta2,
            "lr": v.lr,
            "outcome": v.outcome,
            "blowup_step": v.blowup_step,
            "final_loss": v.final_loss,
            "truncated": v.truncated,
        }
        for v in result.variants
    ]
    ver: dict[str, Any] = {
        "checkpoint": result.checkpoint,
        "start_step": result.start_step,
        "horizon_steps": result.steps,
        "fidelity": {
            "reproduced": result.fidelity.reproduced,
            "max_rel_dev": result.fidelity.max_rel_dev,
            "message": result.fidelity.message,
        },
        "variants": variants,
        "confirms": None,
        "best": None,
    }
    rep.verification = ver
    changed = [(v, _kind(v, original)) for v in result.variants]
    # the replay's block (fidelity, variants) stays in rep.verification: it shows why
    if not result.fidelity.reproduced:
        _not_verified_finding(rep, f"the replay does not reproduce the log ({result.fidelity.message})")
        return
    if all(v.truncated for v, k in changed if k is not None):
        _not_verified_finding(rep, "the budget ran out before any variant finished (--verify-budget)")
        return
    avoided = [(v, k) for v, k in changed if k is not None and v.outcome == "avoided"]
    eps_ok = [v for v, k in avoided if k == "eps"]
    lr_ok = [v for v, k in avoided if k == "lr"]
    log_verdict = rep.verdict
    # best: the smallest change that avoided it (smallest eps, largest lr); when both kinds did, the one
    # that fixes the log verdict's cause.
    if lr_ok and (not eps_ok or log_verdict == "lr_too_high"):
        best = max(lr_ok, key=lambda v: v.lr)
    else:
        best = min(eps_ok, key=lambda v: v.eps) if eps_ok else None
    if eps_ok and lr_ok:
        assert best is not None
        ver["confirms"] = True
        rep.alternative, rep.confidence = OTHER_CAUSE[log_verdict], "medium"
        msg = (
            f"verified by replay from step {result.start_step}: {best.name} avoids the blowup — but so does "
            f"{(lr_ok if log_verdict == 'v_collapse' else eps_ok)[0].name}, so {OTHER_CAUSE[log_verdict]} fits too"
        )
        rep.findings.append(Finding("AD701", "info", msg, step=rep.blowup_step))
        _drop_refuted_eps_claim(rep, eps_ok[0].name)
        _hold_recommendation_to_replay(rep, changed, result.start_step)
    elif eps_ok or lr_ok:
        assert best is not None  # eps_ok or lr_ok is not empty here
        replay_verdict = "v_collapse" if eps_ok else "lr_too_high"
        if replay_verdict == log_verdict:
            # every change that did not avoid it, the recommendation's own value included: a sized eps that
            # only postpones the blowup is said, not hidden behind the larger one that avoided it
            postponed = _postponed_text(changed, None)
            ver["confirms"] = True
            rep.confidence, rep.alternative, rep.verdict_source = "high", None, "replay"
            rep.findings.append(
                Finding(
                    "AD701",
                    "info",
                    f"verified by replay from step {result.start_step}: {best.name} avoids the blowup{postponed}",
                    step=rep.blowup_step,
                )
            )
            _hold_recommendation_to_replay(rep, changed, result.start_step)
        else:
            postponed = _postponed_text(changed, "lr" if eps_ok else "eps")
            ver["confirms"] = False
            rep.verdict, rep.verdict_source, rep.confidence, rep.alternative = replay_verdict, "replay", "high", None
            rep.findings.append(
                Finding(
                    "AD702",
                    "error",
                    f"the replay contradicts the log verdict {log_verdict}: {best.name} avoids the "
                    f"blowup{postponed}; verdict is now {replay_verdict}",
                    step=rep.blowup_step,
                    evidence={"log_verdict": log_verdict},
                )
            )
            _retarget_recommendation(rep, best, replay_verdict)
    elif (at := common_blowup(result.variants, result.start_step)) is not None:
        # Every change blew up at one later step together: an event in the data or the objective there, which
        # no eps or lr moves. The replay neither confirms nor refutes the verdict; it says how to judge it.
        ver["confirms"] = None
        _not_verified_finding(
            rep,
            f"every tried change moves the blowup from {rep.blowup_step} to step {at} whatever it changes — "
            f"something in the data or the objective at step {at}, not the optimizer; replay with --steps "
            f"{at - 1 - result.start_step} to judge the fixes before it",
        )
    elif (at := unmoved_blowup(result.variants)) is not None:
        # Every change blew up at the original's own step: from this checkpoint on nothing the optimizer does
        # matters. The trigger is at that step (new data, a changed objective) — or the damage predates the
        # checkpoint (weights that drifted while v collapsed): the replay cannot judge the verdict.
        ver["confirms"] = None
        rep.confidence = "low"
        tried = ", ".join(v.name for v, k in changed if k is not None)
        why = (
            f"every tried change ({tried}) blows up at step {at}, the original's own step: from step "
            f"{result.start_step} on no eps or lr moves it — the weights there meet something new in the data or "
            f"the objective at step {at}, or were damaged before step {result.start_step}"
        )
        rep.findings.append(
            Finding("AD106", "warning", f"no tried change avoids the blowup: {why}", step=rep.blowup_step)
        )
        _unconfirmed_recommendation(rep, result.start_step, at)
    else:
        ver["confirms"] = False
        rep.confidence = "low"
        tried = ", ".join(v.name for v, k in changed if k is not None)
        rep.findings.append(
            Finding(
                "AD106",
                "warning",
                f"no tried change avoids the blowup ({tried}){_postponed_text(changed, None)}",
                step=rep.blowup_step,
            )
        )
    ver["best"] = best.name if best is not None else None


def _outcome_text(v: Any) -> str | None:
    """What a variant that did not avoid the blowup did ("blows up at step 2002", "only postpones it (at
    risk)"); None for one that avoided it (or blew up without a step)."""
    if v.outcome == "blowup" and v.blowup_step is not None:
        return f"blows up at step {v.blowup_step}"
    if v.outcome == "at_risk":
        return f"only postpones it (at risk{', cut short' if v.truncated else ''})"
    return None


def _hold_recommendation_to_replay(rep: RunReport, changed: list[tuple[Any, str | None]], start: int) -> None:
    """The recommended value must be one the replay saw avoid the blowup. An eps sized from the measured √v̂
    (or an lr cut) that the replay shows blowing up later, or still collapsing at its end, is a postponement,
    not a fix — under a warm restart a dominating eps can still leave lr/eps too large. Then the
    recommendation moves to the smallest change beyond it that avoided the blowup, says so, and keeps the
    sized value as ``sized_eps`` / ``sized_lr`` (the value from √v̂, where a warm-restart floor set it
    first). A value the replay did not try, or cut short, stays."""
    rec = rep.recommendation
    if not rec:
        return
    kind = {"increase eps": "eps", "lower the learning rate": "lr"}.get(str(rec.get("action")))
    value = rec.get(kind or "")
    if kind is None or not isinstance(value, (int, float)) or not value > 0:
        return
    tried = [v for v, k in changed if k == kind and math.isclose(getattr(v, kind), value, rel_tol=1e-6)]
    if not tried or tried[0].truncated or tried[0].outcome not in ("blowup", "at_risk"):
        return
    avoided = [v for v, k in changed if k == kind and v.outcome == "avoided"]
    # "beyond": a larger eps, a smaller lr — the direction the sizing erred in
    beyond = [v for v in avoided if (v.eps > value if kind == "eps" else v.lr < value)]
    if not beyond:
        return
    pick = min(beyond, key=lambda v: v.eps) if kind == "eps" else max(beyond, key=lambda v: v.lr)
    done = _outcome_text(tried[0]) or "blows up"
    why = f"verified by replay from step {start}: it avoids the blowup, while {tried[0].name} {done}"
    if kind == "eps":
        current = rec.get("current_eps")
        msg, prefix = str(rec.get("message", "")), ""
        if msg.startswith("in optimizer `"):  # several optimizers in the file: which one stays said first
            head, _, msg = msg.partition(": ")
            prefix = f"{head}: "
        sizing = msg.partition(": ")[2]
        measured = rec.setdefault("sized_eps", value)  # a warm-restart floor may have moved it already
        rec["eps"] = pick.eps
        rec["message"] = f"{prefix}eps {current:g} → {pick.eps:g}: {why}" + (
            f"; the sizing from √v̂ chose {measured:g} ({sizing})" if sizing else ""
        )
    else:
        current = rec.get("current_lr")
        rec.setdefault("sized_lr", value)
        rec["lr"] = pick.lr
        if isinstance(current, (int, float)) and current > 0:
            rec["lr_scale"] = pick.lr / current
        cut = f" ({current / pick.lr:.3g}x)" if isinstance(current, (int, float)) and current > 0 else ""
        rec["message"] = f"lower lr to {pick.lr:.3g}{cut}: {why}; the advice from the log: {rec.get('message', '')}"


def _none_avoided(rep: RunReport) -> bool:
    """The replay reproduced the log and finished, and no variant avoided the blowup."""
    ver = rep.verification or {}
    return bool(
        ver.get("fidelity", {}).get("reproduced")
        and ver.get("variants")
        and not any(v["outcome"] == "avoided" for v in ver["variants"])
        and not all(v.get("truncated") for v in ver["variants"])
    )


def _postponed_text(changed: list[tuple[Any, str | None]], kind: str | None) -> str:
    """ "; lr=3.3e-4 only postpones it (blowup at 2002)" for variants of ``kind`` that blew up later or
    are at risk — the postponement that a short replay would have called a fix."""
    parts = [
        f"{v.name} {text}"
        for v, k in changed
        if k is not None and (kind is None or k == kind) and (text := _outcome_text(v)) is not None
    ]
    return "; " + "; ".join(parts) if parts else ""


def _drop_refuted_eps_claim(rep: RunReport, eps_variant: str) -> None:
    """An lr recommendation that said "eps will not help" (the log showed no v collapse) after the replay
    showed an eps change avoiding the blowup too: the claim goes, the replay's finding takes its place."""
    from adamdiag.analysis.recommend import NO_EPS_FIX

    rec = rep.recommendation or {}
    msg = rec.get("message")
    claim = f"; {NO_EPS_FIX}"
    if rec.get("action") != "lower the learning rate" or not isinstance(msg, str) or claim not in msg:
        return
    head, _, tail = msg.partition(claim)
    rest = tail.partition("; ")[2]  # what followed the claim (a rising schedule), kept
    rec["message"] = f"{head}; the replay shows {eps_variant} avoids it too, so a v collapse fits as well" + (
        f"; {rest}" if rest else ""
    )


def _unconfirmed_recommendation(rep: RunReport, start: int, at: int) -> None:
    """The log's eps or lr advice stays (it is what the mechanism asks for), said to be unconfirmed: the
    replay saw that value blow up at the original's step like every other change."""
    rec = rep.recommendation
    if not rec or not rec.get("message"):
        return
    rec["verified"] = False
    rec["message"] = (
        f"{rec['message']} — not confirmed: replayed from step {start} it blows up at step {at} as the original "
        f"does (so does every tried eps and lr); check what changes in the data or the loss at step {at}, or "
        "replay from an earlier checkpoint"
    )


def _retarget_recommendation(rep: RunReport, best: Any, verdict: str) -> None:
    """The recommendation follows the verdict the replay proved."""
    if verdict == "v_collapse":
        rep.recommendation = {
            "action": "increase eps",
            "eps": best.eps,
            "message": f"eps → {best.eps:g} (verified by replay: it avoids the blowup)",
        }
    else:
        rep.recommendation = {
            "action": "lower the learning rate",
            "lr": best.lr,
            "message": f"lr → {best.lr:.3g} (verified by replay: it avoids the blowup)",
        }


def verify_report(
    runs: list[RunReport],
    *,
    entry: str | None = None,
    trust_entry: bool = False,
    trust_checkpoint: bool = False,
    budget_s: float | None = None,
    device: str = "auto",
    say: Any = None,
    curves: bool = False,
    assume: Any = None,
) -> None:
    """Verify every eligible run of ``runs`` in place (``say``: one-line progress messages on stderr).
    ``curves`` (series were asked for: ``report``, ``--with-series``): each replayed variant's loss
    goes into the run's ``series["replay"]`` (downsampled), for the HTML overlay. ``assume``: the
    ``--assume-*`` values (``io.checkpoints.hyper.Assumptions``) for what a checkpoint does not store."""
    from adamdiag.errors import InputError
    from adamdiag.replay.protocol import NoEntry, NoNeutralEntry
    from adamdiag.replay.runner import verify_checkpoint

    t0 = time.monotonic()
    eligible = [r for r in runs if r.verdict in VERIFIED_VERDICTS and r.blowup_step is not None]
    for i, rep in enumerate(eligible, 1):
        plan = (rep.recommendation or {}).get("replay")
        if not plan:
            _not_verified(rep, "no checkpoint before the blowup to replay from")
            continue
        left = None if budget_s is None else budget_s - (time.monotonic() - t0)
        if left is not None and left <= 0:
            _not_verified(rep, "the --verify-budget was spent on earlier runs")
            continue
        if say is not None:
            say(f"verifying {rep.run} ({i}/{len(eligible)}): replay from {plan['checkpoint']}")

        def replay(p: dict[str, Any], budget: float | None, run: str = rep.run, tag: str = rep.loss_tag or "") -> Any:
            return verify_checkpoint(
                Path(p["checkpoint"]),
                _variants(p),
                run_dir=Path(run),
                loss_tag=tag or "train/loss",
                device=device,
                budget_s=budget,
                entry=entry,
                trust_entry=trust_entry,
                trust_checkpoint=trust_checkpoint,
                named_tensors=None,
                assume=assume,
            )

        try:
            result = replay(plan, left)
        except NoNeutralEntry as e:  # a TF/Keras checkpoint: say which kind of entry replays it
            _not_verified(rep, f"no replay entry: {e}", "info")
            continue
        except NoEntry:
            _not_verified(
                rep, "no replay entry (give --entry module:function or an adamdiag.toml [replay] entry)", "info"
            )
            continue
        except InputError as e:
            _not_verified(rep, str(e))
            continue
        except Exception as e:  # noqa: BLE001 - the user's entry code failed: a finding, never a traceback
            _not_verified(rep, f"the replay failed ({type(e).__name__}: {e})")
            continue
        first = copy.deepcopy(rep)
        decide(rep, result, plan)
        earlier = plan.get("earlier")
        if earlier and _none_avoided(rep):
            # From the last checkpoint nothing avoids it: the instability may already be under way there.
            # Try once more from the checkpoint before; keep that answer only when some change avoids it.
            left = None if budget_s is None else budget_s - (time.monotonic() - t0)
            if left is None or left > 0:
                if say is not None:
                    say(
                        f"verifying {rep.run}: no change avoids it from step {plan['start_step']}; replay from "
                        f"{earlier['checkpoint']}"
                    )
                try:
                    result2 = replay(earlier, left)
                except Exception:  # noqa: BLE001 - the first answer stands; this was a second try
                    result2 = None
                if result2 is not None:
                    retry = copy.deepcopy(first)
                    decide(retry, result2, earlier)
                    if not _none_avoided(retry):
                        retry.findings.append(
                            Finding(
                                "AD701",
                                "info",
                                f"from the last checkpoint before the blowup (step {plan['start_step']}) no tried "
                                "change avoided it — the instability was already under way there; verified from "
                                f"step {earlier['start_step']} instead",
                                step=rep.blowup_step,
                            )
                        )
                        rep.__dict__.update(retry.__dict__)
                        result = result2
                        if rep.recommendation is not None and earlier.get("verify"):
                            rep.recommendation["verify"] = earlier["verify"]  # the command that shows it
        if curves:
            from adamdiag.pipeline.series import replay_curves

            rep.series = {**(rep.series or {}), "replay": replay_curves(result)}
