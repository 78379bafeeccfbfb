"""The job file's JSON schema and one-line error messages naming the key (README "Running on
a cluster" documents every key)."""

from __future__ import annotations

from typing import Any

from vidfeat.errors import ConfigError
from vidfeat.options import job_schema

BACKENDS = ("local", "address", "slurm", "pbs", "kubernetes")

_POSITIVE_INT = {"type": "integer", "minimum": 1, "expected": "an integer >= 1"}
_COUNT = {"type": "integer", "minimum": 0, "expected": "an integer >= 0"}
_SECONDS = {"type": "number", "exclusiveMinimum": 0, "expected": "a number of seconds > 0"}
_STRING = {"type": "string", "expected": "a string"}
_STRINGS = {"type": "array", "items": _STRING, "expected": "a list of strings"}
_PATH = {"type": "string", "minLength": 1, "expected": "a path"}
_MEMORY = {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B)$",
           "expected": 'a memory size like "16GB"'}
_WALLTIME = {"type": "string", "pattern": r"^(\d+-)?\d+(:\d\d){0,2}$",
             "expected": 'a string like "02:00:00"'}
#: a Kubernetes object's name (a DNS subdomain: a service account, a Secret)
_OBJECT_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_RESOURCES = {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0,
                                                         "expected": "a positive number"},
              "expected": "a mapping of resource name to amount, like {GPU: 1}"}


def _section(properties: dict[str, Any], required: tuple[str, ...] = (), *,
             nullable: bool = False) -> dict[str, Any]:
    return {"type": ["object", "null"] if nullable else "object", "properties": properties,
            "required": list(required), "additionalProperties": False, "expected": "a mapping"}


_ADAPTIVE = _section({"minimum": _COUNT, "maximum": _POSITIVE_INT}, ("minimum", "maximum"))

_JOBQUEUE = {
    "queue": _STRING, "account": _STRING, "walltime": _WALLTIME, "cores": _POSITIVE_INT,
    "memory": _MEMORY, "processes": _POSITIVE_INT, "gpus_per_job": _COUNT,
    "jobs": _POSITIVE_INT, "adaptive": _ADAPTIVE, "job_name": _STRING,
    "job_extra_directives": _STRINGS, "job_script_prologue": _STRINGS, "python": _PATH,
    "log_directory": _PATH, "local_directory": _PATH, "interface": _STRING,
    "start_timeout": _SECONDS,
}

_VOLUME = _section({
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
             "expected": "a DNS label (lower case letters, digits, '-')"},
    "claim": _STRING, "host_path": _PATH, "mount_path": _PATH,
    "read_only": {"type": "boolean", "expected": "true or false"},
}, ("name", "mount_path"))

_KUBERNETES = _section({
    "image": _STRING,
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
             "expected": "a DNS label (lower case letters, digits, '-')"},
    "namespace": _STRING, "workers": _POSITIVE_INT, "threads_per_worker": _POSITIVE_INT,
    "cpu": {"type": ["string", "number"], "expected": 'a CPU quantity like 4 or "3500m"'},
    "memory": {"type": "string", "pattern": r"^\d+(\.\d+)?([KMGTPE]i?)?$",
               "expected": 'a Kubernetes memory quantity like "16Gi"'},
    "gpus_per_worker": {"type": "integer", "minimum": 0, "maximum": 1,
                        "expected": "0 or 1 (one worker process per GPU)"},
    "image_pull_policy": {"enum": ["Always", "IfNotPresent", "Never"],
                          "expected": "Always, IfNotPresent or Never"},
    "volumes": {"type": "array", "items": _VOLUME, "expected": "a list of volumes"},
    "env": {"type": "object", "additionalProperties": _STRING,
            "expected": "a mapping of variable name to string"},
    "service_account": {"type": "string", "pattern": _OBJECT_NAME,
                        "expected": "a service account name"},
    "secret_env": {"type": "array", "items": {"type": "string", "pattern": _OBJECT_NAME},
                   "expected": "a list of Secret names"},
}, ("image",))

