"""Feature extractors: one module per model family, a registry, and weights management.

The names below are imported on first use: importing this package (as the driver does, for
``ExtractorSpec`` or the precisions) does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Extractor", "Item", "get_extractor", "list_extractors"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vidfeat.extractors import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'vidfeat.extractors' has no attribute {name!r}")
