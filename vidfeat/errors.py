"""The few exception types vidfeat raises; each also derives from the matching built-in."""

from __future__ import annotations


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
