"""``python -m adamdiag.cli`` (what ``torchrun -m adamdiag.cli replay ...`` runs on every rank)."""

from adamdiag.cli.app import main

main()
