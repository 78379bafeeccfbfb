"""vidfeat: deep video features (ResNet-152, C3D, VGGish, ...) into an HDF5 feature store.

The `vidfeat` command; heavy imports happen inside the commands so `--help` is fast.

Exit codes: 0 success; 1 finished with problems (failed videos, verify found problems, a
selftest missed its reference); 2 bad usage, configuration or weights (nothing was done);
3 the run broke (store unwritable or of an unknown schema, cluster unreachable).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vidfeat import __version__
from vidfeat.errors import ConfigError, StoreError, VidfeatError, WeightsError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_BROKEN = 0, 1, 2, 3


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


def _check_extract_args(args: argparse.Namespace) -> list[str]:
    """Flags that are wrong whatever the videos: refused before the store is created."""
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    if not features:
        raise ConfigError(f"--features names no extractor: {args.features!r}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    return features


def cmd_extract(args: argparse.Namespace) -> int:
    from vidfeat.jobs import ClusterSpec, open_client
    from vidfeat.pipeline.run import RunOptions, execute, prepare_run

    options = RunOptions(
        features=_check_extract_args(args),
        device=args.device,
        weights_dir=str(Path(args.weights_dir).resolve()) if args.weights_dir else None,
        random_weights=args.random_weights,
        weights_files={name: str(Path(path).resolve())
                       for name, path in _pairs(args.weights, "--weights")},
        extractor_options=_extractor_options(args.set), dtype=args.dtype,
        batch_size=args.batch_size, precision=args.precision, decoder=args.decoder,
        segment_seconds=args.segment_seconds, overwrite=args.overwrite, limit=args.limit,
        progress=not args.no_progress,
    )
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    cluster = (ClusterSpec("address", address=args.scheduler) if args.scheduler
               else ClusterSpec("local", workers=args.workers))
    if options.random_weights:
        print("WARNING: --random-weights: seeded random initialisation, NOT pretrained features",
              file=sys.stderr)
    run = prepare_run(args.sources, args.store, options)
    with open_client(cluster) as client:
        report = execute(run, client)
    print(report.summary())
    return report.exit_code


def cmd_inspect(args: argparse.Namespace) -> int:
    from vidfeat.storage.inspect import failures_listing, runs_listing, summarize

    if args.failures or args.runs:
        listings = ([runs_listing(args.store)] if args.runs else []) + (
            [failures_listing(args.store)] if args.failures else [])
        print("\n\n".join(listings))
        return EXIT_OK
    if args.plot:
        from vidfeat.storage.plot import plot_video

        if not args.video_id:
            raise ConfigError("--plot needs a VIDEO_ID")
        print(f"wrote {plot_video(args.store, args.video_id, args.plot)}")
    print(summarize(args.store, args.video_id))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from vidfeat.storage.verify import verify

    problems = verify(args.store, repair=args.repair)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems" if problems else "store OK")
    return EXIT_PROBLEMS if problems else EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from vidfeat.storage.merge import merge

    print(f"wrote {merge(args.store, args.out)}")
    return EXIT_OK


def _labels(path: str | None) -> dict[str, list[int]] | None:
    """VIDEO_ID<TAB or space>ID,ID,... per line."""
    if not path:
        return None
    labels = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            video_id, _, ids = line.strip().partition(" " if "\t" not in line else "\t")
            labels[video_id] = [int(i) for i in ids.replace(",", " ").split()]
    return labels


def cmd_export(args: argparse.Namespace) -> int:
    from vidfeat.storage.export import export_npy, export_paddle

    if args.format == "npy":
        count = export_npy(args.store, args.outdir)
    else:
        count = export_paddle(args.store, args.outdir, labels=_labels(args.labels))
    print(f"exported {count} files to {args.outdir}")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from vidfeat.storage.migrate import migrate

    print(migrate(args.store))
    return EXIT_OK


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
        return EXIT_OK
    if args.action == "fetch":
        for name in args.names:
            print(f"{name}: {weights.fetch(name, weights_dir, args.mirror)}")
        return EXIT_OK
    if args.action == "import":
        if len(args.names) != 2:
            raise ConfigError("usage: vidfeat weights import NAME FILE")
        name, source = args.names
        print(f"{name}: {weights.import_file(name, Path(source), weights_dir)}")
        return EXIT_OK
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
    return EXIT_PROBLEMS if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidfeat", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"vidfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="extract features from videos into a store")
    extract.add_argument("sources", nargs="+", metavar="SOURCE",
                         help="video files, directories (searched recursively) or @list.txt")
    extract.add_argument("--store", required=True, help="store directory (created if missing)")
    extract.add_argument("--features", default="resnet152,c3d,vggish",
                         help="comma-separated extractors (default resnet152,c3d,vggish)")
    extract.add_argument("--workers", type=int, default=2, help="local worker processes")
    extract.add_argument("--scheduler", help="use a running Dask scheduler, tcp://HOST:PORT")
    extract.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    extract.add_argument("--weights-dir", help="look for weights files here before the cache")
    extract.add_argument("--random-weights", action="store_true",
                         help="seeded random init (smoke tests only; recorded in the store)")
    extract.add_argument("--weights", action="append", default=[], metavar="EXTRACTOR=FILE",
                         help="use this weights file for an extractor (repeatable)")
    extract.add_argument("--set", action="append", default=[], metavar="EXTRACTOR.OPTION=VALUE",
                         help="extractor option, e.g. resnet152.fps=2 or c3d.layer=fc7")
    extract.add_argument("--limit", type=int, help="only the first N videos")
    extract.add_argument("--dtype", default="float16", help="stored dtype: float16 or float32")
    extract.add_argument("--batch-size", type=int, default=16, help="model inputs per batch")
    extract.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                         help="model precision (fp32: reference-exact; recorded per feature)")
    extract.add_argument("--decoder", default="pyav", choices=["pyav", "decord", "torchcodec"],
                         help="video decoder backend (default pyav)")
    extract.add_argument("--segment-seconds", type=float,
                         help="media seconds per task; longer videos are split into segments "
                              "of about this length (default: sized by the corpus and workers)")
    extract.add_argument("--overwrite", action="store_true",
                         help="extract again even what the store holds up to date")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")
    extract.set_defaults(run=cmd_extract)

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

    merge = commands.add_parser("merge", help="write the store as one HDF5 file")
    merge.add_argument("store")
    merge.add_argument("out", metavar="OUT.h5")
    merge.set_defaults(run=cmd_merge)

    export = commands.add_parser("export", help="export for other tools (npy, paddle)")
    export.add_argument("store")
    export.add_argument("--format", choices=["npy", "paddle"], required=True)
    export.add_argument("outdir", metavar="OUTDIR")
    export.add_argument("--labels", help="paddle: file of VIDEO_ID LABEL,LABEL,... lines")
    export.set_defaults(run=cmd_export)

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ConfigError, WeightsError) as error:
        print(f"vidfeat: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, VidfeatError, OSError) as error:
        print(f"vidfeat: error: {error}", file=sys.stderr)
        return EXIT_BROKEN
    except KeyError as error:
        print(f"vidfeat: error: {error.args[0] if error.args else error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
