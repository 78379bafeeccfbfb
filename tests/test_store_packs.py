"""Schema 2 at scale: packs of many videos, the journal, newest-wins across packs, the lazy
reader, merged files with index tables and parts, parallel verify, schema 1 stores."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.test_store import StoreDataset
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.merge import merge, part_paths
from vidfeat.storage.migrate import migrate
from vidfeat.storage.reader import open_store
from vidfeat.storage.schema import STORE_MARKER, FeatureRecord, VideoRecord
from vidfeat.storage.store_dir import create_store
from vidfeat.storage.verify import verify
from vidfeat.storage.writer import write_shard

FEATURE_ATTRS = {"model": "resnet152", "layer": "avgpool", "weights_sha256": "ab" * 32,
                 "random_weights": False, "precision": "fp32", "compiled": False,
                 "config": '{"fps": 1.0}', "config_hash": "cfg-1", "device": "cpu",
                 "vidfeat_version": "0.1.0", "fps": 1.0, "decoder": "pyav"}


def rows(count: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def ok(feature: str, data: np.ndarray, **attrs: object) -> FeatureRecord:
    starts = np.arange(len(data), dtype=np.float64)
    return FeatureRecord(feature, "ok", data=data, times=np.stack([starts, starts + 1], 1),
                         attrs={**FEATURE_ATTRS, "model": feature, **attrs})


def video(video_id: str, *records: FeatureRecord) -> VideoRecord:
    return VideoRecord(video_id, {"duration": 4.0, "fps": 25.0, "width": 640, "height": 360,
                                  "fingerprint": f"fp-{video_id}", "video_codec": "h264",
                                  "source_path": f"/corpus/{video_id}.mp4",
                                  "file_size": 1000, "file_mtime_ns": 1}, list(records))


def mixed_pack(prefix: str, count: int, seed: int = 0) -> list[VideoRecord]:
    """``count`` videos: ok ones, one whose vggish failed, one whose vggish was skipped."""
    videos = []
    for k in range(count):
        audio = (FeatureRecord("vggish", "failed", "DecodeError: bad packet",
                               attrs={"model": "vggish"}) if k == 1 else
                 FeatureRecord("vggish", "skipped", "no audio stream",
                               attrs={"model": "vggish"}) if k == 2 else
                 ok("vggish", rows(4, 8, seed + k)))
        videos.append(video(f"{prefix}{k:03d}", ok("resnet152", rows(4, 16, seed + k),
                                                   padded=k % 2 == 0), audio))
    return videos


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return create_store(tmp_path / "store")


def test_a_pack_holds_many_videos_with_little_metadata_each(store: Path):
    videos = mixed_pack("v", 60)
    shard = write_shard(store, None, videos)
    StoreIndex(store).add([shard])
    files = [p for p in (store / "shards").rglob("*") if p.is_file()]
    assert files == [store / shard.relpath]
    data_bytes = sum(r.data.astype(np.float16).nbytes + r.times.nbytes
                     for v in videos for r in v.features if r.data is not None)
    assert (files[0].stat().st_size - data_bytes) / len(videos) < 2048
    with open_store(store) as reader:
        assert reader.videos() == [v.video_id for v in videos]
        assert reader.failures() == [("v001", "vggish", "failed", "DecodeError: bad packet"),
                                     ("v002", "vggish", "skipped", "no audio stream")]
        for k, original in enumerate(videos):
            assert reader.attrs(original.video_id) == original.attrs
            got = reader.attrs(original.video_id, "resnet152")
            assert got == {**FEATURE_ATTRS, "padded": k % 2 == 0, "status": "ok",
                           "reason": "", "feature": "resnet152"}
            np.testing.assert_allclose(reader.get(original.video_id, "resnet152"),
                                       original.features[0].data, rtol=1e-3, atol=1e-3)
        assert reader.attrs("v001", "vggish") == {"model": "vggish", "status": "failed",
                                                  "reason": "DecodeError: bad packet",
                                                  "feature": "vggish"}
    assert verify(store) == []


def test_pack_names_never_come_from_video_ids(store: Path):
    awkward = ["é" * 120, "-rf --all", "two\nlines", " spaced . dots ", "x" * 250]
    shard = write_shard(store, None, [video(v, ok("resnet152", rows(2, 4, 0))) for v in awkward])
    assert len(Path(shard.relpath).name) < 40
    StoreIndex(store).add([shard])
    with open_store(store) as reader:
        assert reader.videos() == sorted(awkward)
        assert all(reader.get(v, "resnet152").shape == (2, 4) for v in awkward)
    assert verify(store) == []


def test_a_video_extracted_again_into_a_newer_pack_wins(store: Path):
    index = StoreIndex(store)
    first = write_shard(store, None, mixed_pack("v", 5))
    index.add([first])
    again = [video("v003", ok("resnet152", rows(7, 16, 99)))]
    second = write_shard(store, None, again)
    index.add([second])
    with open_store(store) as reader:
        np.testing.assert_allclose(reader.get("v003", "resnet152"), again[0].features[0].data,
                                   rtol=1e-3, atol=1e-3)
        assert reader.get("v003", "vggish").shape == (4, 8)  # still from the first pack
        assert reader.get("v004", "resnet152").shape == (4, 16)
    assert (store / first.relpath).exists()
    # every video extracted again: the older packs hold nothing that wins, and go
    newest = write_shard(store, None, mixed_pack("v", 5, seed=50))
    assert index.add([newest]) == sorted([first.relpath, second.relpath])
    assert not (store / first.relpath).exists() and first.relpath not in index.shards()
    assert verify(store) == []
    assert verify(store, repair=True) == []
    with open_store(store) as reader:
        assert {e.shard for e in reader.entries()} == {newest.relpath}


def _write_packs(store: str, writer: int, done: multiprocessing.Queue | None,
                 packs: int = 6) -> None:
    index = StoreIndex(store)
    for k in range(packs):
        shard = write_shard(store, None, [video(f"w{writer}-{k}-{j}",
                                                ok("resnet152", rows(2, 8, k))) for j in range(5)]
                            + [video("shared", ok("resnet152", rows(3, 8, writer)))])
        index.add([shard])
        if done is not None:
            done.put(shard.relpath)


def test_two_runs_writing_packs_at_once(store: Path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_packs, args=(str(store), w, None)) for w in (0, 1)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
    assert [p.exitcode for p in writers] == [0, 0]
    index = StoreIndex(store)
    entries = index.entries()
    assert len(entries) == 2 * 6 * 5 + 1
    newest = max(index.shards(), key=lambda s: h5py.File(store / s).attrs["written_at"])
    assert index.video_features("shared")["resnet152"].shard == newest
    assert verify(store) == []


def test_a_writer_killed_mid_pack_leaves_no_partial_shard_and_loses_nothing(store: Path):
    done: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    writer = multiprocessing.get_context("fork").Process(  # still writing when killed
        target=_write_packs, args=(str(store), 0, done, 1000))
    writer.start()
    indexed = [done.get(timeout=60) for _ in range(2)]
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(10)
    assert writer.exitcode == -signal.SIGKILL
    before = StoreIndex(store).entries()
    assert {e.shard for e in before} >= set(indexed)
    StoreIndex(store).recover()  # what the next run does first
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
    assert not list((store / "journal").glob("*"))
    after = {(e.video_id, e.feature): e for e in StoreIndex(store).entries()}
    for entry in before:
        if entry.video_id != "shared":
            assert after[entry.video_id, entry.feature] == entry
    assert verify(store) == []


def test_a_run_finds_unindexed_shards_in_the_journal_not_by_walking(store: Path):
    index = StoreIndex(store)
    index.add([write_shard(store, None, mixed_pack("a", 3))])
    lost = write_shard(store, None, mixed_pack("b", 3)).relpath  # its driver died unindexed
    stray = write_shard(store, None, mixed_pack("c", 3)).relpath
    (journal,) = (store / "journal").glob("*.log")
    lines = [line for line in journal.read_text().splitlines() if stray not in line]
    unfinished = "shards/ff/" + "f" * 32 + ".h5"  # journalled, killed before its rename
    (store / "shards/ff").mkdir()
    temp = store / "shards/ff" / f".{'f' * 32}.h5.123.abcdef.tmp"
    temp.write_bytes(b"half a shard")
    journal.write_text("\n".join([*lines, json.dumps(unfinished), '"shards/cut'])
                       + "\n")
    assert index.recover() == [lost]
    assert not temp.exists() and not list((store / "journal").glob("*"))
    assert stray not in index.shards()  # not journalled: only verify's walk finds it
    assert [p for p in verify(store) if "not in the index" in p] == [
        f"{stray}: not in the index (a run stopped before indexing it; the next run indexes "
        f"it, or run `vidfeat verify {store} --repair`)"]
    assert verify(store, repair=True) == []
    assert len(open_store(store).videos()) == 9


def _schema_1_store(directory: Path) -> Path:
    """A store exactly as vidfeat wrote it at schema 1: one shard per video, every attribute
    an HDF5 attribute of the video's and the feature's groups, no ``/index``."""
    (directory / "shards" / "aa").mkdir(parents=True)
    (directory / STORE_MARKER).write_text(json.dumps(
        {"format": "vidfeat-store", "schema_version": 1, "created_by": "0.1.0"}))
    for number, (video_id, shard) in enumerate([("v1", "aa/v1.visual"), ("v2", "v2.visual"),
                                                ("v1", "aa/v1.later")]):
        with h5py.File(directory / "shards" / f"{shard}.h5", "w", libver="v108") as h5:
            h5.attrs.update({"format": "vidfeat-shard", "schema_version": 1,
                             "vidfeat_version": "0.1.0", "written_at": 1000 + number})
            group = h5.create_group(f"videos/{video_id}")
            group.attrs.update({"duration": 4.0, "fingerprint": f"fp-{video_id}",
                                "source_path": f"/corpus/{video_id}.mp4"})
            feature = group.create_group("resnet152")
            feature.attrs.update({**FEATURE_ATTRS, "status": "ok", "reason": "",
                                  "feature": "resnet152"})
            feature["data"] = rows(3 + number, 4, number).astype(np.float16)
            starts = np.arange(3 + number, dtype=np.float64)
            feature["times"] = np.stack([starts, starts + 1], 1)
            failed = group.create_group("vggish")
            failed.attrs.update({"status": "failed", "reason": "no packets",
                                 "feature": "vggish", "model": "vggish"})
    StoreIndex(directory).rebuild()
    return directory


def test_a_schema_1_store_is_read_and_migrated(tmp_path: Path):
    old = _schema_1_store(tmp_path / "old")
    with open_store(old) as reader:
        assert reader.videos() == ["v1", "v2"]
        assert reader.get("v1", "resnet152").shape == (5, 4)  # the later shard wins
        assert reader.attrs("v1", "resnet152")["precision"] == "fp32"
        assert reader.failures() == [("v1", "vggish", "failed", "no packets"),
                                     ("v2", "vggish", "failed", "no packets")]
        expected = {v: (reader.get(v, "resnet152", dtype=None), reader.times(v, "resnet152"),
                        reader.attrs(v), reader.attrs(v, "resnet152"),
                        reader.attrs(v, "vggish")) for v in reader.videos()}
    with pytest.raises(Exception, match="vidfeat migrate"):
        create_store(old)  # written to only after migrating
    assert "migrated from schema 1 to 2" in migrate(old)
    shards = [p for p in (old / "shards").rglob("*") if p.is_file()]
    assert len(shards) == 1 and not (old / "shards" / "aa").exists()
    with open_store(old) as reader:
        for video_id, (data, times, attrs, feature_attrs, failed) in expected.items():
            np.testing.assert_array_equal(reader.get(video_id, "resnet152", dtype=None), data)
            np.testing.assert_array_equal(reader.times(video_id, "resnet152"), times)
            assert reader.attrs(video_id) == attrs
            assert reader.attrs(video_id, "resnet152") == feature_attrs
            assert reader.attrs(video_id, "vggish") == failed
    assert verify(old) == []
    create_store(old)


def test_an_interrupted_migration_resumes(tmp_path: Path):
    old = _schema_1_store(tmp_path / "old")
    # the first packs were written, then the migration died: both generations on disk
    index = StoreIndex(old)
    from vidfeat.storage.writer import write_into

    write_into(old, None, [video("v1", ok("resnet152", rows(5, 4, 2)))], dtype=None)
    index.close()
    assert "migrated" in migrate(old)
    with open_store(old) as reader:
        assert reader.videos() == ["v1", "v2"]
        assert reader.get("v1", "resnet152").shape == (5, 4)
    assert verify(old) == []


def test_merged_parts_are_self_contained_and_split_the_videos(store: Path, tmp_path: Path,
                                                              capsys):
    from vidfeat.cli import main

    index = StoreIndex(store)
    index.add([write_shard(store, None, mixed_pack("v", 40))])
    index.add([write_shard(store, None, mixed_pack("w", 20, seed=7))])
    out = tmp_path / "out" / "train.h5"
    capsys.readouterr()
    assert main(["merge", str(store), str(out), "--parts", "3"]) == 0
    paths = part_paths(out, 3)
    assert capsys.readouterr().out.split() == [word for p in paths for word in ("wrote", str(p))]
    assert [p.name for p in sorted(out.parent.iterdir())] == [
        "train-00000-of-00003.h5", "train-00001-of-00003.h5", "train-00002-of-00003.h5"]
    seen: list[str] = []
    with open_store(store) as source:
        for path in paths:
            with open_store(path) as part:
                ids = part.videos()
                assert ids, "a part without videos"
                seen += ids
                for video_id in ids:
                    assert part.attrs(video_id) == source.attrs(video_id)
                    for feature in source.features(video_id):
                        np.testing.assert_array_equal(part.get(video_id, feature, dtype=None),
                                                      source.get(video_id, feature, dtype=None))
                        assert part.attrs(video_id, feature) == source.attrs(video_id, feature)
        assert sorted(seen) == source.videos()
        assert sorted(f for p in paths for f in open_store(p).failures()) == source.failures()
    with h5py.File(paths[0]) as h5:
        assert (h5.attrs["part"], h5.attrs["parts"]) == (0, 3)
        assert h5["index/entries"].dtype.names[:2] == ("video_id", "feature")


# spawn: each DataLoader worker is a fresh interpreter importing torch, seconds each
@pytest.mark.parametrize("start_method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers_read_a_merged_file(store: Path, tmp_path: Path, start_method: str):
    StoreIndex(store).add([write_shard(store, None, mixed_pack("v", 12))])
    dataset = StoreDataset(merge(store, tmp_path / "m.h5"))
    expected = [dataset[i] for i in range(len(dataset))]  # the parent has it open first
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2,
                                         multiprocessing_context=start_method)
    for got, want in zip([item.numpy() for item in loader], expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_verify_in_worker_processes_finds_damage_in_any_shard(store: Path):
    index = StoreIndex(store)
    shards = [write_shard(store, None, mixed_pack(f"p{k}-", 3, seed=k)) for k in range(70)]
    index.add(shards)
    started = time.perf_counter()
    assert verify(store, processes=2) == []
    assert time.perf_counter() - started < 60
    with h5py.File(store / shards[41].relpath, "r+") as h5:
        h5["videos/p41-000/resnet152/data"][1] = np.inf
    (store / shards[7].relpath).unlink()
    problems = verify(store, processes=2)
    assert problems == [
        f"{shards[41].relpath}: p41-000/resnet152: 16 NaN/Inf values in rows 1 (data damage: "
        "re-extract the video; --repair cannot fix this)",
        f"{shards[7].relpath}: gone from disk, yet 6 index rows point at it: run "
        f"`vidfeat verify {store} --repair`"]
