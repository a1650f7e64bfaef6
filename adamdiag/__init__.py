"""adamdiag: explains why an Adam/AdamW training run blew up.

Data flows one way: readers (``adamdiag.io``) -> pure analysis (``adamdiag.analysis``) ->
a versioned :class:`adamdiag.results.report.Report` -> renderers (``adamdiag.render``).
"""

__version__ = "0.1.0"
