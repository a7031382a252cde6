"""Benchmarks: the paper's scenarios as resumable suites (``deltapatch bench``), with tables,
plots and a claims check. Each run is a :func:`deltapatch.run.run_one`, as ``train`` runs it."""

from .publish import BenchRequest, run_suite

__all__ = ["BenchRequest", "run_suite"]
