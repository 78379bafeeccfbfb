"""The job file the cluster tests share: the same extraction on every backend, only the
``cluster:`` section differs (1 fps ResNet-152 and VGGish, random weights)."""

from __future__ import annotations

from pathlib import Path

import yaml

JOB = {
    "features": {"resnet152": {"fps": 1}, "vggish": None},
    "random_weights": True,
    "progress": False,
}


def write_job(path: Path, sources: list[str], store: Path, cluster: dict, **more: object
              ) -> Path:
    path.write_text(yaml.safe_dump({"sources": sources, "store": str(store), **JOB, **more,
                                    "cluster": cluster}, sort_keys=False))
    return path
