"""The extractor contract and the two visual samplers every model shares (which extractors
exist: ``registry.py``).

An extractor is built on a worker from its options, loads its weights once, and then turns
model inputs (``Item``) into feature rows with ``embed``. Visual extractors see each decoded
frame once through a per-video ``Sampler``; the pipeline pushes every frame of one decode pass
to the samplers of all visual extractors, so a video is never decoded twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.extractors.compiled import CompiledNetwork, channels_last
from vidfeat.extractors.precision import Precision, check_precision  # noqa: F401 (public here)
from vidfeat.extractors.weights import LoadedWeights
from vidfeat.media.frames import Frame
from vidfeat.media.probe import MediaInfo

Modality = Literal["frames", "clips", "audio"]
#: model precision -> autocast dtype (fp32: no autocast, the reference-exact default)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                              "fp16": torch.float16}


@dataclass
class Item:
    """One model input (already preprocessed, on CPU) and the time span it covers, seconds."""

    tensor: torch.Tensor
    start: float
    end: float


class Sampler(ABC):
    """Per-video state of one visual extractor: takes frames in order, returns ready items."""

    #: whether ``wants`` can turn frames down (else the sampler needs every frame)
    selective = False

    def wants(self, time: float, next_time: float) -> bool:
        """Whether the frame shown from ``time`` until ``next_time`` (the next frame's time)
        may be taken: a frame no sampler wants need not be decoded. Erring towards True only
        costs decoding."""
        return True

    @abstractmethod
    def push(self, frame: Frame) -> list[Item]: ...

    @abstractmethod
    def finish(self, end_time: float, final: bool = True) -> list[Item]:
        """The items still pending once the last frame was pushed; ``end_time`` is when the
        last decoded frame stops being shown. ``final`` is False at the end of a segment that
        is not the video's last: ``end_time`` is then the next segment's first frame time."""

    #: set when the video was too short for one input and the input was padded
    padded: bool = False


class Extractor(ABC):
    """Base class. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    modality: ClassVar[Modality]
    default_weights: ClassVar[str]  # a name in extractors.weights.REGISTRY
    #: inputs per model batch unless the run sets one: large enough to keep the model busy,
    #: small enough that a batch's activations stay well under a GB
    batch_size: ClassVar[int] = 16

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.weights_sha256 = "unloaded"
        self.precision: Precision = "fp32"
        self.model: nn.Module | None = None
        #: what ``run_network`` calls: ``network()``, or its compiled package (``compile()``)
        self._network: Callable[[torch.Tensor], torch.Tensor] | None = None

    # ---- description -------------------------------------------------------------------
    @property
    def weights_name(self) -> str:
        """The registry entry this extractor's options call for (override when options pick
        among several, e.g. ResNet-152 V1/V2)."""
        return self.default_weights

    @property
    @abstractmethod
    def feature_dim(self) -> int: ...

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """Every option that changes the output (layer, sampling, preprocessing), JSON-able."""

    def config(self) -> dict[str, Any]:
        """Options plus the weights identity and precision: equal configs give equal features.
        fp32 is left out, so that stores extracted before precisions existed stay up to date."""
        config = {"extractor": self.name, "weights_sha256": self.weights_sha256, **self.options()}
        if self.precision != "fp32":
            config["precision"] = self.precision
        return config

    def config_hash(self) -> str:
        text = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- model -------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """The architecture with freshly initialised parameters (keys as the weights file)."""

    def load(self, weights: LoadedWeights, device: torch.device | str = "cpu") -> None:
        """Build the model, load ``weights`` (a state dict, or a seeded random init), move it to
        ``device`` and switch to inference mode. Called once per worker process."""
        model = None
        if weights.state_dict is not None:
            # real weights replace every parameter: build without initialising (meta
            # tensors), then take the loaded tensors as they are
            with torch.device("meta"):
                model = self.build_model()
            weights.load_into(model, self.name, assign=True)
            if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
                model = None  # a buffer the weights file does not hold: initialise after all
        if model is None:
            torch.manual_seed(weights.seed)
            model = self.build_model()
            if weights.state_dict is not None:
                weights.load_into(model, self.name)
        # channels-last convolutions are 1.2-1.3x faster on CPU (oneDNN) and on tensor cores
        memory_format = (torch.channels_last_3d if self.modality == "clips"
                         else torch.channels_last)
        self.model = model.eval().to(device, memory_format=memory_format)
        self.device = torch.device(device)
        self.weights_sha256 = weights.sha256
        self._network = self.network()

    def network(self) -> nn.Module:
        """The loaded model as a module from a model-input batch to the feature tensor (what
        ``compile()`` exports): the whole model unless a subclass picks a layer."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: load() the weights first")
        return self.model

    def compile(self, directory: Path | None = None) -> None:
        """Run the network as an AOTInductor package (see extractors.compiled), built or
        loaded from ``directory`` on the first batch."""
        self._network = CompiledNetwork(self.network(), self.config_hash(), directory,
                                        PRECISIONS[self.precision])
        # the package holds its own weights: the eager ones go once it is loaded
        self.model = None

    @property
    def compiled(self) -> bool:
        """Whether rows come from a compiled package (recorded with each feature: its rows
        differ from eager ones by rounding: 5e-7 relative in fp32)."""
        return isinstance(self._network, CompiledNetwork)

    def run_network(self, batch: torch.Tensor) -> torch.Tensor:
        """Stacked items -> the network's output on the device, under ``inference()``."""
        if self._network is None:
            raise RuntimeError(f"{self.name}: load() the weights before embed()")
        with self.inference():
            return self._network(self.model_input(batch))

    @contextmanager
    def inference(self) -> Iterator[None]:
        """No autograd, and autocast to the extractor's precision unless it is fp32."""
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or
                                                    torch.bfloat16, enabled=dtype is not None):
            yield

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """A stacked batch (on the CPU, or already on the GPU where the frames were decoded
        there) on the model's device, channels-last like the model."""
        if self.device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        return channels_last(batch.to(self.device, non_blocking=True))

    @abstractmethod
    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """Stacked items -> float32 array [B, feature_dim]."""

    # ---- inputs ------------------------------------------------------------------------
    def sampler(self, info: MediaInfo, start_time: float | None = None) -> Sampler:
        """Visual extractors: a fresh per-video sampler; ``start_time``: the sampler of a
        segment whose first frame shows then (frames keep their whole-video indices)."""
        raise TypeError(f"{self.name} is not a visual extractor")

    def audio_stream(self, start: float) -> Any:
        """Audio extractors: a per-video object taking 16 kHz mono blocks (``push(block)``
        returns ready items, ``finish()`` the rest, ``padded`` after it), ``start`` seconds being
        the first sample's time."""
        raise TypeError(f"{self.name} is not an audio extractor")

    def audio_items(self, waveform: np.ndarray, start: float) -> tuple[list[Item], bool]:
        """Audio extractors: items from a 16 kHz mono waveform starting at ``start`` seconds,
        and whether the audio was padded to give at least one item."""
        raise TypeError(f"{self.name} is not an audio extractor")


