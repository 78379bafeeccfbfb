"""Audio decoding with the ffmpeg executable straight to a float32 array (no temp files)."""

from __future__ import annotations

import subprocess

import numpy as np

from vidfeat.errors import DecodeError
from vidfeat.media.probe import MediaInfo
from vidfeat.media.tools import executable


def load_audio(info: MediaInfo, sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream resampled to ``sample_rate``, mono, float32 in [-1, 1].

    Channels are averaged here with equal weights, as VGGish's reference does; ffmpeg's own
    ``-ac 1`` would weight the centre and surround channels of 5.1 audio and drop the LFE.
    """
    if not info.has_audio:
        raise DecodeError(f"{info.path}: no audio stream")
    command = [
        executable("ffmpeg"), "-nostdin", "-v", "error", "-i", info.path,
        "-map", "0:a:0", "-vn", "-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le",
        "pipe:1",
    ]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise DecodeError(f"{info.path}: audio decode failed: {reason[-1] if reason else '?'}")
    samples = np.frombuffer(result.stdout, dtype="<f4")
    channels = max(info.audio_channels, 1)
    usable = samples.size - samples.size % channels
    return samples[:usable].reshape(-1, channels).mean(axis=1, dtype=np.float32)
