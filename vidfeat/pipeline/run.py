"""The driver's entry point: ``run_extraction`` is a whole (nightly) run around
``prepare_run`` and ``execute``: the store's run lock, the run report in ``DIR/runs/``,
Ctrl-C (the first stops submitting, the second stops at once), per-task timeouts.

``prepare_run`` does everything that can fail on bad input before any task is submitted
(an extractor the store has not seen is described by a worker, where torch is);
``execute`` runs a prepared run on a connected client (jobs/ decides where it comes from).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vidfeat.errors import ExitCode
from vidfeat.extractors.spec import ExtractorSpec
from vidfeat.options import RunOptions
from vidfeat.pipeline.confighash import Description, describe_specs
from vidfeat.pipeline.execute import execute, register_extractors, register_plugin
from vidfeat.pipeline.prepare import (
    RESUME_HINT,
    PreparedRun,
    RunReport,
    extractor_specs,
    prepare_run,
)
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.runs import build_report, write_report


def run_extraction(sources: list[str], store: str | Path, options: RunOptions,
                   open_cluster: Callable[[], contextlib.AbstractContextManager[Any]], *,
                   allowed_failures: int = 2,
                   configuration: dict[str, Any] | None = None) -> RunReport:
    """A whole run under the store's run lock: prepare, open the cluster, execute, with the
    run report written into the store at the start and replaced at the end (also when the
    run breaks). The first Ctrl-C stops submitting and lets the tasks in flight finish (the
    report says ``interrupted``); a second one stops at once (KeyboardInterrupt).
    ``options`` also say how long to wait for the lock (``wait_lock``), when to abandon a task
    (``task_timeout``) and whether to retry only failures (``retry_failed``), so a job file
    sets them as the flags do.
    ``allowed_failures``: deaths of a worker running a task before the task is recorded as
    failed (a video that kills its worker, out of memory say).

    The driver imports no torch: extractors the store's memo does not know are described by
    a worker, so the cluster opens as soon as one is needed (while preparing, then), and not
    at all when every video is up to date. ``open_cluster`` may also have a ``start_early()``,
    called then, before anything else (``vidfeat.jobs.cluster.ClusterOpener``)."""
    started = time.time()
    with contextlib.ExitStack() as stack:
        cluster = _Cluster(open_cluster, stack, allowed_failures, options)
        run = prepare_run(sources, store, options, lock=True, describe=cluster.describe)
        try:
            return _run_prepared(run, cluster, stack, started, configuration or {})
        finally:
            run.release()


def _run_prepared(run: PreparedRun, cluster: _Cluster, stack: contextlib.ExitStack,
                  started: float, configuration: dict[str, Any]) -> RunReport:
    def record(exit_code: int | None, interrupted: bool = False) -> None:
        write_report(run.store, build_report(
            run.report.outcomes, started=started, ended=time.time(), command=sys.argv,
            configuration=configuration, exit_code=exit_code, interrupted=interrupted,
            videos_total=run.report.videos, remote=run.report.remote, rows=run.report.rows,
            model_seconds=run.report.model_seconds, paths=run.report.paths))

    stop = threading.Event()
    try:
        if not run.todo and not run.rejected:  # every video up to date: no cluster to start
            record(run.report.exit_code)
            return run.report
        record(None)
        with _first_interrupt_stops(stop):
            report = execute(run, cluster.client(), stop=stop,
                             task_timeout=run.options.task_timeout,
                             registered=cluster.registered)
            stack.close()  # the cluster: its workers are gone
        # a task that finished as the cluster closed is indexed, and the journal of this
        # run's shards is emptied
        StoreIndex(run.store).recover()
        record(report.exit_code, report.interrupted)
        return report
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            stack.close()
            # the workers are gone: a shard they finished is indexed, one half written removed
            StoreIndex(run.store).recover()
            record(ExitCode.INTERRUPTED, interrupted=True)
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # a full disk may refuse the report too
            record(ExitCode.BROKEN)
        raise


class _Cluster:
    """The run's cluster, opened on first use: by ``describe`` when the store's memo lacks an
    extractor (a worker describes it), else once there is work to do. Its worker processes
    ignore SIGINT (inherited from the driver while they start), so that a terminal's Ctrl-C,
    sent to the whole process group, reaches only the driver, which decides."""

    def __init__(self, open_cluster: Callable[[], contextlib.AbstractContextManager[Any]],
                 stack: contextlib.ExitStack, allowed_failures: int,
                 options: RunOptions) -> None:
        self._open = open_cluster
        self._stack = stack
        self._allowed_failures = allowed_failures
        self._options = options
        self._client: Any = None
        #: the run's extractors were given to the workers, which load them already
        self.registered = False

    def client(self) -> Any:
        if self._client is None:
            start_early = getattr(self._open, "start_early", None)
            if start_early is not None:  # before the seconds of importing distributed here
                with _interrupts_ignored():
                    start_early()
            import dask
            import distributed  # noqa: F401  (its config defaults, which dask.config.set extends)

            with _interrupts_ignored(), dask.config.set(
                    {"distributed.scheduler.allowed-failures": self._allowed_failures}):
                client = self._stack.enter_context(self._open())
            register_plugin(client, _ignore_interrupts_plugin(), "vidfeat-ignore-interrupts")
            self._client = client
        return self._client

    def describe(self, specs: dict[str, ExtractorSpec]) -> dict[str, Description]:
        """``describe_specs`` on a worker (which imports torch for its tasks anyway); the
        workers meanwhile start loading the run's models, while the driver still prepares
        (a first run has work to do). In a process that has imported torch already (a
        notebook, a test), here: a bad option then costs no cluster."""
        if "torch" in sys.modules:
            return describe_specs(specs)
        client = self.client()
        described = client.submit(describe_specs, specs, pure=False,
                                  key=f"vidfeat-describe-{time.time_ns()}")
        register_extractors(client, extractor_specs(self._options), self._options.device,
                            load_now=True)
        self.registered = True
        return described.result()


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Processes started inside ignore SIGINT (they inherit it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _first_interrupt_stops(stop: threading.Event) -> Iterator[None]:
    """While inside: the first SIGINT sets ``stop``, the second raises KeyboardInterrupt, and
    SIGTERM raises it at once (systemd's stop, Slurm's time limit and Kubernetes' pod deletion
    send it, then SIGKILL within 30-90 s: no time to finish the tasks in flight, but enough to
    index what is done and write the run report)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            _stop_at_once(signum, frame)
            return
        stop.set()
        print(f"\nvidfeat: interrupted: finishing the tasks in flight (Ctrl-C again to stop "
              f"at once); {RESUME_HINT}", file=sys.stderr, flush=True)

    terminated = threading.Event()

    def on_terminate(signum: int, frame: Any) -> None:
        stop.set()
        if not terminated.is_set():
            terminated.set()
            print("\nvidfeat: terminated: stopping at once; " + RESUME_HINT, file=sys.stderr,
                  flush=True)
        _stop_at_once(signum, frame)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    previous_terminate = signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_terminate)


def _stop_at_once(signum: int, frame: Any) -> None:
    """Raise KeyboardInterrupt in the driver's main thread. Python prints and drops an
    exception raised in a finalizer (a ``__del__`` the garbage collector runs at any point,
    distributed's Future has one), so a signal that lands in one is delivered again once the
    finalizer has returned."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code is _FINALIZE_CALL:
            threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum)).start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


_FINALIZE_CALL = weakref.finalize.__call__.__code__
#: how soon a signal that landed in a finalizer is sent again
REDELIVER_S = 0.05


def _ignore_interrupts_plugin() -> object:
    from distributed import WorkerPlugin

    class IgnoreInterrupts(WorkerPlugin):
        """Workers restarted during the run (after a crash, a timeout) ignore SIGINT too."""

        def setup(self, worker: object) -> None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupts()


__all__ = ["PreparedRun", "RunReport", "prepare_run", "run_extraction"]
