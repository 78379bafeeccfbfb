"""The option rules of each built-in extractor, importable without torch: the driver checks a
run's ``--set`` options and a job file's feature options with them before any worker starts,
and each extractor's constructor applies the same function (one home for each rule).

Each function takes the extractor's keyword options, with the same names and defaults as its
constructor, raises ``ConfigError`` naming the extractor and the option, and returns the
values the extractor keeps. Files an option names (a C3D mean file) are read where the
extractor is built: on a cluster, the workers' paths may not exist on the driver's machine.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError

#: ResNet-152 weights version -> (weights registry name, resize of the shorter side), from
#: torchvision's ResNet152_Weights.IMAGENET1K_V1 / _V2 transforms(); both centre-crop 224
RESNET_VERSIONS = {
    "v1": ("resnet152-imagenet1k-v1", 256),
    "v2": ("resnet152-imagenet1k-v2", 232),
}
C3D_CLIP_LEN = 16
C3D_LAYERS = ("fc6", "fc7")
#: VGGish's example hop in seconds: the reference 0.96 (no overlap), or whole seconds
VGGISH_HOPS = (0.96, 1.0)
#: the shortest clip each torchvision video model takes (S3D_Weights.KINETICS400_V1.meta
#: ["min_temporal_size"]; the others take any)
MIN_CLIP_LEN = {"r2plus1d_18": 1, "r3d_18": 1, "s3d": 14}


def check_compiler() -> None:
    """``--compile``'s AOTInductor builds C++: refuse early, in one line, on a machine without
    a compiler (the driver's before the run, each worker's before a build)."""
    compilers = [os.environ.get("CXX") or "g++", "clang++"]
    if not any(shutil.which(compiler) for compiler in compilers):
        raise ConfigError(f"--compile needs a C++ compiler ({' or '.join(compilers)}) on every "
                          f"worker; {socket.gethostname()} has none (install g++)")


def _positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def resnet152(*, weights_version: str = "v1", fps: float | None = None,
              frames: int | None = None) -> dict[str, Any]:
    if not isinstance(weights_version, str) or weights_version not in RESNET_VERSIONS:
        raise ConfigError(f"resnet152: weights_version must be one of "
                          f"{', '.join(RESNET_VERSIONS)}, got {weights_version!r}")
    if fps is not None and frames is not None:
        raise ConfigError("resnet152: give fps or frames, not both")
    if frames is not None and not _positive_int(frames):
        raise ConfigError(f"resnet152: frames must be a positive integer, got {frames!r}")
    if frames is None:
        fps = 1.0 if fps is None else fps
        if (isinstance(fps, bool) or not isinstance(fps, (int, float))
                or not math.isfinite(fps) or fps <= 0):
            raise ConfigError(f"resnet152: fps must be a positive number, got {fps!r}")
        fps = float(fps)
    return {"weights_version": weights_version, "fps": fps, "frames": frames}


def c3d(*, layer: str | None = None, stride: int = C3D_CLIP_LEN,
        mean_file: str | Path | None = None, pca: bool = False) -> dict[str, Any]:
    if not isinstance(pca, bool):
        raise ConfigError(f"c3d: pca must be True or False, got {pca!r}")
    if layer is None:
        layer = "fc7" if pca else "fc6"
    if layer not in C3D_LAYERS:
        raise ConfigError(f"c3d: layer must be one of {', '.join(C3D_LAYERS)}, got {layer!r}")
    if pca and layer != "fc7":
        raise ConfigError("c3d: the ActivityNet PCA was fitted to fc7 features: "
                          "use layer='fc7' (the default with pca=True)")
    if not _positive_int(stride):
        raise ConfigError(f"c3d: stride must be a positive integer, got {stride!r}")
    return {"layer": layer, "stride": stride, "mean_file": mean_file, "pca": pca}


def vggish(*, hop: float = 0.96, relu: bool = False, postprocess: bool = False,
           pad_short: bool = True) -> dict[str, Any]:
    if isinstance(hop, bool) or not isinstance(hop, (int, float)) or float(hop) not in VGGISH_HOPS:
        raise ConfigError(f"vggish hop must be 0.96 or 1.0 seconds, got {hop!r}")
    for option, value in (("relu", relu), ("postprocess", postprocess),
                          ("pad_short", pad_short)):
        if not isinstance(value, bool):
            raise ConfigError(f"vggish {option} must be true or false, got {value!r}")
    return {"hop": float(hop), "relu": relu, "postprocess": postprocess, "pad_short": pad_short}


def video_model(name: str, *, clip_len: int = 16, stride: int = 16) -> dict[str, Any]:
    """The torchvision video models' rules (r2plus1d_18, r3d_18, s3d)."""
    for option, value in (("clip_len", clip_len), ("stride", stride)):
        if not _positive_int(value):
            raise ConfigError(f"{name}: {option} must be a positive integer, got {value!r}")
    shortest = MIN_CLIP_LEN.get(name, 1)
    if clip_len < shortest:
        raise ConfigError(f"{name} needs clips of at least {shortest} frames, "
                          f"got clip_len={clip_len}")
    return {"clip_len": clip_len, "stride": stride}


#: built-in extractor name -> its rules
BUILTIN_CHECKS: dict[str, Callable[..., dict[str, Any]]] = {
    "resnet152": resnet152,
    "c3d": c3d,
    "vggish": vggish,
    **{name: partial(video_model, name) for name in MIN_CLIP_LEN},
}
