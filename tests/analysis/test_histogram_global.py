"""The all-parameter trajectory from gradient histograms (evidence.histogram_global), for runs that log no gradient
norm: Σ sum_squares / Σ num is the squared norm over the element count, at the steps every tensor was logged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from adamdiag.analysis.evidence import histogram_global, reconstruct


def frame(rows: list[tuple[str, int, float, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["tag", "step", "num", "sum_squares", "segment"]).assign(approx=False)


def test_it_is_the_gradient_norm_the_tensors_make() -> None:
    """Two real parameters' gradients over 20 steps: the trajectory equals the one a logged gradient norm gives."""
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(8))
    rows, norms = [], []
    for step in range(1, 21):
        x = torch.randn(16, 4) * (0.1 if step > 10 else 1.0)
        w.grad = b.grad = None
        ((x @ w.T + b) ** 2).mean().backward()
        rows += [("grads/w", step, 32.0, float((w.grad.double() ** 2).sum()), 0)]
        rows += [("grads/b", step, 8.0, float((b.grad.double() ** 2).sum()), 0)]
        norms.append(float(torch.sqrt((w.grad.double() ** 2).sum() + (b.grad.double() ** 2).sum())))
    tr = histogram_global(frame(rows), [], 0.999, 1e-8)
    ref = reconstruct(np.arange(1, 21), np.asarray(norms) ** 2 / 40.0, 0.999, [], 1e-8, "global")
    assert tr is not None and tr.label == "global"
    np.testing.assert_allclose(tr.g2, ref.g2, rtol=1e-12)
    np.testing.assert_allclose(tr.r[1:], ref.r[1:], rtol=1e-9)


def test_only_steps_where_every_tensor_was_logged_and_the_run_as_it_went() -> None:
    rows = [("grads/a", s, 1.0, 1.0, 0) for s in range(1, 13)] + [("grads/b", s, 1.0, 3.0, 0) for s in range(1, 13)]
    rows = [r for r in rows if not (r[0] == "grads/b" and r[1] == 5)]  # b missing at step 5
    rows += [("weights/a", s, 1.0, 100.0, 0) for s in range(1, 13)]  # not a gradient: left out
    rows += [("grads/a", s, 1.0, 9.0, 1) for s in range(9, 13)]  # a restart from step 8: its values replace
    rows += [("grads/b", s, 1.0, 9.0, 1) for s in range(9, 13)]
    tr = histogram_global(frame(rows), [], 0.999, 1e-8)
    assert tr is not None and 5 not in tr.steps.tolist() and len(tr.steps) == 11
    assert tr.g2[tr.steps.tolist().index(4)] == 2.0 and tr.g2[-1] == 9.0


def test_none_with_one_tensor_or_too_few_common_steps() -> None:
    one = frame([("grads/a", s, 1.0, 1.0, 0) for s in range(1, 20)])
    assert histogram_global(one, [], 0.999, 1e-8) is None
    apart = frame(
        [("grads/a", s, 1.0, 1.0, 0) for s in range(1, 20, 2)] + [("grads/b", s, 1.0, 1.0, 0) for s in range(2, 20, 2)]
    )
    assert histogram_global(apart, [], 0.999, 1e-8) is None
