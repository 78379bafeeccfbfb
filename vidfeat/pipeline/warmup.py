"""A worker preload (``dask worker --preload vidfeat.pipeline.warmup``; vidfeat's own
clusters add it): the worker imports torch and the extractor contract in a background thread
as soon as it starts, while the driver still prepares the run, so that its first task
(describing the extractors, or extracting) does not wait seconds for them. The model modules
of the run follow when its models load; torchvision, which only some of them use, with them."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


def _import_models() -> None:
    try:
        import vidfeat.extractors.base  # noqa: F401
    except Exception as error:  # the first task that needs them reports it
        log.debug("warm-up import failed: %s", error)


def dask_setup(worker: object) -> None:
    threading.Thread(target=_import_models, name="vidfeat-warmup", daemon=True).start()
