"""VGGish's log-mel front end, the same arithmetic as tensorflow/models research/audioset
(mel_features.py, vggish_input.py, vggish_params.py), vectorised and computed in float64.

The reference frames a whole waveform at once; here the STFT runs over blocks of frames so an
hour of audio needs tens of megabytes instead of gigabytes. Each frame is independent, so the
blocks change nothing but memory.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
STFT_WINDOW = 400  # 25 ms
STFT_HOP = 160  # 10 ms: 100 log-mel frames per second
FFT_LENGTH = 512  # next power of two above the window; the window is zero-padded at the end
MEL_BANDS = 64
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
FRAMES_PER_SECOND = SAMPLE_RATE // STFT_HOP
#: the fewest samples that give one example: 96 frames of 400 samples, 160 apart
EXAMPLE_SAMPLES = STFT_WINDOW + (EXAMPLE_FRAMES - 1) * STFT_HOP

_FRAMES_PER_BLOCK = 4096


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(hertz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """The (257, 64) float64 matrix that maps |STFT| rows to mel bands (shared, read-only).

    Triangles are linear in the mel domain (not in Hz as librosa's), and the DC bin gets no
    weight, as mel_features.spectrogram_to_mel_matrix.
    """
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))[:, None]
    edges = np.linspace(hertz_to_mel(MEL_LOW_HZ), hertz_to_mel(MEL_HIGH_HZ), MEL_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    matrix = np.maximum(0.0, np.minimum(rising, falling))
    matrix[0, :] = 0.0
    matrix.flags.writeable = False
    return matrix


def periodic_hann() -> np.ndarray:
    """``0.5 - 0.5 cos(2 pi n / 400)``: one full period, unlike np.hanning's symmetric window."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(STFT_WINDOW) / STFT_WINDOW)


def frame_count(samples: int) -> int:
    """STFT frames in ``samples`` samples: no padding, an incomplete last frame is dropped."""
    return 0 if samples < STFT_WINDOW else 1 + (samples - STFT_WINDOW) // STFT_HOP


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """16 kHz mono samples -> float64 [frames, 64] of ``log(|STFT| @ mel + 0.01)``."""
    samples = np.asarray(waveform)
    if not np.issubdtype(samples.dtype, np.floating):
        samples = samples.astype(np.float64)
    if samples.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-D), got shape {samples.shape}")
    count = frame_count(samples.size)
    result = np.empty((count, MEL_BANDS), dtype=np.float64)
    if count == 0:
        return result
    frames = np.lib.stride_tricks.sliding_window_view(samples, STFT_WINDOW)[::STFT_HOP]
    window = periodic_hann()
    weights = mel_matrix()
    for first in range(0, count, _FRAMES_PER_BLOCK):
        # float32 samples become float64 here, block by block: exact, and an hour of audio is
        # never held in float64 at once
        block = frames[first:first + _FRAMES_PER_BLOCK].astype(np.float64) * window
        magnitude = np.abs(np.fft.rfft(block, FFT_LENGTH, axis=1))
        result[first:first + len(block)] = np.log(magnitude @ weights + LOG_OFFSET)
    return result


def frames_to_examples(log_mel: np.ndarray, hop_frames: int = EXAMPLE_FRAMES) -> np.ndarray:
    """[frames, 64] -> float32 [examples, 96, 64], one example every ``hop_frames`` frames,
    an incomplete last example dropped."""
    if len(log_mel) < EXAMPLE_FRAMES:
        return np.empty((0, EXAMPLE_FRAMES, MEL_BANDS), dtype=np.float32)
    # a strided view, [examples, 64, 96]; the float32 cast is the only copy
    windows = np.lib.stride_tricks.sliding_window_view(log_mel, EXAMPLE_FRAMES, axis=0)
    return windows[::hop_frames].transpose(0, 2, 1).astype(np.float32)


def waveform_to_examples(waveform: np.ndarray, hop_frames: int = EXAMPLE_FRAMES) -> np.ndarray:
    """16 kHz mono samples -> float32 [examples, 96, 64] log-mel examples (vggish_input)."""
    return frames_to_examples(log_mel_spectrogram(waveform), hop_frames)
