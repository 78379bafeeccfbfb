"""The driver's entry point: ``run_extraction`` is a whole (nightly) run around
``prepare_run`` and ``execute``: the store's run lock, the run report in ``DIR/runs/``,
Ctrl-C (the first stops submitting, the second stops at once), per-task timeouts.

``prepare_run`` does everything that can fail on bad input before any worker starts;
``execute`` runs a prepared run on a connected client (jobs/ decides where it comes from).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vidfeat.pipeline.prepare import (
    EXIT_BROKEN,
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    RESUME_HINT,
    PreparedRun,
    RunOptions,
    RunReport,
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
    failed (a video that kills its worker, out of memory say)."""
    import dask
    import distributed  # noqa: F401  (its config defaults, which dask.config.set extends)

    started = time.time()
    run = prepare_run(sources, store, options, lock=True)
    configuration = configuration or {}

    def record(exit_code: int | None, interrupted: bool = False) -> None:
        write_report(run.store, build_report(
            run.report.outcomes, started=started, ended=time.time(), command=sys.argv,
            configuration=configuration, exit_code=exit_code, interrupted=interrupted,
            videos_total=run.report.videos))

    stop = threading.Event()
    try:
        if not run.todo and not run.rejected:  # every video up to date: no cluster to start
            record(run.report.exit_code)
            return run.report
        from vidfeat.pipeline.execute import execute, register_plugin  # torch: work to do

        record(None)
        with _first_interrupt_stops(stop) as spawning, contextlib.ExitStack() as stack:
            with spawning(), dask.config.set(
                    {"distributed.scheduler.allowed-failures": allowed_failures}):
                client = stack.enter_context(open_cluster())
            register_plugin(client, _ignore_interrupts_plugin(), "vidfeat-ignore-interrupts")
            report = execute(run, client, stop=stop, task_timeout=options.task_timeout)
        # the workers are gone: a task that finished as the cluster closed is indexed, and
        # the journal of this run's shards is emptied
        StoreIndex(run.store).recover()
        record(report.exit_code, report.interrupted)
        return report
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            # the workers are gone: a shard they finished is indexed, one half written removed
            StoreIndex(run.store).recover()
            record(EXIT_INTERRUPTED, interrupted=True)
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # a full disk may refuse the report too
            record(EXIT_BROKEN)
        raise
    finally:
        run.release()


@contextlib.contextmanager
def _first_interrupt_stops(stop: threading.Event) -> Iterator[Callable[[], Any]]:
    """While inside: the first SIGINT sets ``stop``, the second raises KeyboardInterrupt, and
    SIGTERM raises it at once (systemd's stop, Slurm's time limit and Kubernetes' pod deletion
    send it, then SIGKILL within 30-90 s: no time to finish the tasks in flight, but enough to
    index what is done and write the run report). Yields a context manager to wrap the
    cluster's start in: worker processes started inside it ignore SIGINT (inherited), so a
    terminal's Ctrl-C, sent to the whole process group, reaches only the driver, which
    decides."""
    if threading.current_thread() is not threading.main_thread():
        yield contextlib.nullcontext
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"\nvidfeat: interrupted: finishing the tasks in flight (Ctrl-C again to stop "
              f"at once); {RESUME_HINT}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def ignoring() -> Iterator[None]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, on_interrupt)

    def on_terminate(signum: int, frame: Any) -> None:
        stop.set()
        print("\nvidfeat: terminated: stopping at once; " + RESUME_HINT, file=sys.stderr,
              flush=True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    previous_terminate = signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield ignoring
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_terminate)


def _ignore_interrupts_plugin() -> object:
    from distributed import WorkerPlugin

    class IgnoreInterrupts(WorkerPlugin):
        """Workers restarted during the run (after a crash, a timeout) ignore SIGINT too."""

        def setup(self, worker: object) -> None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupts()


__all__ = ["EXIT_BROKEN", "EXIT_FAILURES", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE",
           "PreparedRun", "RunOptions", "RunReport", "prepare_run", "run_extraction"]
