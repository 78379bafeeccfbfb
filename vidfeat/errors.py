"""The few exception types vidfeat raises (each also derives from the matching built-in), and
the exit codes of the ``vidfeat`` command and of a run's report."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a ``vidfeat`` command's exit status means (also ``RunReport.exit_code``)."""

    #: every requested feature is in the store (a video without audio has its vggish
    #: recorded as skipped); other commands: done
    OK = 0
    #: finished with problems: failed videos (each with its reason in the store and the
    #: report), ``verify`` found problems, a selftest missed its reference
    PROBLEMS = 1
    #: bad usage, configuration or weights: nothing was done
    USAGE = 2
    #: the run broke: store unwritable, full, locked by another run or of an unknown schema,
    #: cluster unreachable, any unexpected error
    BROKEN = 3
    #: stopped by Ctrl-C (or SIGTERM) after storing and indexing what finished
    INTERRUPTED = 130
    #: 128 + SIGPIPE, silently, when the reader of stdout went away (``vidfeat inspect | head``)
    BROKEN_PIPE = 141


class VidfeatError(Exception):
    """Base class: the message is one line that says what went wrong and what to do."""


class DecodeError(VidfeatError, OSError):
    """A media file cannot be probed or decoded."""


class DeviceDecodeError(DecodeError):
    """A decoder cannot decode on the device asked for (no NVDEC in its FFmpeg, no GPU): the
    file itself may be fine, and decodes on the CPU."""


class WeightsError(VidfeatError, FileNotFoundError):
    """Weights are missing, do not verify, or do not fit the extractor."""


class StoreError(VidfeatError, OSError):
    """A feature store is unreadable, of an unknown schema, or inconsistent."""


class ConfigError(VidfeatError, ValueError):
    """Options or inputs contradict each other (bad flag, video id collision, ...)."""


class StoreFullError(StoreError):
    """The store's file system is full (ENOSPC, quota, SQLite's "database or disk is full")."""


class StoreLockedError(StoreError):
    """Another run holds the store's run lock."""


class ClusterError(VidfeatError, ConnectionError):
    """The cluster cannot be reached or started, or lacks the workers a run needs."""
