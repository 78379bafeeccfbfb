"""What a worker builds: ``ExtractorSpec``, picklable, and importable without torch (the
driver holds specs; building, describing and loading import the model modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidfeat.errors import ConfigError
from vidfeat.extractors.precision import Precision, check_precision

if TYPE_CHECKING:
    import torch

    from vidfeat.extractors.base import Extractor


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
        from vidfeat.extractors.registry import check_option_names, get_extractor

        check_option_names(self.name, self.options)
        try:
            extractor = get_extractor(self.name)(**self.options)
        except TypeError as error:
            raise ConfigError(f"{self.name}: bad option: {error}") from error
        extractor.precision = self.precision
        return extractor

    def _weights_path(self, extractor: Extractor) -> Path:
        """The file the workers will load: the user's, or the registry's in the cache."""
        from vidfeat.extractors.weights import locate

        if self.weights_file:
            path = Path(self.weights_file)
            if not path.is_file():
                raise ConfigError(f"{path}: no such weights file for {self.name}")
            return path
        return locate(extractor.weights_name,
                      Path(self.weights_dir) if self.weights_dir else None)

    def weights_inputs(self, extractor: Extractor) -> list[Path]:
        """The files whose presence, size and age decide which weights the workers load (and
        so ``describe``'s hash): the user's file, or every place ``locate`` looks in."""
        from vidfeat.extractors.weights import candidates

        if self.random_weights:
            return []
        if self.weights_file:
            return [Path(self.weights_file)]
        return candidates(extractor.weights_name,
                          Path(self.weights_dir) if self.weights_dir else None)

    def describe(self) -> Extractor:
        """An unloaded extractor whose ``config_hash()`` is the one the loaded one will have
        (its ``weights_sha256`` computed without loading them). The weights file, the user's
        or a cached one, is checked for the model's keys here, before any worker starts: a
        cached file can be pinned yet not this model's (imported by mistake), and each worker
        would fail every video with it."""
        import torch

        from vidfeat.extractors.weights import (
            check_keys,
            read_state_dict,
            sha256_file,
            spec,
            verify,
        )

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
        from vidfeat.extractors.weights import load_weights

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
