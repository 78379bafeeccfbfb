"""vidfeat: deep video features (ResNet-152, C3D, VGGish, ...) into an HDF5 feature store.

The `vidfeat` command; heavy imports happen inside the commands so `--help` is fast.

Exit codes: ``vidfeat.errors.ExitCode``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vidfeat import __version__
from vidfeat.errors import ConfigError, ExitCode, StoreError, VidfeatError, WeightsError
from vidfeat.options import add_flags, given_flags

if TYPE_CHECKING:
    from vidfeat.jobs.jobfile import Job



def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {value!r}")
        pairs.append((key, rest))
    return pairs


def _extractor_options(values: list[str]) -> dict[str, dict]:
    import yaml

    options: dict[str, dict] = {}
    for key, raw in _pairs(values, "--set"):
        extractor, dot, option = key.partition(".")
        if not dot or not option:
            raise ConfigError(f"--set expects EXTRACTOR.OPTION=VALUE, got {key!r}")
        options.setdefault(extractor, {})[option] = yaml.safe_load(raw)
    return options


def _check_extract_args(args: argparse.Namespace) -> list[str] | None:
    """Flags that are wrong whatever the videos: refused before the store is created (the run
    options' ranges: RunOptions.check). The features given (None: not given, the job file's
    or the default ones)."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.features is None:
        return None
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    if not features:
        raise ConfigError(f"--features names no extractor: {args.features!r}")
    return features


def _gpu_count(value: str) -> int | str:
    if value == "auto":
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a number >= 0 or auto, got {value!r}")


def _extract_flags(args: argparse.Namespace) -> dict:
    """The flags given on the command line (None: not given, so a job file's value stands)."""
    return dict(
        sources=args.sources or None, store=args.store, features=_check_extract_args(args),
        workers=args.workers, gpus=args.gpus, scheduler=args.scheduler,
        weights_dir=str(Path(args.weights_dir).resolve()) if args.weights_dir else None,
        weights_files={name: str(Path(path).resolve())
                       for name, path in _pairs(args.weights, "--weights")} or None,
        extractor_options=_extractor_options(args.set) or None,
        **given_flags(args),
    )


def _run_job(job) -> int:  # job: vidfeat.jobs.jobfile.Job, imported lazily
    from vidfeat.jobs.submit import run_job

    options = job.options()
    options.check()  # a bad --task-timeout, --dtype, ... is then the only line printed
    if job.run.get("random_weights"):
        print("WARNING: --random-weights: seeded random initialisation, NOT pretrained features",
              file=sys.stderr)
    for warning in _emulated_precision_warnings(job, options):
        print(warning, file=sys.stderr)
    report = run_job(job)
    print(report.summary())
    return report.exit_code


