"""Which extractors exist, by name, importable without torch: the built-in ones are found in
``BUILTIN`` and their module imported only when one is asked for (so a worker imports only the
model modules its run uses, and the driver none); ``register_extractor`` adds one of your own.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from vidfeat.errors import ConfigError
from vidfeat.extractors.checks import BUILTIN_CHECKS

if TYPE_CHECKING:
    from vidfeat.extractors.base import Extractor

#: name -> "module:class" of every built-in extractor
BUILTIN = {
    "resnet152": "vidfeat.extractors.resnet:ResNet152Extractor",
    "c3d": "vidfeat.extractors.c3d:C3DExtractor",
    "vggish": "vidfeat.extractors.vggish:VGGish",
    "r2plus1d_18": "vidfeat.extractors.video_models:R2Plus1D18Extractor",
    "r3d_18": "vidfeat.extractors.video_models:R3D18Extractor",
    "s3d": "vidfeat.extractors.video_models:S3DExtractor",
}
#: run options one feature may override (``--set c3d.precision=bf16``): taken out of its options
#: before the extractor is built, yet valid extractor options
RUN_OPTION_OVERRIDES = ("precision", "compile")

_REGISTERED: dict[str, type[Extractor]] = {}


def register_extractor(cls: type[Extractor]) -> type[Extractor]:
    """Class decorator for an extractor of your own (import its module on the workers too);
    refuses a name already taken."""
    if cls.name in BUILTIN or cls.name in _REGISTERED:
        raise ValueError(f"extractor {cls.name!r} is already registered")
    _REGISTERED[cls.name] = cls
    return cls


def list_extractors() -> list[str]:
    return sorted({*BUILTIN, *_REGISTERED})


def check_extractor_name(name: str) -> None:
    """ConfigError naming the known extractors (imports none of them)."""
    if name not in BUILTIN and name not in _REGISTERED:
        raise ConfigError(f"unknown extractor {name!r}; known: {', '.join(list_extractors())}")


def get_extractor(name: str) -> type[Extractor]:
    check_extractor_name(name)
    if name in _REGISTERED:
        return _REGISTERED[name]
    module, _, attribute = BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def check_option_names(name: str, options: Mapping[str, Any]) -> None:
    """ConfigError naming the extractor, each option it does not take and those it does (the
    constructor's TypeError names its class and no valid option)."""
    parameters = inspect.signature(_rules(name) or get_extractor(name).__init__).parameters
    valid = [p.name for p in parameters.values() if p.name != "self"
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)] + list(RUN_OPTION_OVERRIDES)
    unknown = [option for option in options if option not in valid]
    if unknown:
        raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))} for extractor {name}; "
                          f"valid options: {', '.join(valid)}")


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """``check_option_names``, then the values: a built-in extractor's by its torch-free
    rules (``checks.py``, what the driver uses), one registered with ``register_extractor``
    (already imported) by building it."""
    check_option_names(name, options)
    values = {key: value for key, value in options.items() if key not in RUN_OPTION_OVERRIDES}
    rules = _rules(name)
    try:
        if rules is not None:
            rules(**values)
        else:
            get_extractor(name)(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: bad option: {error}") from error


def _rules(name: str) -> Callable[..., dict[str, Any]] | None:
    return BUILTIN_CHECKS.get(name) if name not in _REGISTERED else None
