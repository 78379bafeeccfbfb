"""Each extractor's description (its configuration hash, modality and clip geometry),
remembered in the store so that the driver never imports torch or a model module.

Describing builds the extractor (torch, torchvision), reads its weights file's sha256 and
checks the file's keys against the model: ``describe_specs``, which a run calls on one of its
workers (they import torch anyway) and a dry run in its own process. The store's
``config-hashes.json`` keeps each description under a key made of everything that decides
it: the extractor's spec (name, options, weights file or directory, random weights,
precision, compiled), the versions of vidfeat, torch and torchvision, and the environment
variables that move the weights cache. With it the memo keeps the size and modification
time of every file the weights could come from (``ExtractorSpec.weights_inputs``): any
change there, and the extractor is described again. The workers still verify the
weights' sha256 before they load them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from vidfeat import __version__
from vidfeat.extractors.spec import ExtractorSpec
from vidfeat.storage.files import replace_atomically

MEMO_FILE = "config-hashes.json"
#: environment variables that change where weights are looked for
WEIGHTS_ENVIRONMENT = ("VIDFEAT_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "HOME")


@dataclass(frozen=True)
class Description:
    """What the driver needs to know of an extractor, without torch."""

    config_hash: str
    modality: Literal["frames", "clips", "audio"]
    #: a clip extractor's (stride, clip_len) in frames: where a long video may be split
    clip: tuple[int, int] | None = None
    #: the files whose presence, size and age decide which weights the workers load
    weights_inputs: tuple[str, ...] = ()


Describe = Callable[[dict[str, ExtractorSpec]], dict[str, Description]]


def describe_specs(specs: dict[str, ExtractorSpec]) -> dict[str, Description]:
    """Each spec described: options validated, weights located and checked (imports torch and
    the model modules; ConfigError for what the user must fix)."""
    descriptions = {}
    for name, spec in specs.items():
        extractor = spec.describe()
        options = extractor.options()
        clip = ((int(options["stride"]), int(options["clip_len"]))
                if "stride" in options and "clip_len" in options else None)
        descriptions[name] = Description(
            extractor.config_hash(), extractor.modality, clip,
            tuple(str(path) for path in spec.weights_inputs(extractor)))
    return descriptions


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _key(spec: ExtractorSpec) -> str:
    described = {"spec": dataclasses.asdict(spec), "vidfeat": __version__,
                 "torch": _version("torch"), "torchvision": _version("torchvision"),
                 "environment": {name: os.environ.get(name) for name in WEIGHTS_ENVIRONMENT}}
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _state(paths: list[str]) -> list[list[Any]]:
    """Each path with its size and modification time (None: absent)."""
    state = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            state.append([path, None])
        else:
            state.append([path, [stat.st_size, stat.st_mtime_ns]])
    return state


class ConfigHashes:
    """The descriptions of a run's extractors: remembered ones where their inputs are
    unchanged, described (``describe``, which imports torch wherever it runs) for the rest."""

    def __init__(self, store: Path) -> None:
        self.path = Path(store) / MEMO_FILE
        try:
            self.memo: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.memo = {}
        self.changed = False

    def of(self, specs: dict[str, ExtractorSpec], describe: Describe = describe_specs
           ) -> dict[str, Description]:
        known = {name: self._remembered(spec) for name, spec in specs.items()}
        missing = {name: specs[name] for name, description in known.items()
                   if description is None}
        if missing:
            for name, description in describe(missing).items():
                self.memo[_key(specs[name])] = {
                    "extractor": name, "config_hash": description.config_hash,
                    "modality": description.modality, "clip": description.clip,
                    "inputs": _state(list(description.weights_inputs))}
                known[name] = description
            self.changed = True
        return known  # type: ignore[return-value]

    def _remembered(self, spec: ExtractorSpec) -> Description | None:
        known = self.memo.get(_key(spec))
        if (known is None or "modality" not in known  # remembered before descriptions
                or _state([p for p, _ in known["inputs"]]) != known["inputs"]):
            return None
        clip = tuple(known["clip"]) if known["clip"] else None
        return Description(known["config_hash"], known["modality"], clip,  # type: ignore[arg-type]
                           tuple(p for p, _ in known["inputs"]))

    def save(self, store: Path) -> None:
        """Remember new descriptions in ``store`` (once it exists)."""
        if self.changed:
            replace_atomically(self.path, json.dumps(self.memo, indent=1).encode(), store)
            self.changed = False
