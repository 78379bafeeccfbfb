"""VGGish (AudioSet): 128-d embeddings of 0.96 s log-mel examples of 16 kHz mono audio.

Matches the TensorFlow reference (tensorflow/models research/audioset/vggish): the front end
is vggish_mel, the network is vggish_slim with torchvggish's state-dict keys, the embedding is
pre-activation, and the optional postprocessing is vggish_postprocess (PCA, clip, 8-bit
quantisation by truncation). ``relu=True`` adds the final ReLU torchvggish has, to reproduce
torchvggish's values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

from vidfeat.errors import WeightsError
from vidfeat.extractors import checks
from vidfeat.extractors.base import Extractor, Item
from vidfeat.extractors.vggish_mel import (
    EXAMPLE_FRAMES,
    EXAMPLE_SAMPLES,
    FFT_LENGTH,
    FRAMES_PER_SECOND,
    LOG_OFFSET,
    MEL_BANDS,
    MEL_HIGH_HZ,
    MEL_LOW_HZ,
    SAMPLE_RATE,
    STFT_HOP,
    STFT_WINDOW,
    frames_to_examples,
    log_mel_spectrogram,
    waveform_to_examples,
)
from vidfeat.extractors.weights import LoadedWeights

__all__ = ["AudioExamples", "PcaParams", "VGGish", "VGGishNet", "postprocess_embeddings",
           "random_pca_params", "read_pca_params", "smoke_test"]

EMBEDDING_SIZE = 128
PCA_WEIGHTS = "vggish-pca-audioset"
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0


class VGGishNet(nn.Module):
    """vggish_slim's network. Input [B, 1, 96, 64] (frames x mel bands), output [B, 128]."""

    def __init__(self, *, relu: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
            if width == "pool":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(width), kernel_size=3, padding=1),
                           nn.ReLU(inplace=True)]
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(6 * 4 * 512, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE),
        )
        # torchvggish ends with a ReLU (its issue #24), the TF model does not. It lives outside
        # `embeddings` so that the weights' key set is the same with and without it.
        self.final_activation: nn.Module = nn.ReLU() if relu else nn.Identity()

    def pre_activation(self, batch: torch.Tensor) -> torch.Tensor:
        """The reference embedding (fc2 without activation), whatever ``relu`` is."""
        maps = self.features(batch)
        # TF flattens NHWC tensors; fc1_1's weight rows follow that order
        return self.embeddings(maps.permute(0, 2, 3, 1).flatten(1))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.final_activation(self.pre_activation(batch))


@dataclass(frozen=True)
class PcaParams:
    """The AudioSet release PCA: ``(x - means) @ eigenvectors.T``."""

    eigenvectors: np.ndarray  # (128, 128) float64, one output component per row
    means: np.ndarray  # (128,) float64


def random_pca_params() -> PcaParams:
    """Stand-in PCA for seeded random weights, which have no released PCA: a random orthonormal
    matrix (torch.Generator seeded 0) and zero means. It exercises the same code path; the
    numbers mean nothing."""
    generator = torch.Generator().manual_seed(0)
    gaussian = torch.randn(EMBEDDING_SIZE, EMBEDDING_SIZE, generator=generator,
                           dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # fixing the signs makes the factorisation unique, so the matrix does not depend on LAPACK
    orthonormal = q * torch.sign(torch.diagonal(r))
    return PcaParams(orthonormal.numpy(), np.zeros(EMBEDDING_SIZE))


def _load_pickled_params(path: Path) -> dict[str, Any]:
    # torchvggish's file is a pickled dict of numpy arrays: allow exactly what such a pickle
    # needs, under both module names numpy has used (numpy.core before 2.0, then numpy._core)
    allowed = [(_reconstruct, f"{module}.multiarray._reconstruct")
               for module in ("numpy.core", "numpy._core")]
    allowed += [np.ndarray, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64))]
    try:
        with torch.serialization.safe_globals(allowed):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise WeightsError(f"{path}: not loadable VGGish PCA parameters: {error}") from error
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: holds a {type(loaded).__name__}, not a dict of PCA arrays")
    return loaded