def _emulated_precision_warnings(job, options, cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """A reduced precision asked of models that run on this machine's CPU, which lacks the
    instructions for it: PyTorch then emulates it, slower than fp32. Checked for the CPU
    workers of a local cluster only (a remote worker's CPU is not this one)."""
    from vidfeat.host import NATIVE_PRECISION_FLAGS, emulated_precision

    cluster = job.cluster.resolved()
    if cluster.kind != "local" or (cluster.gpus and options.device != "cpu"):
        return []
    by_feature = {name: options.extractor_options.get(name, {}).get("precision",
                                                                    options.precision)
                  for name in options.features}
    return [f"WARNING: {name}: precision {precision} on a CPU without {precision} instructions "
            f"({', '.join(NATIVE_PRECISION_FLAGS[precision])}): PyTorch emulates it, slower "
            f"than fp32 (ResNet-152 6.7x slower on an AVX2 CPU); fp32 is the exact default"
            for name, precision in by_feature.items() if emulated_precision(precision, cpuinfo)]


def extract_job(args: argparse.Namespace) -> Job:
    """The job ``vidfeat extract`` runs: the job file's or the command line's, flags over it."""
    from vidfeat.jobs.jobfile import Job, load_job
    from vidfeat.jobs.spec import ClusterSpec

    if args.config:
        job = load_job(args.config)
    elif not args.sources or not args.store:
        raise ConfigError("extract needs SOURCE... and --store, or --config JOB.yaml")
    else:
        # one worker process per GPU unless the models must stay on the CPU; without a GPU
        # this is the 2 CPU worker processes it always was
        job = Job("command line", [], "", cluster=ClusterSpec(
            workers=None, gpus=0 if args.device == "cpu" else "auto"))
    return job.with_flags(**_extract_flags(args))


def cmd_extract(args: argparse.Namespace) -> int:
    # the run options' ranges (--task-timeout, --wait-lock, ...) are checked by
    # RunOptions.check before the store is created, for flags and job files alike
    return _run_job(extract_job(args))


def cmd_submit(args: argparse.Namespace) -> int:
    from vidfeat.jobs.jobfile import load_job
    from vidfeat.jobs.submit import dry_run, submit_to_kubernetes

    job = load_job(args.job).with_flags(scheduler=args.scheduler)
    if args.dry_run:
        print(dry_run(job))
        return ExitCode.OK
    if job.cluster.kind == "kubernetes":
        for created in submit_to_kubernetes(job):
            print(f"created {created}")
        return ExitCode.OK
    return _run_job(job)


def cmd_inspect(args: argparse.Namespace) -> int:
    from vidfeat.storage.inspect import failures_listing, runs_listing, summarize

    if args.failures or args.runs:
        if args.video_id:
            raise ConfigError("--failures and --runs list the whole store: give no VIDEO_ID")
        failures = failures_listing(args.store) if args.failures else ""
        listings = ([runs_listing(args.store)] if args.runs else []) + (
            [failures] if failures else [])
        if listings:
            print("\n\n".join(listings))
        if args.failures and not failures:  # on stderr: `inspect --failures | wc -l` says 0
            print("no failures", file=sys.stderr)
        return ExitCode.OK
    if args.plot:
        from vidfeat.storage.plot import plot_video

        if not args.video_id:
            raise ConfigError("--plot needs a VIDEO_ID")
        print(f"wrote {plot_video(args.store, args.video_id, args.plot)}")
    print(summarize(args.store, args.video_id))
    return ExitCode.OK


def cmd_verify(args: argparse.Namespace) -> int:
    from vidfeat.storage.verify import verify

    problems = verify(args.store, repair=args.repair)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems" if problems else "store OK")
    return ExitCode.PROBLEMS if problems else ExitCode.OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of at least 1, got {text!r}")
    return value


def cmd_merge(args: argparse.Namespace) -> int:
    from vidfeat.storage.merge import merge, part_paths

    merge(args.store, args.out, parts=args.parts)
    for path in part_paths(args.out, args.parts):
        print(f"wrote {path}")
    return ExitCode.OK


def cmd_export(args: argparse.Namespace) -> int:
    from vidfeat.storage.export import (
        export_hdf5,
        export_npy,
        export_paddle,
        export_per_video,
        read_labels,
    )

    features = [f.strip() for f in args.feature.split(",") if f.strip()] if args.feature else None
    if args.layout == "per-video" and args.format != "npy":
        raise ConfigError("--layout per-video is for --format npy")
    if args.dataset_name and args.format != "hdf5":
        raise ConfigError("--dataset-name is for --format hdf5")
    if not features and (args.format == "hdf5" or args.layout == "per-video"):
        raise ConfigError("--format hdf5 and --layout per-video need --feature, e.g. c3d")
    if args.format == "hdf5":
        count = export_hdf5(args.store, args.outdir, features, dataset_name=args.dataset_name)
    elif args.layout == "per-video":
        count = export_per_video(args.store, args.outdir, features)
    elif args.format == "npy":
        count = export_npy(args.store, args.outdir, features=features)
    else:
        image_audio = dict(zip(("image", "audio"), features or [], strict=False))
        labels = read_labels(args.labels) if args.labels else None
        count = export_paddle(args.store, args.outdir, labels=labels, **image_audio)
    print(f"exported {count} {'videos' if args.format == 'hdf5' else 'files'} to {args.outdir}")
    return ExitCode.OK


def _train_options(args: argparse.Namespace):  # -> TrainOptions, imported lazily
    from vidfeat.datasets.trainers import TrainOptions

    return TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        device=args.device, seed=args.seed, val_fraction=args.val_fraction,
                        workers=args.loader_workers, progress=not args.no_progress)


