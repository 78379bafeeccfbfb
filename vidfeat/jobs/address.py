"""An existing Dask scheduler, ``tcp://HOST:PORT``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vidfeat.errors import ClusterError


@contextmanager
def connect(address: str, timeout: float) -> Iterator[Any]:
    from distributed import Client

    try:
        client = Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s: "
                           f"{reason}") from None
    with client:
        yield client
