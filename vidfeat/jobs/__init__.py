"""Where workers come from: cluster backends that give the driver a connected Dask client."""

from vidfeat.jobs.cluster import open_client
from vidfeat.jobs.spec import ClusterSpec

__all__ = ["ClusterSpec", "open_client"]