class FeatureNode(nn.Module):
    """A model cut at one of its nodes (torchvision's feature extraction), giving that node's
    output as a tensor: one module from input to feature, as export needs."""

    def __init__(self, model: nn.Module, node: str) -> None:
        # here, not at the top: importing torchvision imports all of torchvision.models and
        # torch._dynamo (1.4 s), which the C3D and VGGish workers never need
        from torchvision.models.feature_extraction import create_feature_extractor

        super().__init__()
        # not "graph": an exported module has its own .graph, which the name would shadow
        self.extractor = create_feature_extractor(model, {node: "features"})

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.extractor(batch)["features"]


# PTS * time_base is inexact in binary (2.9 s at 1/10240 s is 2.9000000000000004): times this
# close are the same instant, or a frame starting at a target time would lose it to its
# predecessor, and a video ending at a target time would get an extra row
_SAME_INSTANT = 1e-6


class FrameSampler(Sampler):
    """Selects single frames: ``fps`` per second by presentation time, or ``count`` frames at
    ``round(linspace(0, N-1, count))`` of the N frames (as S2VT pipelines do).

    With ``fps``, the frame shown at each target time ``k / fps`` is taken (a frame shown over
    several targets is taken once). A row spans from its frame's time to the next row's frame
    time (the last to the end of the video). ``start_time``: a segment's sampler, whose first
    target is the first at or after it.
    """

    def __init__(self, preprocess: Callable[[Frame], torch.Tensor], *, fps: float | None = None,
                 count: int | None = None, frame_count: int | None = None,
                 start_time: float | None = None) -> None:
        if (fps is None) == (count is None):
            raise ConfigError("frame sampling needs exactly one of fps or count")
        if fps is not None and fps <= 0:
            raise ConfigError(f"sampling fps must be positive, got {fps}")
        self._preprocess = preprocess
        self._fps = fps
        self._wanted: dict[int, int] = {}
        if count is not None:
            if count < 1 or not frame_count:
                raise ConfigError("count sampling needs count >= 1 and a known frame count")
            for index in np.round(np.linspace(0, frame_count - 1, count)).astype(int).tolist():
                self._wanted[index] = self._wanted.get(index, 0) + 1
        self._next_target = 0
        self._segment = start_time is not None
        if start_time is not None and fps is not None:
            self._next_target = max(0, math.ceil((start_time - _SAME_INSTANT) * fps))
        self._first_target = self._next_target
        self.selective = fps is not None
        self._previous: Frame | None = None
        self._pending: list[tuple[torch.Tensor, float]] = []

    def wants(self, time: float, next_time: float) -> bool:
        """With ``fps``: whether a target time falls while the frame is shown, widened by twice
        the tolerance ``push`` compares with (so float rounding can only keep a frame)."""
        if self._fps is None:
            return True
        first = max(self._first_target, math.ceil((time - 2 * _SAME_INSTANT) * self._fps))
        return first / self._fps < next_time + 2 * _SAME_INSTANT

    def _take(self, frame: Frame, copies: int = 1) -> list[Item]:
        ready = [Item(t, s, frame.time) for t, s in self._pending]
        tensor = self._preprocess(frame)
        self._pending = [(tensor, frame.time)] * copies
        return ready

    def push(self, frame: Frame) -> list[Item]:
        if self._fps is None:
            self._previous = frame
            copies = self._wanted.get(frame.index, 0)
            return self._take(frame, copies) if copies else []
        ready: list[Item] = []
        previous, self._previous = self._previous, frame
        target = self._next_target / self._fps
        if previous is not None and frame.time > target + _SAME_INSTANT:
            # the previous frame is on screen at the target time
            ready = self._take(previous)
            while self._next_target / self._fps < frame.time - _SAME_INSTANT:
                self._next_target += 1
        return ready

    def finish(self, end_time: float, final: bool = True) -> list[Item]:
        ready: list[Item] = []
        last = self._previous
        if self._fps is not None and last is not None:
            target_left = self._next_target / self._fps < end_time - _SAME_INSTANT
            # a whole video gives at least one row; a segment only the rows its targets pick
            if target_left or (not self._pending and not self._segment):
                ready = self._take(last)
        elif last is not None and final:
            # the container counted more frames than decoded (an edit list can hide the last
            # ones): the frames wanted past the end repeat the last, so there are still `count`
            missing = sum(copies for index, copies in self._wanted.items() if index > last.index)
            if missing and self._wanted.get(last.index):
                self._pending += self._pending[-1:] * missing
            elif missing:
                ready = self._take(last, missing)
        ready += [Item(t, s, max(end_time, s)) for t, s in self._pending]
        self._pending = []
        return ready


