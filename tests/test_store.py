"""The feature store on real HDF5 files: writing, indexing, reading, and the tools around it."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from vidfeat.errors import StoreError
from vidfeat.storage.export import export_hdf5, export_npy, export_paddle
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.inspect import summarize
from vidfeat.storage.merge import merge
from vidfeat.storage.migrate import migrate
from vidfeat.storage.plot import plot_video
from vidfeat.storage.reader import open_store
from vidfeat.storage.schema import SCHEMA_VERSION, STORE_MARKER, FeatureRecord, VideoRecord
from vidfeat.storage.store_dir import create_store
from vidfeat.storage.verify import verify
from vidfeat.storage.writer import write_shard

FLOAT16_TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


def spans(rows: int, step: float = 1.0) -> np.ndarray:
    starts = np.arange(rows) * step
    return np.stack([starts, starts + step], axis=1)


def ok(feature: str, data: np.ndarray, times: np.ndarray | None = None,
       **attrs: object) -> FeatureRecord:
    return FeatureRecord(feature, "ok", data=data,
                         times=spans(len(data)) if times is None else times,
                         attrs={"config_hash": "cfg-1", "random_weights": False, **attrs})


def video(video_id: str, *features: FeatureRecord, **attrs: object) -> VideoRecord:
    return VideoRecord(video_id, {"duration": 6.0, "fps": 25.0, "fingerprint": f"fp-{video_id}",
                                  "source_path": f"/corpus/{video_id}.mp4", **attrs},
                       list(features))


def indexed(store: os.PathLike, shard_name: str, videos: list[VideoRecord],
            dtype: str = "float16") -> str:
    shard = write_shard(store, shard_name, videos, dtype=dtype)
    StoreIndex(store).add([shard])
    return shard.relpath


def features(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    return create_store(tmp_path / "store")


@pytest.fixture
def filled(store):
    """Three videos: one complete, one without audio, one whose c3d failed."""
    indexed(store, "aa/v1", [video("v1", ok("resnet152", features(6, 16, 1)),
                                   ok("vggish", features(6, 8, 2)))])
    indexed(store, "bb/v2", [video("v2", ok("resnet152", features(4, 16, 3)),
                                   FeatureRecord("vggish", "skipped", reason="no audio stream"),
                                   has_audio=False, audio_sample_rate=None)])
    indexed(store, "v3", [video("v3", ok("resnet152", features(5, 16, 4)),
                                FeatureRecord("c3d", "failed", reason="DecodeError: bad frame"))])
    return store


# -- writing and reading back ---------------------------------------------------------------

def test_round_trip_keeps_data_times_and_attrs(store):
    data, times = features(7, 32, 0), spans(7, 0.5) + 0.123456789
    attrs = {"duration": 3.5, "frame_count": 87, "has_audio": True, "video_codec": "h264",
             "audio_sample_rate": None, "tags": ["a", "b"], "sizes": [1, 2], "extra": {"k": 1}}
    feature_attrs = {"config_hash": "abc", "random_weights": False, "fps": 2.0,
                     "config": {"layer": "avgpool"}, "padded": 0}
    indexed(store, "one", [VideoRecord("clip", attrs, [ok("resnet152", data, times,
                                                          **feature_attrs)])])
    with open_store(store) as reader:
        assert reader.videos() == ["clip"]
        np.testing.assert_allclose(reader.get("clip", "resnet152"), data, **FLOAT16_TOLERANCE)
        assert reader.get("clip", "resnet152").dtype == np.float32
        assert reader.get("clip", "resnet152", dtype=None).dtype == np.float16
        assert np.array_equal(reader.times("clip", "resnet152"), times)
        assert reader.attrs("clip") == {**attrs, "extra": json.dumps({"k": 1})}
        stored = reader.attrs("clip", "resnet152")
        assert stored == {**feature_attrs, "config": '{"layer": "avgpool"}', "status": "ok",
                          "reason": "", "feature": "resnet152"}


def test_float32_store_is_exact_and_float16_overflow_is_kept(store):
    exact, huge = features(3, 4, 0), features(3, 4, 1) * 1e6
    indexed(store, "f32", [video("a", ok("x", exact))], dtype="float32")
    indexed(store, "f16", [video("b", ok("x", huge))])
    with open_store(store) as reader:
        assert np.array_equal(reader.get("a", "x"), exact)
        assert reader.get("b", "x", dtype=None).dtype == np.float32  # not stored as inf
        assert np.array_equal(reader.get("b", "x"), huge)


def test_float16_conversion_is_exact_for_every_value(store):
    every_float16 = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(-1, 256)
    indexed(store, "all", [video("a", ok("x", every_float16.astype(np.float32),
                                         spans(256)))])
    with open_store(store) as reader:
        assert reader.get("a", "x", dtype=None).view(np.uint16).tolist() == \
            every_float16.view(np.uint16).tolist()
        np.testing.assert_array_equal(reader.get("a", "x"), every_float16.astype(np.float32))


def test_missing_video_feature_and_failure_are_key_errors(filled):
    reader = open_store(filled)
    with pytest.raises(KeyError, match="nope"):
        reader.get("nope", "resnet152")
    with pytest.raises(KeyError, match="c4d"):
        reader.get("v1", "c4d")
    with pytest.raises(KeyError, match="no audio stream"):
        reader.get("v2", "vggish")
    assert reader.features("v2") == ["resnet152"]
    assert reader.failures() == [("v2", "vggish", "skipped", "no audio stream"),
                                 ("v3", "c3d", "failed", "DecodeError: bad frame")]


@pytest.mark.parametrize("bad", [{"shard_name": "a/b/c"}, {"shard_name": "../x"},
                                 {"shard_name": ".hidden"}, {"dtype": "int8"}])
def test_write_shard_rejects_bad_arguments_before_writing(store, bad):
    arguments = {"shard_name": "fine", "dtype": "float16", **bad}
    with pytest.raises(ValueError):
        write_shard(store, arguments["shard_name"], [video("v", ok("x", features(2, 2, 0)))],
                    dtype=arguments["dtype"])
    assert not list((store / "shards").rglob("*"))


def test_duplicate_video_in_one_shard_is_refused(store):
    with pytest.raises(ValueError, match="twice"):
        write_shard(store, "dup", [video("v"), video("v")])


# -- newest wins, concurrency ---------------------------------------------------------------

def test_newest_shard_wins_whatever_the_indexing_order(store):
    old, new = features(3, 4, 0), features(5, 4, 1)
    older = write_shard(store, "old", [video("v", ok("x", old), ok("y", old), extra="kept")])
    newer = write_shard(store, "new", [VideoRecord("v", {"fingerprint": "fp-2"}, [ok("x", new)])])
    index = StoreIndex(store)
    index.add([newer])
    index.add([older])  # arrives late: must not replace the newer rows
    entries = index.video_features("v")
    assert entries["x"].shard == newer.relpath and entries["x"].rows == 5
    assert entries["y"].shard == older.relpath
    record = index.video("v")
    assert record["fingerprint"] == "fp-2" and record["attrs"]["extra"] == "kept"
    with open_store(store) as reader:
        np.testing.assert_allclose(reader.get("v", "x"), new, **FLOAT16_TOLERANCE)
    assert index.rebuild() == []
    assert index.video_features("v")["x"].shard == newer.relpath


def test_rewritten_shard_replaces_its_rows(store):
    indexed(store, "same", [video("a", ok("x", features(2, 4, 0))),
                            video("b", ok("x", features(2, 4, 0)))])
    indexed(store, "same", [video("a", ok("x", features(6, 4, 1)))])
    index = StoreIndex(store)
    assert [(e.video_id, e.rows) for e in index.entries()] == [("a", 6)]


def _write_shards(store: str, worker: int) -> None:
    index = StoreIndex(store)
    for k in range(4):
        shard = write_shard(store, f"w{worker}/s{k}",
                              [video(f"w{worker}-{k}", ok("x", features(3, 8, worker * 10 + k))),
                               video("shared", ok("x", features(2, 8, worker)))])
        index.add([shard])


def test_concurrent_writers_and_indexers(store):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_shards, args=(str(store), w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [p.exitcode for p in workers] == [0] * 4
    assert not [p for p in (store / "shards").rglob("*") if p.name.endswith(".tmp")]
    index = StoreIndex(store)
    assert len(index.shards()) == 16
    assert len(index.entries()) == 17  # 16 own videos + the shared one
    newest = max(index.shards(), key=lambda s: h5py.File(store / s).attrs["written_at"])
    assert index.video_features("shared")["x"].shard == newest
    assert verify(store) == []


class StoreDataset:
    """A map-style dataset over an open FeatureStore (what a training script would write)."""

    def __init__(self, store_path: os.PathLike) -> None:
        self.store = open_store(store_path)
        self.video_ids = self.store.videos()

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, position: int) -> np.ndarray:
        return self.store.get(self.video_ids[position], "resnet152")


# spawn: each DataLoader worker is a fresh interpreter importing torch, seconds each
@pytest.mark.parametrize("start_method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers_read_the_same_arrays(filled, start_method):
    dataset = StoreDataset(filled)
    expected = [dataset[i] for i in range(len(dataset))]  # opens files in the parent first
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2,
                                         multiprocessing_context=start_method)
    loaded = [item.numpy() for item in loader]
    assert len(loaded) == len(expected) == 3
    for got, want in zip(loaded, expected, strict=True):
        assert np.array_equal(got, want)


def test_store_pickles_as_its_path(filled):
    reader = open_store(filled)
    reader.videos()
    assert len(pickle.dumps(reader)) < 300
    assert np.array_equal(pickle.loads(pickle.dumps(reader)).get("v1", "vggish"),
                          reader.get("v1", "vggish"))


# -- aligned --------------------------------------------------------------------------------

def test_aligned_mean_and_nearest_on_a_hand_made_example(store):
    a_times = np.array([[0.0, 0.5], [0.5, 1.0], [1.0, 2.6], [2.6, 3.0]])
    a = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    b = np.array([[100.0], [200.0]])
    indexed(store, "s", [VideoRecord("v", {"duration": 4.0}, [
        ok("a", a, a_times), ok("b", b, np.array([[0.0, 2.0], [2.0, 4.0]]))])])
    reader = open_store(store)
    mean = reader.aligned("v", ["a", "b"], grid=1.0, how="mean")
    assert mean.times.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    # cell 3 overlaps no row of a: the row whose centre (2.8) is nearest 3.5
    assert mean.features["a"][:, 0].tolist() == [1.5, 3.0, 3.5, 4.0]
    assert mean.features["b"][:, 0].tolist() == [100, 100, 200, 200]
    assert mean.concat().shape == (4, 3)
    assert mean.concat()[2].tolist() == [3.5, 35.0, 200.0]
    nearest = reader.aligned("v", ["a"], grid=1.0, how="nearest")
    assert nearest.features["a"][:, 0].tolist() == [1.0, 3.0, 4.0, 4.0]  # tie -> earlier
    with pytest.raises(ValueError):
        reader.aligned("v", ["a"], how="median")
    with pytest.raises(KeyError, match="'c'"):
        reader.aligned("v", ["a", "c"])


# -- merge, verify, migrate ------------------------------------------------------------------

def test_merged_file_equals_the_store(filled, tmp_path):
    indexed(filled, "later", [video("v1", ok("vggish", features(3, 8, 9)))])  # supersedes
    merged = merge(filled, tmp_path / "out" / "merged.h5")
    with open_store(filled) as source, open_store(merged) as copy:
        assert copy.merged and copy.videos() == source.videos() == ["v1", "v2", "v3"]
        assert copy.failures() == source.failures()
        for video_id in source.videos():
            assert copy.attrs(video_id) == source.attrs(video_id)
            assert copy.features(video_id) == source.features(video_id)
            for feature in source.features(video_id):
                assert np.array_equal(copy.get(video_id, feature, dtype=None),
                                      source.get(video_id, feature, dtype=None))
                assert np.array_equal(copy.times(video_id, feature),
                                      source.times(video_id, feature))
                assert copy.attrs(video_id, feature) == source.attrs(video_id, feature)
        assert copy.get("v1", "vggish").shape == (3, 8)
    with pytest.raises(ValueError):
        merge(filled, filled / "shards" / "merged.h5")


def test_verify_finds_planted_corruption(filled):
    assert verify(filled) == []
    with h5py.File(filled / "shards/aa/v1.h5", "r+") as h5:
        h5["videos/v1/resnet152/data"][2] = np.nan
        times = h5["videos/v1/vggish/times"]
        times[3] = [0.0, 0.5]  # starts go backwards
    with h5py.File(filled / "shards/bb/v2.h5", "r+") as h5:
        del h5["videos/v2/resnet152/data"]
    shard = filled / "shards/v3.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    problems = "\n".join(verify(filled))
    assert "v1/resnet152: 16 NaN/Inf values in rows 2" in problems
    assert "v1/vggish: start times go backwards at rows 3" in problems
    assert "v2/resnet152: status ok but no data" in problems
    assert "shards/v3.h5: unreadable" in problems
    assert "re-extract" in problems
    after_repair = "\n".join(verify(filled, repair=True))
    assert "NaN/Inf" in after_repair and "shards/v3.h5: unreadable" in after_repair
    assert "index rows point at it" not in after_repair


def test_repair_rebuilds_a_deleted_index(filled):
    (filled / "index.sqlite").unlink()
    assert "index.sqlite is missing" in verify(filled)[0]
    with pytest.raises(StoreError, match="repair"):
        open_store(filled).videos()
    assert verify(filled, repair=True) == []
    assert open_store(filled).videos() == ["v1", "v2", "v3"]


def test_verify_reports_unindexed_and_vanished_shards(filled):
    write_shard(filled, "unindexed", [video("v9", ok("x", features(2, 2, 0)))])
    (filled / "shards/bb/v2.h5").unlink()
    problems = "\n".join(verify(filled))
    assert "shards/unindexed.h5: not in the index" in problems
    assert "shards/bb/v2.h5: gone from disk, yet 2 index rows point at it" in problems


def _set_schema(store, version: int) -> None:
    marker = json.loads((store / STORE_MARKER).read_text())
    (store / STORE_MARKER).write_text(json.dumps({**marker, "schema_version": version}))


def test_newer_schema_is_refused_everywhere(filled):
    _set_schema(filled, SCHEMA_VERSION + 1)
    for action in (open_store, create_store, verify, migrate, lambda s: merge(s, s / "m.h5"),
                   lambda s: write_shard(s, "x", [])):
        with pytest.raises(StoreError, match="newer vidfeat"):
            action(filled)


def test_migrate_current_and_older_stores(filled):
    assert f"already at schema {SCHEMA_VERSION}" in migrate(filled)
    _set_schema(filled, 0)
    with pytest.raises(StoreError, match="vidfeat migrate"):
        open_store(filled)
    with pytest.raises(StoreError, match="no migration from schema 0"):
        migrate(filled)


@pytest.mark.parametrize("command", ["verify", "migrate"])
def test_store_commands_on_a_merged_file_say_it_is_one(filled, tmp_path, capsys, command):
    from vidfeat.cli import main

    merged = merge(filled, tmp_path / "m1.h5")
    assert main([command, str(merged)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"vidfeat: error: {merged}: is a merged single-file store (vidfeat "
                          "merge), not a store directory; this needs a store directory")


def test_a_file_is_not_taken_for_a_store_directory(tmp_path):
    plain = tmp_path / "afile"
    plain.write_text("")
    for action in (create_store, verify, migrate):
        with pytest.raises(StoreError, match=f"^{re.escape(str(plain))}: is a file, not a store "
                                             "directory; "):
            action(plain)
    assert plain.read_text() == ""


def test_shard_of_a_newer_schema_is_not_indexed(store):
    relpath = write_shard(store, "future", [video("v", ok("x", features(2, 2, 0)))]).relpath
    with h5py.File(store / relpath, "r+") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="newer vidfeat"):
        StoreIndex(store).add_shard(relpath)


# -- export, inspect, plot ------------------------------------------------------------------

def test_export_npy_round_trip(filled, tmp_path):
    count = export_npy(filled, tmp_path / "npy")
    reader = open_store(filled)
    for video_id in reader.videos():
        for feature in reader.features(video_id):
            folder = tmp_path / "npy" / feature
            values = np.load(folder / f"{video_id}_{feature}.npy")
            assert values.dtype == np.float32
            assert np.array_equal(values, reader.get(video_id, feature))
            assert np.array_equal(np.load(folder / f"{video_id}_timestamps_ms.npy"),
                                  reader.times(video_id, feature)[:, 0] * 1000)
            assert np.load(folder / f"{video_id}_fps.npy") == 25.0
    assert count == 3 * 4  # 4 (video, feature) pairs, 3 files each
    assert sorted(p.name for p in (tmp_path / "npy").iterdir()) == ["resnet152", "vggish"]


def test_export_hdf5_creates_its_folder_as_the_other_exports_do(filled, tmp_path):
    """Was an h5py 'unable to synchronously create file' naming the temporary file."""
    out = tmp_path / "new" / "folder" / "resnet152_features.hdf5"
    assert export_hdf5(filled, out, ["resnet152"]) == 3
    reader = open_store(filled)
    with h5py.File(out, "r") as h5:
        assert np.array_equal(h5["v1"][:], reader.get("v1", "resnet152"))
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_export_paddle_round_trip_and_missing_audio(filled, tmp_path):
    out = tmp_path / "paddle"
    assert export_paddle(filled, out, labels={"v1": [3, 7]}) == 3
    reader = open_store(filled)
    with open(out / "v1.pkl", "rb") as file:
        record = pickle.load(file, encoding="iso-8859-1")  # as PaddleVideo's reader loads it
    assert record["video"] == "v1" and record["label"] == [3, 7]
    assert np.array_equal(record["feature"]["image_pkl"], reader.get("v1", "resnet152"))
    assert np.array_equal(record["feature"]["audio_pkl"], reader.get("v1", "vggish"))
    with open(out / "v2.pkl", "rb") as file:
        no_audio = pickle.load(file)
    assert no_audio["feature"]["audio_pkl"].shape == (0, 8)  # the reader zero-fills, not us
    assert no_audio["label"] == []
    assert (out / "audio_missing.tsv").read_text() == (
        "v2\tskipped: no audio stream\nv3\tnot extracted\n"
    )


def test_summarize_flags_mixed_configs_and_random_weights(filled):
    clean = summarize(filled)
    assert "MIXED CONFIGURATIONS" not in clean and "RANDOM WEIGHTS" not in clean
    assert "no audio stream" in clean and "DecodeError: bad frame" in clean
    assert "resnet152" in clean and "videos: 3" in clean
    indexed(filled, "odd", [video("v4", ok("resnet152", features(2, 16, 0),
                                           config_hash="cfg-2", random_weights=True))])
    flagged = summarize(filled)
    assert "!!! MIXED CONFIGURATIONS in resnet152" in flagged
    assert "!!! RANDOM WEIGHTS — NOT REAL FEATURES: resnet152 (1 of 4 videos)" in flagged
    details = summarize(filled, "v1")
    assert "resnet152: [6, 16] float16, 0.000-6.000 s" in details
    assert "fingerprint: fp-v1" in details


def test_plot_writes_a_png(filled, tmp_path):
    path = plot_video(filled, "v1", tmp_path / "plots" / "v1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError):
        plot_video(filled, "missing", tmp_path / "x.png")


def test_inspect_into_a_closed_pipe_exits_quietly(filled):
    # `vidfeat inspect DIR | head -1`: the reader is gone before vidfeat writes (it closes its
    # end while the child still imports), as head does after its first lines
    child = subprocess.Popen([sys.executable, "-m", "vidfeat.cli", "inspect", str(filled)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    _, err = child.communicate(timeout=120)
    assert (child.returncode, err.decode()) == (141, "")
