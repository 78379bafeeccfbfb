"""Corpus discovery, the Dask graph, worker tasks, progress and the run report."""
