"""``replay``: a checkpoint + a replay entry → variants re-run → ``adamdiag.replay/1`` → a renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamdiag.cli.app import app, guarded
from adamdiag.cli.options import (
    AssumeBeta2Opt,
    AssumeEpsOpt,
    AssumeLrOpt,
    Device,
    Format,
    FormatOpt,
    ReplayMode,
    TrustOpt,
    assumptions,
    step_offset,
)


@app.command()
@guarded
def replay(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to start from (saved before the blowup).")],
    eps: Annotated[list[str] | None, typer.Option("--eps", help="Alternate eps (repeatable or comma list).")] = None,
    beta2: Annotated[list[str] | None, typer.Option("--beta2", help="Alternate beta2 (repeatable).")] = None,
    lr: Annotated[list[str] | None, typer.Option("--lr", help="Alternate lr (repeatable).")] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Steps to replay; overrides the default horizon (the logged blowup + 1/(1-beta2), and at "
            "least 2x the checkpoint->blowup gap).",
        ),
    ] = None,
    grid: Annotated[
        bool,
        typer.Option("--grid", help="Cross product of --eps/--beta2/--lr (default: one variant per value)."),
    ] = False,
    tensor: Annotated[
        list[str] | None,
        typer.Option("--tensor", help="Parameter name also judged on its own for at_risk (repeatable)."),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option("--budget", help="Seconds; variants not done by then are at_risk (truncated)."),
    ] = None,
    entry: Annotated[str | None, typer.Option("--entry", help="module:function or file.py:function.")] = None,
    logdir: Annotated[Path | None, typer.Option("--logdir", help="Run directory with the logged loss.")] = None,
    device: Annotated[
        Device, typer.Option("--device", help="Where to replay (auto: cuda when available, else cpu).")
    ] = Device.auto,
    format: FormatOpt = Format.text,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the loss overlay PNG here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Report variants even when fidelity fails.")] = False,
    trust_checkpoint: TrustOpt = False,
    latest: Annotated[
        bool,
        typer.Option("--latest", help="CHECKPOINT is a directory: start from its checkpoint with the highest step."),
    ] = False,
    loss_tag: Annotated[
        str | None,
        typer.Option("--loss-tag", help="Scalar tag of the logged training loss (default: picked as scan picks it)."),
    ] = None,
    log_step_offset: Annotated[
        str,
        typer.Option(
            "--log-step-offset",
            callback=step_offset,
            help="The loss of update t is logged at step t+N; auto: -1 for Lightning checkpoints, else 0.",
        ),
    ] = "auto",
    mode: Annotated[
        ReplayMode,
        typer.Option(
            "--mode", help="Alternates in one vmap pass (batched) or one by one with torch.optim.Adam (sequential)."
        ),
    ] = ReplayMode.auto,
    assume_lr: AssumeLrOpt = None,
    assume_beta2: AssumeBeta2Opt = None,
    assume_eps: AssumeEpsOpt = None,
) -> None:
    """Counterfactual replay: re-run the suspect steps with the original and alternate eps/beta2/lr."""
    from adamdiag.io.checkpoints.latest import single_checkpoint
    from adamdiag.replay.runner import default_loss_tag, run_replay

    if plot is not None:  # before the replay, not after it: a wrong --plot must not cost the run
        from adamdiag.render.replay_plot import check_plot_target

        check_plot_target(plot)
    checkpoint = single_checkpoint(checkpoint, latest=latest, trust=trust_checkpoint)
    if loss_tag is None:
        loss_tag = default_loss_tag(checkpoint, logdir)
    code = run_replay(
        checkpoint,
        eps=eps,
        beta2=beta2,
        lr=lr,
        steps=steps,
        entry=entry,
        logdir=logdir,
        device=device.value,
        fmt=format.value,
        plot=plot,
        force=force,
        trust_checkpoint=trust_checkpoint,
        loss_tag=loss_tag,
        mode=mode.value,
        log_offset=log_step_offset,
        grid=grid,
        named=tensor,
        budget_s=budget,
        assume=assumptions(assume_lr, assume_beta2, assume_eps),
    )
    if code:
        raise typer.Exit(code)
