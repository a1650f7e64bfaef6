"""issue #12 item 6: the opt-in batched counterfactual labeller (tools/runlab/counterfactual_batched.py).

The batched path must give the sequential labeller's records and label: its Adam/AdamW step is checked to
be bit-identical to torch's on the same gradients (real lab models and real optimizer state), and on one
small real run the two labellers are run side by side.
"""

from __future__ import annotations

from pathlib import Path

import counterfactual as cf
import counterfactual_batched as cb
import pytest
import runlab
import torch
from runlab import RunConfig

RUNLAB = Path(runlab.__file__).resolve().parent


def test_batched_labeller_never_uses_adamdiag():
    src = (RUNLAB / "counterfactual_batched.py").read_text()
    assert "import adamdiag" not in src and "from adamdiag" not in src


@pytest.mark.parametrize(
    "optimizer,weight_decay,clip",
    [("adam", 0.0, None), ("adam", 1e-2, None), ("adamw", 1e-2, None), ("adam", 0.0, 1e-3)],
)
def test_stacked_step_equals_torch_adam(optimizer, weight_decay, clip):
    # Three copies with different eps and lr scales, from a real state 20 steps into a lab run; given the
    # same gradients, the stacked update must leave every copy's weights and moments bit-identical to
    # torch.optim.Adam/AdamW's (clip 1e-3 makes clipping bite on every step).
    cfg = RunConfig(
        family="mlp_multitask",
        size="tiny",
        optimizer=optimizer,
        weight_decay=weight_decay,
        clip_grad_norm=clip,
        lr=3e-3,
        betas=(0.9, 0.99),
    )
    data = runlab.build_data(cfg)
    _, mstate, ostate = cf._retrain_prefix(cfg, data, 20)
    changes = [(1e-8, 1.0), (1e-3, 1 / 3), (1e-2, 1 / 10)]
    branches = [cf._Branch(cfg, data, mstate, ostate, eps, s) for eps, s in changes]
    stack = cb._Stack(cfg, data, (mstate, ostate), len(changes))
    copies = [cb._Copy(str(i), eps, s, []) for i, (eps, s) in enumerate(changes)]
    for t in (21, 22, 23):
        for br in branches:  # torch's own step, which also clips in place
            br.step(t, probe=False)
        # the gradients torch's step used (after its clipping): re-derive them unclipped for the stack
        grads: dict[str, list[torch.Tensor]] = {k: [] for k in stack.names}
        losses = []
        for i in range(len(branches)):
            model = runlab.build_model(cfg)
            model.load_state_dict({k: stack.p[k][i] for k in stack.names})
            loss = runlab.total_loss(cfg, model, runlab.batch_for_step(cfg, t, data))
            loss.backward()
            losses.append(loss.detach())
            for k, p in model.named_parameters():
                grads[k].append(p.grad)
        stack.apply(t, copies, {k: torch.stack(v) for k, v in grads.items()}, torch.stack(losses), probe=False)
        for i, br in enumerate(branches):
            for k, p in br.model.named_parameters():
                assert torch.equal(stack.p[k][i], p.detach()), (t, i, k)
                assert torch.equal(stack.v[k][i], br.opt.state[p]["exp_avg_sq"]), (t, i, k)
                assert torch.equal(stack.m[k][i], br.opt.state[p]["exp_avg"]), (t, i, k)


def test_batched_labeller_agrees_with_the_sequential_one(labelled_cf_run):
    # The run of test_counterfactual.py (full batch, β2 0.99, blows up at step 462), with the sequential
    # labeller's block as write_label stored it
    run, _truth, s = labelled_cf_run
    before = (run / "truth.json").read_text()
    b = cb.label_run_batched(run)
    assert (run / "truth.json").read_text() == before  # opt-in: it writes nothing
    assert b["batched"] is True and b["label"] == s["label"] == "v_collapse"
    for key in ("start_step", "horizon_end_step", "trained_to_step", "start_matches_checkpoint"):
        assert b[key] == s[key], key
    assert set(b["variants"]) == set(s["variants"]) == set(cf.VARIANTS)
    for name, sv in s["variants"].items():
        bv = b["variants"][name]
        assert bv["outcome"] == sv["outcome"], name
        assert set(bv) == set(sv), name  # the same record, at_risk evidence included
        if sv["blowup_step"] is None:
            assert bv["blowup_step"] is None and bv["trained_to"] == sv["trained_to"], name
        else:  # batched matmuls round differently in the last bits: a blowup may move by a few steps
            assert abs(bv["blowup_step"] - sv["blowup_step"]) <= 5, name
    # the unchanged copy blows up again, near the live blowup
    assert b["original"]["outcome"] == "blowup"
    assert abs(b["original"]["blowup_step"] - s["original"]["blowup_step"]) <= 5
