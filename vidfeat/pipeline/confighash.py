"""Each extractor's configuration hash, remembered in the store so that a run whose answer is
"everything is up to date" imports neither torch nor a model module.

Computing a hash builds the extractor (torch, torchvision), reads its weights file's sha256
and checks the file's keys against the model. The store's ``config-hashes.json`` keeps each
hash under a key made of everything that decides it: the extractor's spec (name, options,
weights file or directory, random weights, precision, compiled), the versions of vidfeat,
torch and torchvision, and the environment variables that move the weights cache. With the
hash it keeps the size and modification time of every file the weights could come from
(``ExtractorSpec.weights_inputs``): any change there, and the hash is computed again. The
workers still verify the weights' sha256 before they load them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from vidfeat import __version__
from vidfeat.extractors.spec import ExtractorSpec
from vidfeat.storage.files import replace_atomically

MEMO_FILE = "config-hashes.json"
#: environment variables that change where weights are looked for
WEIGHTS_ENVIRONMENT = ("VIDFEAT_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "HOME")


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
    """The hashes of a run's extractors: remembered ones where their inputs are unchanged,
    computed (``ExtractorSpec.describe``: torch) for the rest."""

    def __init__(self, store: Path) -> None:
        self.path = Path(store) / MEMO_FILE
        try:
            self.memo: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.memo = {}
        self.changed = False

    def of(self, specs: dict[str, ExtractorSpec]) -> dict[str, str]:
        return {name: self._hash(spec) for name, spec in specs.items()}

    def _hash(self, spec: ExtractorSpec) -> str:
        key = _key(spec)
        known = self.memo.get(key)
        if known is not None and _state([p for p, _ in known["inputs"]]) == known["inputs"]:
            return known["config_hash"]
        extractor = spec.describe()  # validates options and weights; imports torch
        inputs = [str(path) for path in spec.weights_inputs(extractor)]
        self.memo[key] = {"extractor": spec.name, "config_hash": extractor.config_hash(),
                          "inputs": _state(inputs)}
        self.changed = True
        return self.memo[key]["config_hash"]

    def save(self, store: Path) -> None:
        """Remember new hashes in ``store`` (once it exists)."""
        if self.changed:
            replace_atomically(self.path, json.dumps(self.memo, indent=1).encode(), store)
            self.changed = False