def read_pca_params(path: Path) -> PcaParams:
    """PCA parameters from torchvggish's ``vggish_pca_params-970ea276.pth`` or the TF release's
    ``vggish_pca_params.npz``: keys ``pca_eigen_vectors`` (128, 128), ``pca_means`` (128,)."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                loaded: dict[str, Any] = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:
            raise WeightsError(f"{path}: not a readable .npz of PCA parameters: {error}") from error
    else:
        loaded = _load_pickled_params(path)
    missing = [key for key in ("pca_eigen_vectors", "pca_means") if key not in loaded]
    if missing:
        raise WeightsError(f"{path}: not VGGish PCA parameters: missing {missing}")
    eigenvectors = np.asarray(loaded["pca_eigen_vectors"], dtype=np.float64)
    # torchvggish stores the means as a column (128, 1)
    means = np.asarray(loaded["pca_means"], dtype=np.float64).reshape(-1)
    if eigenvectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.shape != (EMBEDDING_SIZE,):
        raise WeightsError(
            f"{path}: PCA shapes {eigenvectors.shape} and {means.shape}, expected (128, 128) and "
            "(128,)"
        )
    return PcaParams(eigenvectors, means)


def postprocess_embeddings(embeddings: np.ndarray, pca: PcaParams) -> np.ndarray:
    """vggish_postprocess: PCA, clip to [-2, 2], scale to [0, 255] and cast to uint8 by
    truncation (torchvggish rounds instead). Returned as float32 [B, 128] holding 0..255."""
    projected = (np.asarray(embeddings, dtype=np.float64) - pca.means) @ pca.eigenvectors.T
    clipped = np.clip(projected, QUANTIZE_MIN, QUANTIZE_MAX)
    scaled = (clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))
    return scaled.astype(np.uint8).astype(np.float32)


class VGGish(Extractor):
    """AudioSet VGGish embeddings, one row per 0.96 s example.

    Options (keyword-only): ``hop`` 0.96 (the reference, back to back examples) or 1.0 (one
    example per second, aligned with 1 fps frames as YouTube-8M); ``relu`` adds torchvggish's
    final ReLU; ``postprocess`` applies the AudioSet release PCA and 8-bit quantisation;
    ``pad_short`` zero-pads audio shorter than one example (15 600 samples) at the end to one
    example and reports it as padded. With ``pad_short=False`` such audio gives no rows, as the
    reference does. A waveform with no samples at all gives no rows either way.
    """

    name = "vggish"
    modality = "audio"
    default_weights = "vggish-audioset"
    batch_size = 64

    def __init__(self, *, hop: float = 0.96, relu: bool = False, postprocess: bool = False,
                 pad_short: bool = True) -> None:
        super().__init__()
        checked = checks.vggish(hop=hop, relu=relu, postprocess=postprocess, pad_short=pad_short)
        self.hop = checked["hop"]
        self.hop_frames = round(self.hop * FRAMES_PER_SECOND)
        self.relu = relu
        self.postprocess = postprocess
        self.pad_short = pad_short
        self.pca: PcaParams | None = None

    @property
    def feature_dim(self) -> int:
        return EMBEDDING_SIZE

    def options(self) -> dict[str, Any]:
        return {
            "hop": self.hop, "relu": self.relu, "postprocess": self.postprocess,
            "pad_short": self.pad_short, "sample_rate": SAMPLE_RATE,
            "stft_window": STFT_WINDOW, "stft_hop": STFT_HOP, "fft_length": FFT_LENGTH,
            "mel_bands": MEL_BANDS, "mel_range_hz": [MEL_LOW_HZ, MEL_HIGH_HZ],
            "log_offset": LOG_OFFSET, "example_frames": EXAMPLE_FRAMES,
            "example_hop_frames": self.hop_frames,
        }

    def build_model(self) -> nn.Module:
        return VGGishNet(relu=self.relu)

    def load(self, weights: LoadedWeights, device: torch.device | str = "cpu") -> None:
        super().load(weights, device)
        if self.postprocess:
            path = weights.auxiliary(PCA_WEIGHTS)
            self.pca = random_pca_params() if path is None else read_pca_params(path)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        if tuple(batch.shape[1:]) != (1, EXAMPLE_FRAMES, MEL_BANDS):
            raise ValueError(f"vggish expects a [B, 1, 96, 64] batch, got {tuple(batch.shape)}")
        embeddings = self.run_network(batch.float()).float().cpu().numpy()
        if self.postprocess:
            if self.pca is None:
                raise RuntimeError("vggish: postprocess needs PCA parameters, set by load()")
            return postprocess_embeddings(embeddings, self.pca)
        return embeddings

    def audio_items(self, waveform: np.ndarray, start: float) -> tuple[list[Item], bool]:
        stream = self.audio_stream(start)
        items = stream.push(np.asarray(waveform)) + stream.finish()
        return items, stream.padded

    def audio_stream(self, start: float) -> AudioExamples:
        """Examples from audio handed over in blocks (memory flat in the audio's length)."""
        return AudioExamples(self.hop_frames, start, self.pad_short)


class AudioExamples:
    """Cuts a stream of 16 kHz mono blocks into log-mel examples as soon as each is complete.

    Example k covers samples ``[k * hop, k * hop + 15600)`` (hop = hop_frames * 160 samples):
    each log-mel frame depends only on its own 400 samples and every example starts on a frame
    boundary, so examples computed block by block equal those of the whole waveform.
    """

    def __init__(self, hop_frames: int, start: float, pad_short: bool) -> None:
        self.hop_frames = hop_frames
        self.hop_samples = hop_frames * STFT_HOP
        self.start = start
        self.pad_short = pad_short
        self.padded = False
        self._buffer = np.zeros(0, np.float32)
        self._examples = 0
        self._seen = 0

    def push(self, block: np.ndarray) -> list[Item]:
        if block.ndim != 1:
            raise ValueError(f"vggish expects mono audio (1-D), got shape {block.shape}")
        self._seen += block.size
        self._buffer = np.concatenate([self._buffer, block]) if self._buffer.size else block
        ready = (self._buffer.size - EXAMPLE_SAMPLES) // self.hop_samples + 1
        if self._buffer.size < EXAMPLE_SAMPLES or ready < 1:
            return []
        used = (ready - 1) * self.hop_samples + EXAMPLE_SAMPLES
        examples = frames_to_examples(log_mel_spectrogram(self._buffer[:used]), self.hop_frames)
        self._buffer = self._buffer[ready * self.hop_samples:]
        return self._items(examples)

    def finish(self) -> list[Item]:
        if self._examples or not self._seen or not self.pad_short:
            return []
        # shorter than one example: zero-padded at the end to one, and reported as padded
        samples = np.pad(self._buffer.astype(np.float64), (0, EXAMPLE_SAMPLES - self._seen))
        self.padded = True
        return self._items(frames_to_examples(log_mel_spectrogram(samples), self.hop_frames))

    def _items(self, examples: np.ndarray) -> list[Item]:
        example_seconds = EXAMPLE_FRAMES / FRAMES_PER_SECOND
        items = []
        for tensor in torch.from_numpy(examples).unsqueeze(1):
            # from the integer frame offset, so that an hour of hops does not accumulate error
            offset = self.start + self._examples * self.hop_frames / FRAMES_PER_SECOND
            items.append(Item(tensor, offset, offset + example_seconds))
            self._examples += 1
        return items


# ---- the published smoke test (vggish_smoke_test.py) ---------------------------------------
SMOKE_EMBEDDING_MEAN, SMOKE_EMBEDDING_STD = 0.000657, 0.343
SMOKE_POSTPROCESSED_MEAN, SMOKE_POSTPROCESSED_STD = 126.0, 89.3
SMOKE_RELATIVE_TOLERANCE = 0.1


def smoke_test(extractor: VGGish) -> dict[str, Any]:
    """The reference smoke test on a loaded extractor: a 1 kHz sine, 16 kHz, 3 s, through the
    reference front end (hop 0.96 whatever the extractor's hop) and the pre-activation
    embedding (whatever ``relu``); the postprocessed numbers are checked only when the
    extractor was loaded with ``postprocess=True`` (so it holds PCA parameters).

    Returns the measured and expected numbers, one pass/fail per number, and ``passed``.
    Only meaningful with the real weights: random weights fail it.
    """
    model = extractor.model
    if not isinstance(model, VGGishNet):
        raise RuntimeError("vggish smoke test: load the extractor first")
    seconds = np.arange(0, 3, 1 / SAMPLE_RATE)
    examples = waveform_to_examples(np.sin(2 * np.pi * 1000 * seconds))
    batch = torch.from_numpy(examples).unsqueeze(1).to(extractor.device)
    with torch.inference_mode():
        embeddings = model.pre_activation(batch).float().cpu().numpy().astype(np.float64)
    measured = {"embedding_mean": (embeddings.mean(), SMOKE_EMBEDDING_MEAN),
                "embedding_std": (embeddings.std(), SMOKE_EMBEDDING_STD)}
    if extractor.pca is not None:
        postprocessed = postprocess_embeddings(embeddings, extractor.pca).astype(np.float64)
        measured["postprocessed_mean"] = (postprocessed.mean(), SMOKE_POSTPROCESSED_MEAN)
        measured["postprocessed_std"] = (postprocessed.std(), SMOKE_POSTPROCESSED_STD)
    checks = {
        key: {"value": float(value), "expected": expected,
              # as numpy.testing.assert_allclose(rtol=0.1) in the reference
              "passed": bool(abs(value - expected) <= SMOKE_RELATIVE_TOLERANCE * abs(expected))}
        for key, (value, expected) in measured.items()
    }
    return {"examples": list(examples.shape), "relative_tolerance": SMOKE_RELATIVE_TOLERANCE,
            "checks": checks, "passed": all(check["passed"] for check in checks.values())}
