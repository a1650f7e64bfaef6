"""Command-line interface: a thin typer app, one module per command.

- :mod:`.app` — the typer app, ``main``, error → exit-code mapping;
- :mod:`.options` — option types and choices shared by several commands;
- :mod:`.scan` — ``scan``, ``check``, ``plot`` (event files + checkpoints → Report → renderer);
- :mod:`.inspect` — ``inspect`` (checkpoints → inspect result → renderer);
- :mod:`.tags` — ``tags`` and ``export`` (event files → tag table / long frame);
- :mod:`.replay` — ``replay`` (checkpoint + entry → replay result → renderer).

Each command parses its options, calls the pipeline (``adamdiag.pipeline``) or replay runner, and
hands the versioned result to a renderer (``adamdiag.render``). Heavy imports (torch, pandas,
matplotlib) happen inside the commands so ``adamdiag --help`` stays instant.
"""

from adamdiag.cli.app import app, main

__all__ = ["app", "main"]
