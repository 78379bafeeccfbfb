"""Every run option, defined once: its default, its type and range or choices, its help, and
the ``vidfeat extract`` flag and job file key it is. The command line's flags
(``add_flags``), the job file's schema (``job_schema``) and the checks (``RunOptions.check``)
are made from these definitions; ``vidfeat.extract`` takes them as keywords.

Importable without torch (the driver's process never imports it).
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from vidfeat.errors import ConfigError
from vidfeat.extractors.precision import PRECISION_NAMES
from vidfeat.host import DEVICE_PATTERN
from vidfeat.media.frames import DECODERS, DEFAULT_DECODER, check_decoder

DEFAULT_FEATURES = ("resnet152", "c3d", "vggish")
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class Option:
    """How one run option is given and checked. ``kind``: int, number, text, flag (a
    boolean that a bare flag sets), or a list of text; ``flag``: its command-line flag ("":
    none; the features and per-extractor options have flags of their own syntax)."""

    help: str
    kind: str
    flag: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    #: the minimum itself is not allowed (a number of seconds > 0)
    above: bool = False
    #: a number may be infinite (.inf in a job file: as long as it takes)
    infinite: bool = False
    #: text: a regular expression the whole value matches, and how to say it
    pattern: str = ""
    pattern_expected: str = ""

    @property
    def expected(self) -> str:
        """What a value must be, in the words of an error message."""
        if self.choices:
            return f"{', '.join(self.choices[:-1])} or {self.choices[-1]}"
        if self.pattern:
            return self.pattern_expected
        if self.kind == "flag":
            return "true or false"
        if self.kind == "list":
            return "a list of file extensions, e.g. [.mp4, .mkv]"
        what = {"int": "an integer", "number": "a number of seconds"}.get(self.kind, "a string")
        if self.minimum is not None:
            what += f" {'>' if self.above else '>='} {self.minimum:g}"
        return what + (" (.inf: as long as it takes)" if self.infinite else "")

    def check(self, name: str, value: Any) -> None:
        if value is None:
            return
        where = self.flag or name
        if (self.choices and value not in self.choices) or (
                self.pattern and not re.fullmatch(self.pattern, str(value))):
            raise ConfigError(f"{where} must be {self.expected}, got {value!r}")
        numeric = self.kind in ("int", "number")
        if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))
                        or (self.kind == "int" and not float(value).is_integer())):
            raise ConfigError(f"{where} must be {self.expected}, got {value!r}")
        if numeric and self.minimum is not None and not (
                value > self.minimum if self.above else value >= self.minimum):
            # "not >" rather than "<=": NaN is out of range too
            raise ConfigError(f"{where} must be {self.expected}, got {value:g}")
        if numeric and math.isinf(value) and not self.infinite:
            raise ConfigError(f"{where} must be {self.expected}, got {value:g}")

    def schema(self) -> dict[str, Any]:
        """This option's entry in the job file's JSON schema."""
        entry: dict[str, Any] = {"expected": self.expected}
        if self.choices:
            return {"enum": list(self.choices), **entry}
        if self.kind == "flag":
            return {"type": "boolean", **entry}
        if self.kind == "list":
            return {"type": "array", "items": {"type": "string", "pattern": r"^\.?[\w.-]+$"},
                    "minItems": 1, **entry}
        if self.kind == "text":
            return {"type": "string", **({"pattern": f"^(?:{self.pattern})$"} if self.pattern
                                         else {}),
                    **entry}
        entry["type"] = "integer" if self.kind == "int" else "number"
        if self.minimum is not None:
            entry["exclusiveMinimum" if self.above else "minimum"] = self.minimum
        return entry


def _option(default: Any = None, **how: Any) -> Any:
    return field(default=default, metadata={"option": Option(**how)})


@dataclass
class RunOptions:
    """What a run extracts and how (the ``vidfeat extract`` flags and the job file's keys)."""

    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    device: str = _option("auto", kind="text", flag="--device", pattern=DEVICE_PATTERN,
                          pattern_expected="auto, cpu, cuda or cuda:N",
                          help="where the models run: auto, cpu, cuda or cuda:N (default auto)")
    weights_dir: str | None = None
    random_weights: bool = _option(False, kind="flag", flag="--random-weights",
                                   help="seeded random init (smoke tests only; recorded in "
                                        "the store)")
    weights_files: dict[str, str] = field(default_factory=dict)
    extractor_options: dict[str, dict] = field(default_factory=dict)
    dtype: str = _option("float16", kind="text", choices=DTYPES, flag="--dtype",
                         help="stored dtype (default float16)")
    batch_size: int | None = _option(kind="int", minimum=1, flag="--batch-size",
                                     help="model inputs per batch (default: each model's own: "
                                          "resnet152 32, c3d and the video models 8, vggish 64)")
    precision: str = _option("fp32", kind="text", choices=PRECISION_NAMES, flag="--precision",
                             help="model precision (fp32: reference-exact; recorded per "
                                  "feature; one feature may differ: --set c3d.precision=bf16)")
    #: models as cached AOTInductor packages (a feature may override: c3d.compile=false)
    compile: bool = _option(False, kind="flag", flag="--compile",
                            help="models compiled ahead of time and cached; the first run "
                                 "on a machine builds them (on the CPUs measured, no faster "
                                 "than the default, or slower: docs/how-a-run-works.md)")
    decoder: str = _option(DEFAULT_DECODER, kind="text", choices=DECODERS, flag="--decoder",
                           help=f"video decoder backend (default {DEFAULT_DECODER})")
    decode_threads: int | None = _option(kind="int", minimum=1, flag="--decode-threads",
                                         help="videos each worker decodes at once (default 1 "
                                              "where the models run on the CPU, a quarter of "
                                              "the worker's cores on a GPU)")
    segment_seconds: float | None = _option(
        kind="number", minimum=0, above=True, flag="--segment-seconds",
        help="media seconds per task; longer videos are split into segments of about this "
             "length (default: sized by the corpus and workers)")
    #: Dask worker resources a model task needs, e.g. {"GPU": 1}: model tasks then run only
    #: on workers declaring them, while probing and stitching run anywhere (the job file's
    #: cluster.model_resources)
    model_resources: dict[str, float] = field(default_factory=dict)
    overwrite: bool = _option(False, kind="flag", flag="--overwrite",
                              help="extract again even what the store holds up to date")
    limit: int | None = _option(kind="int", minimum=1, flag="--limit",
                                help="extract at most N videos: the first N not yet up to date "
                                     "(a rerun does the next N)")
    progress: bool = _option(True, kind="flag", help="a progress bar (--no-progress: none)")
    wait_lock: float | None = _option(0.0, kind="number", minimum=0, infinite=True,
                                      flag="--wait-lock",
                                      help="wait for another run on the store to finish "
                                           "(SECONDS, or without a value as long as it takes) "
                                           "instead of refusing")
    task_timeout: float | None = _option(kind="number", minimum=0, above=True,
                                         flag="--task-timeout",
                                         help="abandon a task running longer (a hung decode): "
                                              "its videos are recorded as failed, its worker "
                                              "restarted, the run goes on")
    retry_failed: bool = _option(False, kind="flag", flag="--retry-failed",
                                 help="extract again only what the store lists as failed "
                                      "(vidfeat inspect STORE --failures)")
    extensions: list[str] | None = _option(kind="list", flag="--extensions",
                                           help="what a directory scan takes for a video "
                                                "(default: the common video extensions, .dv "
                                                ".mxf .m2ts .vob ... included); files named on "
                                                "the command line or in a list are tried "
                                                "whatever theirs")

    def check(self) -> None:
        """ConfigError, in one line naming the flag, for the first option out of its range."""
        if not self.features:
            raise ConfigError("--features names no extractor")
        for name, option in options().items():
            option.check(name, getattr(self, name))
        check_decoder(self.decoder)  # its package imports
        if self.extensions is not None:
            from vidfeat.pipeline.corpus import extension_set

            extension_set(self.extensions)


def options() -> dict[str, Option]:
    """The run options that have a definition here (and so a flag and a job file key of their
    own), by field name."""
    return {f.name: f.metadata["option"] for f in fields(RunOptions) if "option" in f.metadata}


def job_schema() -> dict[str, dict[str, Any]]:
    """The job file's keys for the run options: the field names, with their JSON schema."""
    return {name: option.schema() for name, option in options().items()}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The run options' flags on ``vidfeat extract``, each defaulting to None (not given: the
    job file's value, or the option's default, stands)."""
    for name, option in options().items():
        if not option.flag:
            continue
        if option.kind == "flag":
            parser.add_argument(option.flag, dest=name, action="store_const", const=True,
                                help=option.help)
        elif option.infinite:  # a bare --wait-lock: as long as it takes
            parser.add_argument(option.flag, dest=name, type=float, nargs="?",
                                const=math.inf, metavar="SECONDS", help=option.help)
        elif option.kind == "list":
            parser.add_argument(option.flag, dest=name, metavar=".EXT,...", help=option.help,
                                type=lambda text: [item for item in text.split(",")])
        else:
            metavar = ("{" + ",".join(option.choices) + "}" if option.choices
                       else {"int": "N", "number": "SECONDS"}.get(option.kind))
            parser.add_argument(option.flag, dest=name, help=option.help, metavar=metavar,
                                type={"int": int, "number": float}.get(option.kind, str))
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                        help="no progress bar")


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run options given as flags (None for those that were not)."""
    return {name: getattr(args, name, None) for name in options()}
