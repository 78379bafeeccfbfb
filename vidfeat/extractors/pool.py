"""Extractors as a worker process holds them: the device policy, and the per-process pool that
loads each model once (what to build is an ``ExtractorSpec``, from ``spec.py``)."""

from __future__ import annotations

import logging
import threading

import torch

from vidfeat.errors import ConfigError
from vidfeat.extractors.base import Extractor
from vidfeat.extractors.spec import ExtractorSpec
from vidfeat.host import resolve_device
from vidfeat.malloc import release_freed_memory

log = logging.getLogger(__name__)
# decoders that can decode on the GPU the models run on (NVDEC)
GPU_DECODERS = ("torchcodec",)


class ExtractorPool:
    """The extractors of one run in one worker process, each loaded on first use."""

    def __init__(self, specs: dict[str, ExtractorSpec], device: str = "auto") -> None:
        self.specs = specs
        self.requested_device = device
        self._loaded: dict[str, Extractor] = {}
        self._gpu_decode_failed = False
        self._lock = threading.Lock()
        self._loading = threading.RLock()

    def get(self, name: str) -> Extractor:
        """The loaded extractor; a task asking while the worker still loads it (``load_all``
        started at the run's start) waits for that load rather than doing it again."""
        with self._loading:
            if name not in self._loaded:
                device = resolve_device(self.requested_device)
                if device.type == "cuda":
                    torch.backends.cudnn.benchmark = True  # fixed batch shapes: tuned once
                self._loaded[name] = self.specs[name].load(device)
                release_freed_memory()
            return self._loaded[name]

    def load_all(self) -> None:
        """Load every extractor of the run now (a failure is left for ``get`` to raise, in
        the task that needs it, with the video's outcome)."""
        for name in self.specs:
            try:
                self.get(name)
            except Exception as error:
                log.debug("%s: not loaded ahead: %s", name, error)

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


__all__ = ["GPU_DECODERS", "ExtractorPool", "ExtractorSpec"]
