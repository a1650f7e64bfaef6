"""Counterfactual replay: re-run the steps before a blowup from a checkpoint with the original and
alternate eps/beta2/lr, on the same batches (docs/replay.md).

- :mod:`.protocol` -- the entry-point protocol (model, batch(t), loss, clip_grad_norm), variants;
- :mod:`.checkpoint` -- loading Adam/AdamW checkpoints, matching optimizer state to the model;
- :mod:`.engine` -- the reference: one variant at a time with the real ``torch.optim.Adam``;
- :mod:`.sweep` -- K variants in one vmap pass with a stacked Adam update (tested against the reference);
- :mod:`.distributed` -- variants split across ``torchrun`` processes, gathered on rank 0;
- :mod:`.result` -- pure analysis: spike rule, fidelity, verdict, the ``adamdiag.replay/1`` result;
- :mod:`.render`, :mod:`.plot` -- text/markdown/JSON/JUnit and the PNG overlay;
- :mod:`.command` -- ``adamdiag replay``: files in, rendered result out.

Nothing here imports torch at module import time except where a function needs it.
"""
