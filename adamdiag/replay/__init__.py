"""Counterfactual replay: re-run the steps before a blowup from a checkpoint with the original and
alternate eps/beta2/lr, on the same batches (docs/replay.md).

- :mod:`.protocol` -- the entry-point protocol (model, batch(t), loss, clip_grad_norm), variants;
- :mod:`.checkpoint` -- loading Adam/AdamW checkpoints, matching optimizer state to the model;
- :mod:`.engine` -- the reference: one variant at a time with the real ``torch.optim.Adam``;
- :mod:`.sweep` -- K variants in one vmap pass with a stacked Adam update (tested against the reference);
- :mod:`.distributed` -- variants split across ``torchrun`` processes, gathered on rank 0;
- :mod:`.result` -- pure analysis: blowup step (scan's detector), fidelity, outcomes (avoided /
  at_risk / blowup), the conclusion, the ``adamdiag.replay/1`` result;
- :mod:`.runner` -- files in, result out: ``run_replay`` (the command) and ``verify_checkpoint`` (the
  library call behind ``scan --verify``); the renderers live in :mod:`adamdiag.render.replay`.

Nothing here imports torch at module import time except where a function needs it.
"""
