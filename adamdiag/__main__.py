"""``python -m adamdiag``: the ``adamdiag`` command, for an environment whose scripts folder is not on PATH."""

from adamdiag.cli.app import main

main()
