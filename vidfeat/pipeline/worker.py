"""What vidfeat sets inside each worker process, whoever started it (our LocalCluster, a
``dask worker`` a user started, a cluster backend), and the plugin that holds the run's models.
Each worker's malloc is tuned first (``vidfeat.malloc``: why).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

from vidfeat.extractors.spec import ExtractorSpec
from vidfeat.host import available_cores
from vidfeat.malloc import tune_malloc


def torch_threads_for(slots_on_host: int) -> int:
    """Intra-op threads per task slot so that slots x torch threads <= cores;
    ``VIDFEAT_TORCH_THREADS`` overrides (for workers sharing a host with other jobs)."""
    override = os.environ.get("VIDFEAT_TORCH_THREADS")
    if override and override.isdigit() and int(override) > 0:
        return int(override)
    return max(1, available_cores() // max(1, slots_on_host))


class WorkerState:
    """One per worker process and run: the tuned process and the extractor pool."""

    def __init__(self, specs: dict[str, ExtractorSpec], device: str, torch_threads: int) -> None:
        # here, not at the top: the driver imports this module (for the plugin) without torch
        import torch

        from vidfeat.extractors.pool import ExtractorPool

        tune_malloc()
        torch.set_num_threads(torch_threads)
        self.torch_threads = torch_threads
        self.pool = ExtractorPool(specs, device)

    def threads_in_this_thread(self) -> None:
        """Apply the torch threads to the calling thread: OpenMP keeps a thread count per
        thread, fixed at its first torch operation, so a task thread that ran one before this
        state was made (describing the extractors, say) kept the process's default: one
        thread on a plain Dask worker (Dask sets OMP_NUM_THREADS=1)."""
        import torch

        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)


def plugin_name(specs: dict[str, ExtractorSpec]) -> str:
    """The name of the run's extractor plugin: the same for the same extractors."""
    return "vidfeat-" + hashlib.sha256(repr(sorted(specs.items())).encode()).hexdigest()[:12]


def extractor_plugin(specs: dict[str, ExtractorSpec], device: str,
                     slots_by_host: dict[str, int], load_now: bool = False) -> object:
    """A worker plugin giving each worker process one ``WorkerState`` for this run; models
    load on a worker's first task (``load_now``: at once, while the driver still prepares)
    and stay loaded. ``slots_by_host``: task slots (worker threads) per host when the run
    started, to size torch's threads.

    The state is made in a thread of its own: ``setup`` returns at once, so that registering
    the plugin does not wait seconds for each worker's torch import (the driver plans the run
    meanwhile), and the worker's event loop is never blocked by it. A task waits for it."""
    from distributed import WorkerPlugin

    class ExtractorPlugin(WorkerPlugin):
        def setup(self, worker: object) -> None:
            host = worker.address.split("://")[-1].rsplit(":", 1)[0]  # type: ignore[attr-defined]
            slots = slots_by_host.get(host) or slots_by_host.get(socket.gethostname())
            slots = slots or worker.state.nthreads  # type: ignore[attr-defined]
            self._ready = threading.Event()
            self._error: BaseException | None = None
            threading.Thread(target=self._prepare, args=(torch_threads_for(slots),),
                             name="vidfeat-load", daemon=True).start()

        def _prepare(self, torch_threads: int) -> None:
            try:
                self._state = WorkerState(specs, device, torch_threads)
            except BaseException as error:  # raised in every task that needs the state
                self._error = error
            finally:
                self._ready.set()
            if load_now and self._error is None:
                self._state.pool.load_all()

        def state(self) -> WorkerState:
            self._ready.wait()
            if self._error is not None:
                raise self._error
            return self._state

    plugin = ExtractorPlugin()
    plugin.name = plugin_name(specs)
    return plugin


def worker_state(plugin_name: str) -> WorkerState:
    """This worker's state for the run, once its plugin has made it, with its torch threads
    applied to the calling task thread."""
    from distributed import get_worker

    state = get_worker().plugins[plugin_name].state()
    state.threads_in_this_thread()
    return state