def cmd_train(args: argparse.Namespace) -> int:
    import json

    import yaml

    from vidfeat.datasets.trainers import CHECKPOINT, train

    settings = {key: yaml.safe_load(raw) for key, raw in _pairs(args.set, "--set")}
    try:
        metrics = train(args.task, args.store, args.annotations, args.out,
                        val_annotations=args.val_annotations, classes=args.classes,
                        options=_train_options(args), settings=settings)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    print(json.dumps(metrics, indent=2))
    print(f"wrote {Path(args.out) / CHECKPOINT}, metrics.json and curves.png")
    return ExitCode.OK


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from vidfeat.datasets.trainers import evaluate

    try:
        metrics = evaluate(args.checkpoint, args.store, args.annotations, args.split,
                           _train_options(args))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    text = json.dumps(metrics, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return ExitCode.OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from vidfeat.storage.migrate import migrate

    print(migrate(args.store))
    return ExitCode.OK


def cmd_weights(args: argparse.Namespace) -> int:
    from vidfeat.extractors import weights

    weights_dir = Path(args.weights_dir) if args.weights_dir else None
    if args.action == "list":
        print(f"cache: {weights.home()}")
        for name, spec in weights.REGISTRY.items():
            state, path = weights.status(name, weights_dir)
            expected = spec.sha256 or "pinned on fetch/import"
            print(f"{name:26} {spec.extractor or '(aux)':12} {state:9} sha256 {expected:10} "
                  f"{path or spec.url}")
            print(f"{'':26} licence: {spec.licence}")
        return ExitCode.OK
    if args.action == "fetch":
        for name in args.names:
            print(f"{name}: {weights.fetch(name, weights_dir, args.mirror)}")
        return ExitCode.OK
    if args.action == "import":
        if len(args.names) != 2:
            raise ConfigError("usage: vidfeat weights import NAME FILE")
        name, source = args.names
        print(f"{name}: {weights.import_file(name, Path(source), weights_dir)}")
        return ExitCode.OK
    return _selftest(weights_dir)


def _selftest(weights_dir: Path | None) -> int:
    from vidfeat.extractors import weights
    from vidfeat.extractors.vggish import VGGish, smoke_test

    failed = 0
    for name, spec in weights.REGISTRY.items():
        if spec.extractor != "vggish":
            if spec.extractor:
                print(f"{name}: no published smoke test; `weights list` checks its hash")
            continue
        state, _ = weights.status(name, weights_dir)
        if state != "verified":
            print(f"{name}: {state}, smoke test skipped")
            continue
        extractor = VGGish(postprocess=weights.status("vggish-pca-audioset", weights_dir)[0]
                           == "verified")
        extractor.load(weights.load_weights("vggish", name, weights_dir=weights_dir))
        result = smoke_test(extractor)
        failed += not result["passed"]
        print(f"{name}: {'PASSED' if result['passed'] else 'FAILED'} {result}")
    return ExitCode.PROBLEMS if failed else ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidfeat", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"vidfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="extract features from videos into a store")
    # defaults None: a flag not given leaves the job file's value (--config) or the default
    extract.add_argument("sources", nargs="*", metavar="SOURCE",
                         help="video files, directories (searched recursively) or @list.txt")
    extract.add_argument("--config", metavar="JOB.yaml",
                         help="a job file (see vidfeat submit); flags given override it")
    extract.add_argument("--store", help="store directory (created if missing)")
    extract.add_argument("--features",
                         help="comma-separated extractors (default resnet152,c3d,vggish)")
    extract.add_argument("--workers", type=int,
                         help="local CPU worker processes (default 2; 0 beside GPU workers)")
    extract.add_argument("--gpus", type=_gpu_count, metavar="N|auto",
                         help="GPU worker processes, one per GPU (default auto: as many as "
                              "torch sees, unless --device cpu); --workers then counts the CPU "
                              "worker processes beside them (default 0 with GPUs, else 2)")
    extract.add_argument("--scheduler", help="use a running Dask scheduler, tcp://HOST:PORT")
    extract.add_argument("--weights-dir", help="look for weights files here before the cache")
    extract.add_argument("--weights", action="append", default=[], metavar="EXTRACTOR=FILE",
                         help="use this weights file for an extractor (repeatable)")
    extract.add_argument("--set", action="append", default=[], metavar="EXTRACTOR.OPTION=VALUE",
                         help="extractor option, e.g. resnet152.fps=2 or c3d.layer=fc7")
    add_flags(extract)  # every run option: vidfeat.options
    extract.set_defaults(run=cmd_extract)

    submit = commands.add_parser("submit", help="run a job file on its cluster (local, a "
                                                "scheduler, Slurm, PBS, Kubernetes)")
    submit.add_argument("job", metavar="JOB.yaml")
    submit.add_argument("--dry-run", action="store_true",
                        help="print the plan and the job script / manifests; start nothing")
    submit.add_argument("--scheduler", help="run on this Dask scheduler instead of the job "
                                            "file's cluster, tcp://HOST:PORT")
    submit.set_defaults(run=cmd_submit)

    inspect = commands.add_parser("inspect", help="summarise a store or one video")
    inspect.add_argument("store")
    inspect.add_argument("video_id", nargs="?")
    inspect.add_argument("--plot", metavar="OUT.png", help="self-similarity plot of VIDEO_ID")
    inspect.add_argument("--failures", action="store_true",
                         help="every failed video and feature with its reason (tab-separated)")
    inspect.add_argument("--runs", action="store_true", help="one line per recorded run")
    inspect.set_defaults(run=cmd_inspect)

    verify = commands.add_parser("verify", help="check every shard and index row (exit 0/1)")
    verify.add_argument("store")
    verify.add_argument("--repair", action="store_true", help="rebuild the index from shards")
    verify.set_defaults(run=cmd_verify)

    merge = commands.add_parser("merge", help="write the store as one HDF5 file (or K)")
    merge.add_argument("store")
    merge.add_argument("out", metavar="OUT.h5")
    merge.add_argument("--parts", type=_positive_int, default=1, metavar="K",
                       help="K self-contained files OUT-0000k-of-0000K.h5, each video in one "
                            "(by a hash of its id)")
    merge.set_defaults(run=cmd_merge)

    export = commands.add_parser("export", help="export for other tools (npy, paddle, hdf5)")
    export.add_argument("store")
    export.add_argument("--format", choices=["npy", "paddle", "hdf5"], required=True)
    export.add_argument("outdir", metavar="OUTDIR", help="a directory (hdf5: the OUT.hdf5 file)")
    export.add_argument("--labels", metavar="FILE",
                        help="paddle: MultimodalVideoTag's label file (video<TAB>title<TAB>"
                             "label,label lines) or VIDEO_ID ID,ID,... lines (integer ids)")
    export.add_argument("--layout", choices=["video-features", "per-video"],
                        default="video-features",
                        help="npy: OUT/<feature>/<id>_<feature>.npy (video_features) or "
                             "OUT/<id>.npy (video-caption.pytorch)")
    export.add_argument("--feature", help="comma list of features; several are concatenated "
                                          "onto the first one's rows (hdf5, per-video); paddle: "
                                          "IMAGE,AUDIO")
    export.add_argument("--dataset-name", help="hdf5: f[video_id][NAME] instead of f[video_id] "
                                               "(2D-TAN ActivityNet: c3d_features)")
    export.set_defaults(run=cmd_export)

    def training_flags(command: argparse.ArgumentParser) -> None:
        command.add_argument("--store", required=True, help="store directory or merged file")
        command.add_argument("--annotations", required=True, help="annotation file")
        command.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        command.add_argument("--batch-size", type=int, default=16)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--loader-workers", type=int, default=0,
                             help="DataLoader worker processes")
        command.add_argument("--no-progress", action="store_true", help="no progress bars")

    train = commands.add_parser("train", help="train a reference model on the store")
    train.add_argument("task", choices=["captioning", "grounding", "tagging"])
    training_flags(train)
    train.add_argument("--out", required=True, help="directory for checkpoint, metrics, curves")
    train.add_argument("--val-annotations", help="validation annotations (default: the "
                                                 "file's own split, else a seeded split)")
    train.add_argument("--classes", help="tagging: class list, one per line")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--lr", type=float, help="learning rate (default: the published one)")
    train.add_argument("--val-fraction", type=float, default=0.2,
                       help="videos held out when there is no validation split")
    train.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                       help="model/dataset setting, e.g. hidden=256, frames=40, fuse=[c3d]")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("eval", help="score a trained checkpoint")
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT")
    training_flags(evaluate)
    evaluate.add_argument("--split", choices=["val", "train", "all"], default="val",
                          help="the checkpoint's validation or training videos, or all")
    evaluate.add_argument("--out", help="also write the metrics JSON here")
    evaluate.set_defaults(run=cmd_eval, epochs=0, lr=None, val_fraction=0.2)

    migrate = commands.add_parser("migrate", help="upgrade a store to the current schema")
    migrate.add_argument("store")
    migrate.set_defaults(run=cmd_migrate)

    weights = commands.add_parser("weights", help="list, fetch, import or selftest weights")
    weights.add_argument("action", choices=["list", "fetch", "import", "selftest"])
    weights.add_argument("names", nargs="*", metavar="NAME [FILE]")
    weights.add_argument("--weights-dir", help="a directory to use instead of the cache")
    weights.add_argument("--mirror", help="fetch: base URL to download FILE names from")
    weights.set_defaults(run=cmd_weights)
    return parser


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``| head``): Linux reports POLLERR
    on such a pipe's write end. A BrokenPipeError from anything else (a socket to a Dask
    worker) is a broken run and must not pass silently."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout is no file (captured)
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again
    on the closed pipe ("Exception ignored ... BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.run(args)
        sys.stdout.flush()  # output still buffered fails here, where it is caught, not at exit
        return code
    except BrokenPipeError as error:
        # not SIG_DFL for SIGPIPE: that would kill the driver on a socket to a dead worker
        if not _stdout_reader_gone():
            print(f"vidfeat: error: {error}", file=sys.stderr)
            return ExitCode.BROKEN
        _quiet_stdout()
        return ExitCode.BROKEN_PIPE
    except (ConfigError, WeightsError) as error:
        print(f"vidfeat: error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    except (StoreError, VidfeatError, OSError) as error:
        print(f"vidfeat: error: {error}", file=sys.stderr)
        return ExitCode.BROKEN
    except KeyError as error:
        print(f"vidfeat: error: {error.args[0] if error.args else error}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("vidfeat: stopped at once; rerun the same command to resume",
              file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:  # a broken run is one line and exit 3; -v shows where
        if args.verbose:
            logging.exception("unexpected error")
        text = str(error).strip().splitlines()
        print(f"vidfeat: error: {type(error).__name__}: {text[0] if text else ''}".rstrip(": "),
              file=sys.stderr)
        return ExitCode.BROKEN


def console() -> None:
    """The ``vidfeat`` program: ``main``, then an exit that skips the interpreter's teardown
    of torch (measured: 1-1.5 s after the last atexit handler, for a process whose work is
    done: shards renamed, index committed, report written). Output is flushed first."""
    code = main()
    # the outcome is decided and reported: a Ctrl-C from now on (a second one, sent just as
    # the run ended) must not turn the exit code into death by SIGINT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
