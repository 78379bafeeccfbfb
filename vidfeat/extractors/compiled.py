"""Models compiled ahead of time (``--compile``): a network exported with ``torch.export`` and
built by AOTInductor with freezing (batch norms folded into the convolutions, weights
pre-packed for oneDNN), cached as a ``.pt2`` package and loaded by every later run.

Measured on the 2-core AMX development CPU in fp32: ResNet-152 1.3-1.5x faster than eager
channels-last, C3D 1.08x, VGGish 1.1x; rows within 5e-7 relative of eager. Since the eager
ResNet-152 runs every convolution on oneDNN (``resnet_network``), it is the faster of the two
on an AVX2-only CPU (7-9 % less model time than its package, docs/how-a-run-works.md).
Building takes 40-60 s for ResNet-152 on the AMX machine, once per machine and configuration:
a package is keyed by the extractor's config hash (weights, options, precision), the input's
shape and strides, torch's version and the processor (CPU instruction set or CUDA
capability), so a cache directory shared by a cluster serves every host of the same kind.

With ``--precision bf16|fp16`` the autocast is traced into the package (VGGish bf16: the same
0.26 % error as eager autocast).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from vidfeat.extractors.checks import check_compiler
from vidfeat.extractors.weights import home as weights_home

#: the largest batch a package takes: the batch dimension is dynamic, so any --batch-size fits
MAX_BATCH = 4096


def packages_dir() -> Path:
    """``$VIDFEAT_HOME/compiled`` (default ``~/.cache/vidfeat/compiled``), beside the weights."""
    return weights_home().parent / "compiled"


def processor(device: torch.device) -> str:
    """What a compiled package is specific to, besides the model."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    return f"cpu-{torch.backends.cpu.get_cpu_capability()}"


def package_path(config_hash: str, example: torch.Tensor, directory: Path) -> Path:
    identity = {"config_hash": config_hash, "shape": list(example.shape[1:]),
                "stride": list(example.stride()[1:]), "dtype": str(example.dtype),
                "torch": torch.__version__, "processor": processor(example.device)}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return directory / f"{key}.pt2"


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """The one layout a package is built for and called with: a package reads its input with
    the strides it was exported with, whatever the strides it is given."""
    if batch.dim() == 5:
        return batch.contiguous(memory_format=torch.channels_last_3d)
    if batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch.contiguous()


class CompiledNetwork:
    """Calls a network through its compiled package, found or built on the first batch (the
    batch gives the input's shape); the batch dimension is dynamic, from 2 to MAX_BATCH."""

    def __init__(self, network: nn.Module, config_hash: str, directory: Path | None = None,
                 autocast: torch.dtype | None = None) -> None:
        self._network = network
        self._autocast = autocast
        self._config_hash = config_hash
        self._directory = directory or packages_dir()
        self._package = None
        self.path: Path | None = None
        #: whether this process built the package (False: a cached one was loaded)
        self.built = False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        rows = batch.shape[0]
        # one row is given twice: a C3D package gave wrong rows for a batch of one (export
        # specialises size-1 dimensions, so it was built for two rows and more)
        batch = channels_last(batch if rows > 1 else torch.cat([batch, batch]))
        if self._package is None:
            self._package = self._load(batch)
        return self._package(batch)[:rows]

    def _load(self, example: torch.Tensor):  # an AOTInductor model runner
        self.path = package_path(self._config_hash, example, self._directory)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # workers of one host wait for the one building the package instead of building it too
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.path.exists():
                self._build(example)
                self.built = True
        # the network's eager weights are no longer needed: the package holds its own copy
        self._network = None
        device_index = example.device.index if example.device.type == "cuda" else -1
        return torch._inductor.aoti_load_package(str(self.path), device_index=device_index)

    def _build(self, example: torch.Tensor) -> None:
        import torch._inductor.config as inductor_config

        check_compiler()
        batch = torch.export.Dim("batch", min=2, max=MAX_BATCH)
        handle, partial = tempfile.mkstemp(suffix=".pt2", dir=self.path.parent)
        os.close(handle)
        # built with autograd on, as torch's own examples are: built under the caller's
        # inference mode, VGGish's rows came out 4 % off (the batch is an inference tensor,
        # hence the copy)
        try:
            with torch.inference_mode(False), torch.enable_grad(), \
                    torch.autocast(example.device.type, dtype=self._autocast or torch.bfloat16,
                                   enabled=self._autocast is not None), \
                    inductor_config.patch(freezing=True):
                exported = torch.export.export(self._network, (example.clone(),),
                                               dynamic_shapes=({0: batch},))
                torch._inductor.aoti_compile_and_package(exported, package_path=partial)
            os.replace(partial, self.path)  # complete or absent, never half written
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
