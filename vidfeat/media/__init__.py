"""Probe and decode: video frames with presentation times, audio as 16 kHz mono float32."""

from vidfeat.media.audio import load_audio
from vidfeat.media.frames import Frame, iter_frames
from vidfeat.media.probe import MediaInfo, probe

__all__ = ["Frame", "MediaInfo", "iter_frames", "load_audio", "probe"]
