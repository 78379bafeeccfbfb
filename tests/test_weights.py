"""Weights management offline: files we create, imported, fetched from a local mirror, verified."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import vidfeat
from vidfeat.cli import main
from vidfeat.extractors import get_extractor
from vidfeat.extractors.weights import PIN_SUFFIX, home, sha256_file


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path / "home"))
    return home()


def _seeded_state(name: str, seed: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return get_extractor(name)().build_model().state_dict()


@pytest.fixture
def c3d_file(tmp_path: Path) -> Path:
    path = tmp_path / "downloads" / "c3d.pickle"
    path.parent.mkdir()
    torch.save(_seeded_state("c3d"), path)
    return path


def test_import_pins_an_unhashed_file_and_list_shows_it(c3d_file: Path, cache: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["weights", "list"]) == 0
    assert "c3d-sports1m" in capsys.readouterr().out
    assert main(["weights", "import", "c3d-sports1m", str(c3d_file)]) == 0
    installed = cache / "c3d.pickle"
    assert installed.read_bytes() == c3d_file.read_bytes()
    pin = installed.with_name("c3d.pickle" + PIN_SUFFIX).read_text().strip()
    assert pin == sha256_file(c3d_file)
    capsys.readouterr()
    main(["weights", "list"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("c3d-sports1m"))
    assert "verified" in line


def test_import_refuses_a_file_that_is_not_the_published_one(tmp_path: Path, cache: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    fake = tmp_path / "resnet152-394f9c45.pth"
    torch.save(_seeded_state("resnet152"), fake)
    assert main(["weights", "import", "resnet152-imagenet1k-v1", str(fake)]) == 2
    assert "394f9c45" in capsys.readouterr().err
    assert not (cache / fake.name).exists() and not list(cache.glob(".partial-*"))


@pytest.mark.slow  # a whole extraction
def test_fetch_from_a_mirror_and_verify_before_every_use(c3d_file: Path, cache: Path,
                                                         corpus: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(c3d_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["weights", "fetch", "c3d-sports1m", "--mirror", mirror]) == 0
    finally:
        server.shutdown()
    store = tmp_path / "store"
    assert main(["extract", str(corpus / "talk.mp4"), "--store", str(store), "--features",
                 "c3d", "--workers", "1", "--no-progress"]) == 0
    attrs = vidfeat.open_store(str(store)).attrs("talk", "c3d")
    assert attrs["weights_sha256"] == sha256_file(c3d_file) and not attrs["random_weights"]

    cached = cache / "c3d.pickle"
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")  # bit rot in the cache
    capsys.readouterr()
    assert main(["extract", str(corpus / "talk.mp4"), "--store", str(tmp_path / "s2"),
                 "--features", "c3d", "--no-progress"]) == 2
    assert "does not match" in capsys.readouterr().err


@pytest.mark.slow  # a whole extraction
def test_users_own_weights_file_is_loaded_and_recorded(tmp_path: Path, corpus: Path) -> None:
    state = _seeded_state("vggish", seed=3)
    mine = tmp_path / "finetuned-vggish.pt"
    torch.save(state, mine)
    store = tmp_path / "store"
    assert main(["extract", str(corpus / "talk.mp4"), "--store", str(store), "--features",
                 "vggish", "--weights", f"vggish={mine}", "--workers", "1",
                 "--no-progress"]) == 0
    features = vidfeat.open_store(str(store))
    assert features.attrs("talk", "vggish")["weights_sha256"] == sha256_file(mine)
    # the same file loaded by hand gives the same rows (float16 storage tolerance)
    from vidfeat.extractors.weights import load_weights
    from vidfeat.media import load_audio, probe

    extractor = get_extractor("vggish")()
    extractor.load(load_weights("vggish", "vggish-audioset", file=mine))
    info = probe(corpus / "talk.mp4")
    items, _ = extractor.audio_items(load_audio(info), info.audio_start)
    expected = extractor.embed(torch.stack([item.tensor for item in items]))
    np.testing.assert_allclose(features.get("talk", "vggish"), expected, rtol=2e-3, atol=2e-3)


def test_a_file_with_other_keys_is_refused(tmp_path: Path, corpus: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    code = main(["extract", str(corpus / "talk.mp4"), "--store", str(tmp_path / "s"),
                 "--features", "vggish", "--weights", f"vggish={wrong}", "--workers", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not vggish weights" in err and "missing" in err


def test_import_refuses_junk_for_a_file_it_would_pin(tmp_path: Path, cache: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "c3d.pickle"
    junk.write_text("junk\n")
    assert main(["weights", "import", "c3d-sports1m", str(junk)]) == 2
    err = capsys.readouterr().err
    assert str(junk) in err and "not a loadable state dict" in err and "not installed" in err
    assert not (cache / "c3d.pickle").exists() and not list(cache.glob("*" + PIN_SUFFIX))


def test_an_imported_file_is_readable_by_other_users(c3d_file: Path, cache: Path) -> None:
    assert main(["weights", "import", "c3d-sports1m", str(c3d_file)]) == 0
    assert (cache / "c3d.pickle").stat().st_mode & 0o044 == 0o044  # under the usual umask 022


def test_a_cached_file_with_other_keys_is_refused_before_the_run(tmp_path: Path, cache: Path,
                                                                 corpus: Path,
                                                                 capsys: pytest.CaptureFixture
                                                                 ) -> None:
    # pinned when an earlier vidfeat imported it without looking inside
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / "c3d.pickle"
    torch.save({"conv1.weight": torch.zeros(1)}, cached)
    cached.with_name(cached.name + PIN_SUFFIX).write_text(sha256_file(cached) + "\n")
    store = tmp_path / "store"
    code = main(["extract", str(corpus / "talk.mp4"), "--store", str(store), "--features",
                 "c3d", "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{cached}: not c3d weights" in err
    assert not store.exists()


def test_selftest_without_real_weights_says_what_it_skipped(capsys: pytest.CaptureFixture
                                                            ) -> None:
    assert main(["weights", "selftest"]) == 0
    out = capsys.readouterr().out
    assert "vggish-audioset: missing, smoke test skipped" in out
    assert "c3d-sports1m: no published smoke test" in out


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


def test_weights_in_torch_hubs_cache_are_found_and_verified(torch_home: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    from vidfeat.extractors import weights

    checkpoint = torch_home / "vggish_pca_params-970ea276.pth"
    torch.save({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128)}, checkpoint)
    assert weights.locate("vggish-pca-audioset") == checkpoint
    # not the published file: found, and refused by its hash
    assert weights.status("vggish-pca-audioset") == ("MISMATCH", checkpoint)
    with pytest.raises(vidfeat.errors.WeightsError, match="does not match"):
        weights.verify(weights.spec("vggish-pca-audioset"), checkpoint)
    # a registry entry whose published hash this file has: used from torch's cache, verified
    published = weights.WeightsSpec("pca-test", "", "https://example.org/" + checkpoint.name,
                                    sha256_file(checkpoint)[:8], "test")
    monkeypatch.setitem(weights.REGISTRY, published.name, published)
    assert weights.status("pca-test") == ("verified", checkpoint)
    assert main(["weights", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("pca-test"))
    assert "verified" in line and str(checkpoint) in line
    # the vidfeat cache comes first
    cached = weights.import_file("pca-test", checkpoint)
    assert weights.locate("pca-test") == cached != checkpoint
    # files without a published hash are never taken from torch's cache unverified
    (torch_home / "c3d.pickle").write_bytes(b"anything")
    with pytest.raises(vidfeat.errors.WeightsError, match="not found"):
        weights.locate("c3d-sports1m")


def test_weights_list_into_a_closed_pipe_exits_quietly() -> None:
    # `vidfeat weights list | head -1`: silent, exit 141 as for a tool SIGPIPE killed
    child = subprocess.Popen([sys.executable, "-m", "vidfeat.cli", "weights", "list"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    _, err = child.communicate(timeout=120)
    assert (child.returncode, err.decode()) == (141, "")
