"""Benchmarks: the paper's scenarios as resumable suites (``deltapatch bench``), with tables,
plots and a claims check. ``run_one`` is also what ``deltapatch train`` runs."""

from .run import RunSpec, run_one

__all__ = ["RunSpec", "run_one"]
