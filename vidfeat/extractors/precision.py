"""Model precisions, by name: what the driver checks without importing torch."""

from __future__ import annotations

from typing import Literal

from vidfeat.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
#: fp32: no autocast, the reference-exact default
PRECISION_NAMES: tuple[Precision, ...] = ("fp32", "bf16", "fp16")


def check_precision(precision: object) -> Precision:
    if precision not in PRECISION_NAMES:
        raise ConfigError(f"precision must be one of {', '.join(PRECISION_NAMES)}, "
                          f"got {precision!r}")
    return precision  # type: ignore[return-value]
