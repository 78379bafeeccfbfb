"""A job file (YAML): what to extract, where to store it, and on which cluster; validated
before anything starts (``vidfeat.jobs.schema``)."""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError
from vidfeat.jobs.schema import BACKENDS, validate
from vidfeat.jobs.spec import ClusterSpec
from vidfeat.media.remote import is_url
from vidfeat.options import RunOptions
from vidfeat.options import options as run_options

#: job file keys that are RunOptions fields of the same name (the ``vidfeat extract`` flags,
#: ``-`` as ``_``)
_RUN_KEYS = tuple(run_options())
#: paths inside a backend's section, relative to the job file like every other path
_BACKEND_PATHS = ("log_directory", "local_directory")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Job:
    """A validated job: ``run`` holds the RunOptions fields it sets (the rest keep their
    defaults), paths are absolute (relative ones are relative to the job file)."""

    origin: str
    sources: list[str]
    store: str
    run: dict[str, Any] = field(default_factory=dict)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    text: str = ""

    def options(self) -> RunOptions:
        known = {f.name for f in fields(RunOptions)}
        options = RunOptions(**{k: v for k, v in self.run.items() if k in known})
        if options.wait_lock == math.inf:  # .inf or a bare --wait-lock; None keeps the report
            options.wait_lock = None       # JSON strict (json writes inf as Infinity)
        options.model_resources = dict(self.cluster.resolved().model_resources)
        return options

    def expanded_sources(self) -> list[str]:
        """Sources with their globs expanded (a glob matching nothing is an error)."""
        expanded = []
        for position, source in enumerate(self.sources):
            if _GLOB_CHARACTERS.isdisjoint(source) or source.startswith("@") or is_url(source):
                expanded.append(source)
                continue
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise ConfigError(f"{self.origin}: sources[{position}]: {source!r} matches "
                                  f"no file")
            expanded += matches
        return expanded

    def with_flags(self, **given: Any) -> Job:
        """This job with the command line's flags applied over it (None: not given).
        ``scheduler`` replaces the backend by that address and keeps the model tasks'
        resources; ``workers`` and ``gpus`` set a local cluster's CPU and GPU worker
        processes."""
        given = {key: value for key, value in given.items() if value is not None}
        job = self
        if "sources" in given:
            job = replace(job, sources=[s if s.startswith("@") or is_url(s)
                                        else str(Path(s).expanduser())
                                        for s in given.pop("sources")])
        if "store" in given:
            job = replace(job, store=given.pop("store"))
        cluster = job.cluster
        scheduler = given.pop("scheduler", None)
        local = {key: given.pop(key) for key in ("workers", "gpus") if key in given}
        if scheduler:
            cluster = replace(cluster.resolved() if cluster.kind != "local" else cluster,
                              kind="address", address=scheduler, settings={})
        elif local:
            cluster = replace(cluster, kind="local", settings={}, **local)
        run = dict(job.run)
        for key in ("weights_files", "extractor_options"):
            if key in given:  # merged: a flag adds to or changes what the file says
                merged = {name: dict(value) if isinstance(value, dict) else value
                          for name, value in run.get(key, {}).items()}
                for name, value in given.pop(key).items():
                    if isinstance(value, dict):
                        merged.setdefault(name, {}).update(value)
                    else:
                        merged[name] = value
                run[key] = merged
        run.update(given)
        return replace(job, run=run, cluster=cluster)


def load_job(path: str | Path) -> Job:
    """Read and validate a job file; ConfigError ``FILE: KEY: expected ..., got ...``."""
    import yaml

    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the job file: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return job_from_document(document, str(path), path.resolve().parent, text)


def job_from_document(document: Any, origin: str, base: Path, text: str = "") -> Job:
    validate(document, origin)
    cluster_section = document.get("cluster") or {}
    in_kubernetes = "kubernetes" in cluster_section

    def absolute(value: str, key: str) -> str:
        expanded = Path(value).expanduser()
        if in_kubernetes and not expanded.is_absolute():
            raise ConfigError(f"{origin}: {key}: expected an absolute path inside the "
                              f"containers (a volume's mount_path), got {value!r}")
        return str(expanded if expanded.is_absolute() else base / expanded)

    sources = document["sources"]
    sources = [sources] if isinstance(sources, str) else sources
    resolved_sources = []
    for position, source in enumerate(sources):
        if is_url(source):  # s3://, gs://, http(s)://: read where it is, on every worker
            resolved_sources.append(source)
        elif source.startswith("@"):
            resolved_sources.append("@" + absolute(source[1:], f"sources[{position}]"))
        else:
            resolved_sources.append(absolute(source, f"sources[{position}]"))

    run: dict[str, Any] = {key: document[key] for key in _RUN_KEYS if key in document}
    features = document["features"]
    if isinstance(features, list):
        run["features"] = list(features)
    else:
        run["features"] = list(features)
        run["extractor_options"] = {name: dict(options) for name, options in features.items()
                                    if options}
    _check_features(run, origin)
    if "weights_dir" in document:
        run["weights_dir"] = absolute(document["weights_dir"], "weights_dir")
    if "weights" in document:
        run["weights_files"] = {name: absolute(file, f"weights.{name}")
                                for name, file in document["weights"].items()}
    return Job(origin, resolved_sources, absolute(document["store"], "store"), run,
               _cluster(cluster_section, origin, absolute), text)


def _check_features(run: dict[str, Any], origin: str) -> None:
    """Extractor names and options checked now (torch-free), so the error names the job
    file's key."""
    from vidfeat.extractors.registry import check_extractor_name, check_options

    for name in run["features"]:
        try:
            check_extractor_name(name)
            check_options(name, run.get("extractor_options", {}).get(name, {}))
        except ConfigError as error:
            raise ConfigError(f"{origin}: features.{name}: {error}") from None


def _cluster(section: dict[str, Any], origin: str, absolute: Any) -> ClusterSpec:
    common: dict[str, Any] = {}
    if "connect_timeout" in section:
        common["connect_timeout"] = float(section["connect_timeout"])
    if "model_resources" in section:
        common["model_resources"] = {k: float(v) for k, v in section["model_resources"].items()}
    kind = next((key for key in BACKENDS if key in section), "local")
    if kind == "local":
        local = section.get("local") or {}
        return ClusterSpec("local", workers=local.get("workers"),
                           threads_per_worker=local.get("threads_per_worker", 1),
                           gpus=local.get("gpus", "auto"), **common)
    if kind == "address":
        return ClusterSpec("address", address=section["address"], **common)
    settings = dict(section[kind])
    for key in _BACKEND_PATHS:
        if key in settings:
            settings[key] = absolute(settings[key], f"cluster.{kind}.{key}")
    return ClusterSpec(kind, workers=None, settings=settings, **common)  # type: ignore[arg-type]
