"""Where workers come from: cluster backends that give the driver a connected Dask client."""

from vidfeat.jobs.cluster import ClusterSpec, open_client

__all__ = ["ClusterSpec", "open_client"]
