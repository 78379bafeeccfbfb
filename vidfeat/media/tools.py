"""Locating the ffmpeg/ffprobe executables."""

from __future__ import annotations

import os
import shutil

from vidfeat.errors import DecodeError


def executable(name: str) -> str:
    """Path of ``ffmpeg`` or ``ffprobe``: ``$VIDFEAT_FFMPEG_DIR`` first, then ``PATH``."""
    directory = os.environ.get("VIDFEAT_FFMPEG_DIR")
    if directory:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise DecodeError(
            f"{name} not found on PATH: install ffmpeg (apt-get install ffmpeg) "
            "or set VIDFEAT_FFMPEG_DIR"
        )
    return found
