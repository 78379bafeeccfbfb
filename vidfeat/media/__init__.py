"""Probe and decode: video frames with presentation times, audio as 16 kHz mono float32."""

from vidfeat.media.audio import load_audio
from vidfeat.media.frames import DECODERS, DEFAULT_DECODER, Frame, check_decoder, iter_frames
from vidfeat.media.probe import MediaInfo, probe
from vidfeat.media.timeline import frame_times

__all__ = ["DECODERS", "DEFAULT_DECODER", "Frame", "MediaInfo", "check_decoder", "frame_times",
           "iter_frames", "load_audio", "probe"]
