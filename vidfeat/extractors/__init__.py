"""Feature extractors: one module per model family, the registry (``registry.py``: which
exist, by name), the contract every extractor follows and the samplers they share
(``base.py``), and weights management (``weights.py``).

The registry is imported at once (no torch); the contract's names on first use, so that
importing this package, as the driver does, does not import torch.
"""

from __future__ import annotations

from typing import Any

from vidfeat.extractors.registry import (
    RUN_OPTION_OVERRIDES,
    check_extractor_name,
    check_options,
    get_extractor,
    list_extractors,
    register_extractor,
)

_BASE = ("ClipSampler", "Extractor", "FeatureNode", "FrameSampler", "Item", "Sampler",
         "resize_per_channel")
__all__ = [*_BASE, "RUN_OPTION_OVERRIDES", "check_extractor_name", "check_options",
           "get_extractor", "list_extractors", "register_extractor"]


def __getattr__(name: str) -> Any:
    if name in _BASE:
        from vidfeat.extractors import base

        return getattr(base, name)
    raise AttributeError(f"module 'vidfeat.extractors' has no attribute {name!r}")