class ClipSampler(Sampler):
    """Groups ``clip_len`` consecutive decoded frames into one input, a new clip every
    ``stride`` frames (the reference convention: clips start at frames 0, stride, 2*stride...;
    an incomplete tail clip is dropped). A video shorter than one clip gives one clip padded
    with its last frame, and ``padded`` is set. ``preprocess`` maps a frame to a [C, 1, H, W]
    tensor; ``assemble`` maps the concatenated [C, T, H, W] clip to the model input.
    A clip spans from its first frame's time to the time the frame after its last begins.
    """

    def __init__(self, preprocess: Callable[[Frame], torch.Tensor], *, clip_len: int,
                 stride: int, assemble: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
                 ) -> None:
        if clip_len < 1 or stride < 1:
            raise ConfigError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
        self._preprocess = preprocess
        self._assemble = assemble
        self._clip_len = clip_len
        self._stride = stride
        self._window: list[tuple[torch.Tensor, float]] = []  # the frames of open clips
        self._complete: list[tuple[torch.Tensor, float]] = []  # waiting for their end time
        self._seen = 0

    def _emit_complete(self, end: float) -> list[Item]:
        ready = [Item(t, s, end) for t, s in self._complete]
        self._complete = []
        return ready

    def push(self, frame: Frame) -> list[Item]:
        ready = self._emit_complete(frame.time)
        self._seen += 1
        if self._stride > self._clip_len and frame.index % self._stride >= self._clip_len:
            return ready  # between two clips: no clip needs this frame
        self._window.append((self._preprocess(frame), frame.time))
        if len(self._window) == self._clip_len:
            clip = torch.cat([t for t, _ in self._window], dim=1)
            self._complete.append((self._assemble(clip), self._window[0][1]))
            self._window = self._window[min(self._stride, self._clip_len):]
        return ready

    def finish(self, end_time: float, final: bool = True) -> list[Item]:
        if final and self._seen and self._seen < self._clip_len and self._window:
            last = self._window[-1][0]
            frames = [t for t, _ in self._window] + [last] * (self._clip_len - len(self._window))
            self._complete.append((self._assemble(torch.cat(frames, dim=1)), self._window[0][1]))
            self.padded = True
        self._window = []
        return self._emit_complete(end_time)


def resize_per_channel(image: torch.Tensor, resize: Callable[[torch.Tensor], torch.Tensor]
                       ) -> torch.Tensor:
    """``resize`` applied to each channel of a [..., C, H, W] uint8 image on its own.

    Resizing treats channels independently, so the values are the same; the full-size float
    copy torchvision's resize makes is a third as large (100 MB for a 4K frame in one go).
    A preset then resizing the result to the size it already has changes nothing (tested).
    """
    return torch.cat([resize(image[..., channel:channel + 1, :, :])
                      for channel in range(image.shape[-3])], dim=-3)