JOB_SCHEMA: dict[str, Any] = _section({
    "sources": {"type": ["string", "array"], "items": _STRING, "minItems": 1,
                "expected": "a path, glob or @list file, or a list of them"},
    "store": _PATH,
    "features": {"type": ["array", "object"], "items": _STRING, "minItems": 1,
                 "minProperties": 1,
                 "additionalProperties": {"type": ["object", "null"],
                                          "expected": "a mapping of option: value"},
                 "expected": "a list of extractor names or a mapping name: {options}"},
    "weights_dir": _PATH,
    "weights": {"type": "object", "additionalProperties": _PATH,
                "expected": "a mapping of extractor name to weights file"},
    **job_schema(),  # every run option: vidfeat.options
    "cluster": _section({
        "local": _section({"workers": _COUNT, "threads_per_worker": _POSITIVE_INT,
                           "gpus": {"type": ["integer", "string"], "minimum": 0,
                                    "pattern": "^auto$",
                                    "expected": 'an integer >= 0 or "auto"'}},
                          nullable=True),
        "address": {"type": "string", "pattern": r"^(tcp|tls|ucx|ws|wss)://\S+:\d+$",
                    "expected": 'a scheduler address like "tcp://host:8786"'},
        "slurm": _section(_JOBQUEUE, ("walltime", "cores", "memory")),
        "pbs": _section(_JOBQUEUE, ("walltime", "cores", "memory")),
        "kubernetes": _KUBERNETES,
        "connect_timeout": _SECONDS,
        "model_resources": _RESOURCES,
    }),
}, ("sources", "store", "features"))


def _key_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _message(error: Any) -> str:
    """One line for a jsonschema ValidationError: the key path, what was expected, what was
    given."""
    path = list(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(instance) - set(allowed))
        if allowed and unknown:
            return (f"{_key_path([*path, unknown[0]])}: unknown key "
                    f"(expected one of: {', '.join(allowed)})")
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in instance]
        return f"{_key_path([*path, missing[0]])}: missing required key"
    if error.validator in ("minItems", "minProperties"):
        return f"{_key_path(path)}: must not be empty"
    expected = error.schema.get("expected")
    if expected is None:
        return f"{_key_path(path)}: {error.message}"
    given = "null" if instance is None else repr(instance)
    return f"{_key_path(path)}: expected {expected}, got {given}"


def validate(document: Any, source: str) -> None:
    """Raise ConfigError ``SOURCE: KEY.PATH: expected ..., got ...`` for the first problem."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (sources, store, features, "
                          f"cluster, ...), got {type(document).__name__}")
    error = best_match(Draft202012Validator(JOB_SCHEMA).iter_errors(document),
                       key=_relevance)
    if error is not None:
        raise ConfigError(f"{source}: {_message(error)}")
    backends = [key for key in BACKENDS if key in document.get("cluster", {})]
    if len(backends) > 1:
        raise ConfigError(f"{source}: cluster: expected one of {', '.join(BACKENDS)}, "
                          f"got {' and '.join(backends)}")
    for kind in ("slurm", "pbs"):
        section = document.get("cluster", {}).get(kind) or {}
        if "jobs" in section and "adaptive" in section:
            raise ConfigError(f"{source}: cluster.{kind}.adaptive: expected either jobs or "
                              f"adaptive, got both")
        adaptive = section.get("adaptive")
        if adaptive and adaptive["minimum"] > adaptive["maximum"]:
            raise ConfigError(f"{source}: cluster.{kind}.adaptive.minimum: expected at most "
                              f"maximum ({adaptive['maximum']}), got {adaptive['minimum']}")
    for index, volume in enumerate(document.get("cluster", {}).get("kubernetes", {})
                                   .get("volumes", [])):
        if ("claim" in volume) == ("host_path" in volume):
            raise ConfigError(f"{source}: cluster.kubernetes.volumes[{index}]: expected "
                              f"exactly one of claim or host_path")


def _relevance(error: Any) -> int:
    # the deepest error names the key the user got wrong, not an enclosing section
    return len(error.absolute_path)
