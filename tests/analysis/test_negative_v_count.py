"""The v < 0 count (AD403 corruption) is skipped when the statistics pass proves it is 0, and still
counts every negative v where the pass could not look (non-finite elements) — in both paths."""

from __future__ import annotations

import pytest
import torch

from adamdiag.analysis import moments_kernel
from adamdiag.analysis.moments import tensor_stats
from adamdiag.io.checkpoints import TensorMoments


def _moments(m: torch.Tensor, v: torch.Tensor) -> TensorMoments:
    return TensorMoments(
        name="w", index=0, group=0, shape=tuple(v.shape), step=10, lr=1e-3, beta1=0.9, beta2=0.999,
        eps=1e-8, weight_decay=0.0, amsgrad=False, exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=None, param=None,
    )  # fmt: skip


@pytest.mark.parametrize("kernel", [True, False])
def test_negative_v_counted_only_where_it_can_be(kernel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel and not moments_kernel.available():
        pytest.skip("kernel not built")
    if not kernel:
        monkeypatch.setattr(moments_kernel, "available", lambda: False)
    g = torch.Generator().manual_seed(0)
    m, v = torch.randn(50_000, generator=g), torch.rand(50_000, generator=g)
    v[::7] = 0.0  # v = 0 entries (never a gradient): the pass counts d <= 0, none is negative
    assert tensor_stats(_moments(m, v)).negative_v == 0
    v2 = v.clone()
    v2[5] = -1e-9  # seen by the pass (all finite): counted
    assert tensor_stats(_moments(m, v2)).negative_v == 1
    m3, v3 = m.clone(), v.clone()
    m3[11], v3[11] = float("nan"), -1e-9  # an element the pass skips (m is NaN): still counted
    m3[12] = float("inf")
    assert tensor_stats(_moments(m3, v3)).negative_v == 1
