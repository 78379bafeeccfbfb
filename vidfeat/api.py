"""``vidfeat.extract``: a whole run from Python, as ``vidfeat extract`` does it from a shell."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidfeat.errors import ConfigError

if TYPE_CHECKING:
    from vidfeat.jobs.spec import ClusterSpec
    from vidfeat.pipeline.prepare import RunReport

DEFAULT_FEATURES = ("resnet152", "c3d", "vggish")


def extract(sources: str | Path | Sequence[str | Path], store: str | Path, *,
            features: Sequence[str] | Mapping[str, Mapping[str, Any] | None] = DEFAULT_FEATURES,
            cluster: Any = None, **options: Any) -> RunReport:
    """Extract ``features`` from the videos ``sources`` name into the store directory
    ``store``, and return the run's report (``report.exit_code``, ``report.failed``,
    ``report.summary()``). What is up to date in the store is not extracted again.

    ``sources``: video files, directories (searched recursively) and ``@list.txt`` files, as
    on the command line. ``features``: extractor names, or a mapping of name to its options
    (``{"resnet152": {"fps": 2}, "vggish": None}``). ``cluster``: None for a cluster of
    worker processes on this machine (``workers=N`` and ``gpus=N`` size it, as the flags
    do), a scheduler address ``"tcp://host:8786"``, a ``distributed.Client`` already
    connected, or a ``vidfeat.jobs.ClusterSpec``. ``options``: the run options, named
    as the job file's keys (``random_weights``, ``device``, ``dtype``, ``batch_size``,
    ``precision``, ``decoder``, ``overwrite``, ``limit``, ``task_timeout``, ...; see
    ``vidfeat.options.RunOptions``).

    Bad options raise ``vidfeat.errors.ConfigError`` before anything starts; failed videos do
    not raise: they are in the report and the store, each with its reason.

    Example::

        import vidfeat

        report = vidfeat.extract(["videos/"], "features", features=["resnet152"], workers=2)
        print(report.summary())
        store = vidfeat.open_store("features")
        rows = store.get(store.videos()[0], "resnet152")   # [N, 2048]
    """
    from vidfeat.jobs.spec import ClusterSpec
    from vidfeat.jobs.submit import run_extract
    from vidfeat.options import RunOptions

    local = {key: options.pop(key) for key in ("workers", "gpus") if key in options}
    names = list(features)
    extractor_options = ({name: dict(settings) for name, settings in features.items()
                          if settings} if isinstance(features, Mapping) else {})
    known = {f.name for f in dataclasses.fields(RunOptions)} - {"features",
                                                                 "extractor_options"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"vidfeat.extract: unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)}; valid: workers, gpus, "
                          f"{', '.join(sorted(known))}")
    run_options = RunOptions(features=names, extractor_options=extractor_options, **options)
    source_list = ([str(sources)] if isinstance(sources, (str, Path))
                   else [str(source) for source in sources])
    configuration = {"api": "vidfeat.extract", "options": vars(run_options)}
    if cluster is not None and not isinstance(cluster, (str, ClusterSpec)):
        # a connected distributed.Client: the run uses it and leaves it open
        from vidfeat.pipeline.run import run_extraction

        return run_extraction(source_list, store, run_options,
                              partial(contextlib.nullcontext, cluster),
                              configuration=configuration)
    return run_extract(source_list, store, run_options, _cluster_spec(cluster, local),
                       configuration=configuration)


def _cluster_spec(cluster: str | ClusterSpec | None, local: dict[str, Any]) -> ClusterSpec:
    from vidfeat.jobs.spec import ClusterSpec

    if isinstance(cluster, ClusterSpec):
        if local:
            raise ConfigError("vidfeat.extract: workers and gpus size a local cluster; give "
                              "them in the ClusterSpec instead")
        return cluster
    if isinstance(cluster, str):
        if local:
            raise ConfigError("vidfeat.extract: workers and gpus size a local cluster, not "
                              f"the scheduler at {cluster}")
        return ClusterSpec("address", address=cluster)
    return ClusterSpec(workers=local.get("workers"), gpus=local.get("gpus", "auto"))
