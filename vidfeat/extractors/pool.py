"""Extractors as a worker process holds them: what to build (``ExtractorSpec``, picklable), the
device policy, and the per-process pool that loads each model once."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidfeat.errors import ConfigError
from vidfeat.extractors._api import (
    Extractor,
    Precision,
    check_options,
    check_precision,
    get_extractor,
)
from vidfeat.extractors.weights import (
    check_keys,
    load_weights,
    locate,
    read_state_dict,
    sha256_file,
    spec,
    verify,
)
from vidfeat.malloc import release_freed_memory

log = logging.getLogger(__name__)
# decoders that can decode on the GPU the models run on (NVDEC)
GPU_DECODERS = ("torchcodec",)


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything a worker needs to build and load one extractor (picklable)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None  # a user's file; None: the registry's verified file
    random_weights: bool = False
    weights_dir: str | None = None
    precision: Precision = "fp32"
    #: run the network as a cached AOTInductor package (extractors.compiled)
    compiled: bool = False

    def __post_init__(self) -> None:
        check_precision(self.precision)

    def build(self) -> Extractor:
        check_options(self.name, self.options)
        try:
            extractor = get_extractor(self.name)(**self.options)
        except TypeError as error:
            raise ConfigError(f"{self.name}: bad option: {error}") from error
        extractor.precision = self.precision
        return extractor

    def _weights_path(self, extractor: Extractor) -> Path:
        """The file the workers will load: the user's, or the registry's in the cache."""
        if self.weights_file:
            path = Path(self.weights_file)
            if not path.is_file():
                raise ConfigError(f"{path}: no such weights file for {self.name}")
            return path
        return locate(extractor.weights_name,
                      Path(self.weights_dir) if self.weights_dir else None)

    def describe(self) -> Extractor:
        """An unloaded extractor whose ``config_hash()`` is the one the loaded one will have
        (its ``weights_sha256`` computed without loading them). The weights file, the user's
        or a cached one, is checked for the model's keys here, before any worker starts: a
        cached file can be pinned yet not this model's (imported by mistake), and each worker
        would fail every video with it."""
        extractor = self.build()
        if self.random_weights:
            extractor.weights_sha256 = "random"
            return extractor
        path = self._weights_path(extractor)
        extractor.weights_sha256 = (sha256_file(path) if self.weights_file
                                    else verify(spec(extractor.weights_name), path))
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = extractor.build_model()
        check_keys(read_state_dict(path, mmap=True), model, self.name, str(path))
        return extractor

    def load(self, device: torch.device) -> Extractor:
        extractor = self.build()
        weights = load_weights(
            self.name, extractor.weights_name,
            file=Path(self.weights_file) if self.weights_file else None,
            weights_dir=Path(self.weights_dir) if self.weights_dir else None,
            random=self.random_weights,
        )
        extractor.load(weights, device)
        if self.compiled:
            extractor.compile()
        return extractor


def resolve_device(requested: str) -> torch.device:
    """``auto`` is CUDA when this process sees a GPU; ``cuda`` without one is an error, never a
    silent fall back to the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: no CUDA device visible on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {requested!r}")
    return torch.device(requested)


class ExtractorPool:
    """The extractors of one run in one worker process, each loaded on first use."""

    def __init__(self, specs: dict[str, ExtractorSpec], device: str = "auto") -> None:
        self.specs = specs
        self.requested_device = device
        self._loaded: dict[str, Extractor] = {}
        self._gpu_decode_failed = False
        self._lock = threading.Lock()

    def get(self, name: str) -> Extractor:
        if name not in self._loaded:
            device = resolve_device(self.requested_device)
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True  # fixed batch shapes: tuned once
            self._loaded[name] = self.specs[name].load(device)
            release_freed_memory()
        return self._loaded[name]

    def decode_device(self, decoder: str) -> str:
        """Where frames are decoded: on the models' GPU when ``decoder`` can decode there
        (frames never cross to host memory), else on the CPU; on the CPU for the rest of this
        process once a GPU decode could not start (``gpu_decode_failed``)."""
        device = self._device()
        if decoder not in GPU_DECODERS or self._gpu_decode_failed or device.type != "cuda":
            return "cpu"
        return str(device)

    def on_gpu(self) -> bool:
        """Whether this process's models run on a GPU."""
        return self._device().type == "cuda"

    def _device(self) -> torch.device:
        try:
            return resolve_device(self.requested_device)
        except ConfigError:  # reported by get() for every video; nothing runs on a GPU
            return torch.device("cpu")

    def gpu_decode_failed(self, error: Exception) -> None:
        """Called by the decode threads: several may fail at once; one warns."""
        with self._lock:
            if self._gpu_decode_failed:
                return
            self._gpu_decode_failed = True
        log.warning("%s; decoding on the CPU from now on", error)
