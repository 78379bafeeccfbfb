"""``vidfeat.extract``: a run from Python, on its own local cluster or on a user's client."""

from __future__ import annotations

from pathlib import Path

import pytest

import vidfeat
from vidfeat.errors import ConfigError, ExitCode


@pytest.mark.slow  # a whole extraction
def test_extract_runs_and_reruns_from_python(corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = vidfeat.extract(corpus / "talk.mp4", store, features={"resnet152": {"fps": 2}},
                             random_weights=True, workers=1, progress=False)
    assert report.exit_code == ExitCode.OK and report.extracted == 1, report.summary()
    features = vidfeat.open_store(str(store))
    assert features.get("talk", "resnet152").shape == (5, 2048)  # 2.5 s at 2 fps
    again = vidfeat.extract([str(corpus / "talk.mp4")], store,
                            features={"resnet152": {"fps": 2}}, random_weights=True,
                            progress=False)
    assert again.up_to_date == 1 and again.exit_code == 0


@pytest.mark.slow  # a whole extraction
def test_extract_uses_a_connected_client_and_leaves_it_open(corpus: Path,
                                                            tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        report = vidfeat.extract([corpus / "talk.mp4", corpus / "silent.mp4"],
                                 tmp_path / "store", features=["vggish"], cluster=client,
                                 random_weights=True, progress=False)
        assert client.status == "running"
    assert report.exit_code == ExitCode.OK, report.summary()
    assert [o.status for o in report.outcomes if o.video_id == "silent"] == ["skipped"]
    assert vidfeat.open_store(str(tmp_path / "store")).get("talk", "vggish").shape[1] == 128


def test_extract_refuses_unknown_options_before_anything_starts(corpus: Path,
                                                                tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option batchsize; valid: workers, gpus, "):
        vidfeat.extract(corpus, tmp_path / "store", batchsize=4)
    with pytest.raises(ConfigError, match="--batch-size must be an integer >= 1, got 0"):
        vidfeat.extract(corpus, tmp_path / "store", batch_size=0, random_weights=True)
    assert not (tmp_path / "store").exists()


def test_the_extractor_registry_names_every_builtin_without_importing_torch() -> None:
    import subprocess
    import sys

    check = ("import sys; from vidfeat.extractors import list_extractors, check_extractor_name; "
             "names = list_extractors(); [check_extractor_name(n) for n in names]; "
             "print(names, [m for m in sys.modules if m.split('.')[0] == 'torch'])")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ("['c3d', 'r2plus1d_18', 'r3d_18', 'resnet152', 's3d', 'vggish'] "
                           "[]")
    from vidfeat.extractors import Extractor, get_extractor, list_extractors

    for name in list_extractors():
        extractor = get_extractor(name)
        assert issubclass(extractor, Extractor) and extractor.name == name
    with pytest.raises(ConfigError, match="unknown extractor 'resnet'; known: c3d, "):
        get_extractor("resnet")


def test_each_run_option_is_one_flag_one_job_key_and_one_check(tmp_path: Path) -> None:
    """The flags, the job file's keys and the checks are made from vidfeat.options: a value
    out of range is refused the same way whichever way it comes."""
    from vidfeat.cli import build_parser
    from vidfeat.jobs.jobfile import job_from_document
    from vidfeat.jobs.schema import JOB_SCHEMA
    from vidfeat.options import RunOptions, options

    extract_help = build_parser()._subparsers._group_actions[0].choices["extract"].format_help()
    for name, option in options().items():
        assert option.flag in extract_help or name == "progress", name
        assert name in JOB_SCHEMA["properties"], name
    document = {"sources": [str(tmp_path)], "store": str(tmp_path / "s"),
                "features": ["vggish"], "batch_size": 3, "task_timeout": 5.5,
                "decoder": "pyav", "extensions": [".dv"], "retry_failed": True}
    job = job_from_document(document, "job.yaml", tmp_path)
    options_of_job = job.options()
    assert isinstance(options_of_job, RunOptions)
    assert (options_of_job.batch_size, options_of_job.task_timeout, options_of_job.extensions,
            options_of_job.retry_failed) == (3, 5.5, [".dv"], True)
    for bad, flag, key in [({"batch_size": 0}, "--batch-size", "batch_size"),
                           ({"task_timeout": 0}, "--task-timeout", "task_timeout")]:
        with pytest.raises(ConfigError, match=f"^{flag} must be "):
            RunOptions(**bad).check()
        with pytest.raises(ConfigError, match=f"^job.yaml: {key}: expected "):
            job_from_document({**document, **bad}, "job.yaml", tmp_path)
