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
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
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
