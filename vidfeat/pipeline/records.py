"""The store records a worker builds for one feature: its attributes, and failures with a
one-line reason."""

from __future__ import annotations

from typing import Any

from vidfeat import __version__
from vidfeat.errors import VidfeatError
from vidfeat.extractors._api import Extractor
from vidfeat.storage.schema import FeatureRecord, Status


def feature_attrs(extractor: Extractor, padded: bool = False,
                  decoded_by: tuple[str, str] | None = None) -> dict[str, Any]:
    """The attributes a feature's rows are stored with; ``decoded_by``: a visual feature's
    decoder and the device it decoded on (the CPU backends give the same frames, NVDEC's
    colour conversion does not, so a GPU decode is recorded though not in the config hash)."""
    options = extractor.options()
    attrs = {key: value for key, value in options.items()
             if isinstance(value, (int, float, str, bool))}
    attrs.update(
        model=extractor.name,
        layer=str(options.get("layer", "")),
        weights_sha256=extractor.weights_sha256,
        random_weights=extractor.weights_sha256 == "random",
        precision=extractor.precision,
        compiled=extractor.compiled,
        config=extractor.config(),
        config_hash=extractor.config_hash(),
        padded=padded,
        device=str(extractor.device),
        vidfeat_version=__version__,
    )
    if decoded_by is not None:
        attrs["decoder"], attrs["decode_device"] = decoded_by
    return attrs


def failed_record(extractor: Extractor, reason: str, status: Status = "failed"
                  ) -> FeatureRecord:
    return FeatureRecord(extractor.name, status, reason=reason, attrs=feature_attrs(extractor))


def reason_of(error: BaseException) -> str:
    """One line: our own errors already say what and where; others get their type."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(error, VidfeatError) else f"{type(error).__name__}: {first}"
