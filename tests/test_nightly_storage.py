"""The store under nightly conditions, on real file systems: a full disk (a 2 MiB tmpfs), a
read-only bind mount, merged files from another vidfeat version, re-extraction messages; run
reports and the failure ledger; extract flags refused before a store is created."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import make_video
from vidfeat.errors import StoreError, StoreFullError
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.inspect import summarize
from vidfeat.storage.merge import merge
from vidfeat.storage.reader import open_store
from vidfeat.storage.runs import RUNS_DIR, build_report, read_reports, write_report
from vidfeat.storage.schema import FeatureRecord, Outcome, VideoRecord
from vidfeat.storage.store_dir import create_store
from vidfeat.storage.verify import verify
from vidfeat.storage.writer import write_shard


def _video(video_id: str, rows: int = 4, dim: int = 8, seed: int = 0) -> VideoRecord:
    data = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    starts = np.arange(rows, dtype=np.float64)
    return VideoRecord(video_id, {"duration": float(rows), "fingerprint": f"fp-{video_id}"},
                       [FeatureRecord("x", "ok", data=data,
                                      times=np.stack([starts, starts + 1], axis=1),
                                      attrs={"config_hash": "cfg"})])


def _indexed(store: Path, name: str, videos: list[VideoRecord]) -> str:
    shard = write_shard(store, name, videos, dtype="float32")
    StoreIndex(store).add([shard])
    return shard.relpath


def _leftovers(store: Path) -> list[str]:
    return [p.name for p in store.rglob("*") if p.name.endswith(".tmp")]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _unmount(mountpoint: Path) -> None:
    gc.collect()  # index connections and HDF5 handles the test left to the garbage collector
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs: a disk that fills."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint))
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint)


def _fill(directory: Path) -> Path:
    """Write a ballast file until the disk is full."""
    ballast = directory / "ballast"
    with open(ballast, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\xff" * 4096)
        except OSError:
            pass
    return ballast


def test_a_full_disk_is_one_store_error_and_leaves_no_temporary_file(small_disk: Path):
    store = create_store(small_disk / "store")
    _indexed(store, "first", [_video("a")])
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\xff" * 600_000)  # what the user deletes to make room
    shards_written = 0
    with pytest.raises(StoreFullError) as caught:
        for k in range(100):  # 256 KiB of incompressible rows per shard: the disk fills
            _indexed(store, f"big{k}", [_video(f"big{k}", rows=128, dim=512, seed=k)])
            shards_written += 1
    message = str(caught.value)
    assert "\n" not in message and str(store) in message and "disk full" in message
    assert "No space left on device" in message
    assert 2 <= shards_written < 8
    assert _leftovers(small_disk) == []  # the temporary file of the failed write is gone
    assert verify(store) == []
    ballast.unlink()
    _indexed(store, "after", [_video("after")])
    assert verify(store) == []
    assert len(open_store(store).videos()) == shards_written + 2


def test_indexing_on_a_full_disk_rolls_back_and_says_why(small_disk: Path):
    # a shard written while there was room, indexed once the disk is full: the transaction
    # rolls back and the real cause surfaces (not "cannot rollback - no transaction is active")
    store = create_store(small_disk / "store")
    _indexed(store, "first", [_video("a")])
    pending = write_shard(store, "many", [_video(f"m{k:03d}", 1, 1) for k in range(400)])
    index = StoreIndex(store)
    before = index.entries()
    ballast = _fill(small_disk)
    with pytest.raises(StoreFullError, match="database or disk is full|No space left") as caught:
        index.add([pending])
    assert str(store) in str(caught.value) and "\n" not in str(caught.value)
    assert index.entries() == before and pending.relpath not in index.shards()
    with pytest.raises(StoreFullError):
        write_shard(store, "more", [_video("more")])
    assert _leftovers(small_disk) == []
    index.close()

    ballast.unlink()  # space freed: the next run indexes what was written, and goes on
    assert StoreIndex(store).recover() == [pending.relpath]
    assert verify(store) == []
    _indexed(store, "after", [_video("after")])
    assert verify(store) == [] and len(open_store(store).videos()) == 402


def test_a_full_index_rolls_back_without_root(tmp_path: Path):
    # SQLite's own size limit gives the same "database or disk is full" as a full disk
    store = create_store(tmp_path / "store")
    _indexed(store, "first", [_video("a")])
    pending = write_shard(store, "many", [_video(f"m{k:03d}", 1, 1) for k in range(400)])
    index = StoreIndex(store)
    pages = index._db().execute("PRAGMA page_count").fetchone()[0]
    index._db().execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(StoreFullError, match="database or disk is full") as caught:
        index.add([pending])
    assert str(store) in str(caught.value) and "\n" not in str(caught.value)
    assert [e.video_id for e in index.entries()] == ["a"]
    index.close()
    assert StoreIndex(store).recover() == [pending.relpath]
    assert verify(store) == []


def _write_and_die(store: str) -> None:
    """A writer that indexes a shard and dies without closing: its changes stay in the WAL."""
    index = StoreIndex(store)
    index.add([write_shard(store, "late", [_video("late")])])
    os._exit(0)


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(store, the same store through a read-only bind mount)."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    store = create_store(tmp_path / "store")
    for k in range(3):
        _indexed(store, f"s{k}", [_video(f"v{k}", seed=k)])
    view = tmp_path / "view"
    view.mkdir()
    try:
        _mount("--bind", str(store), str(view))
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot bind-mount here: {error.stderr.decode().strip()}")
    try:
        _mount("-o", "remount,bind,ro", str(view))
        yield store, view
    finally:
        _unmount(view)


def test_a_read_only_store_can_be_read_inspected_and_verified(read_only_view, capsys):
    store, view = read_only_view
    with pytest.raises(OSError):
        (view / "probe").write_text("")  # really read-only
    with open_store(view) as reader:
        assert reader.videos() == ["v0", "v1", "v2"]
        np.testing.assert_array_equal(reader.get("v1", "x"), open_store(store).get("v1", "x"))
    assert "videos: 3" in summarize(view)
    assert verify(view) == []
    for command in (["inspect", str(view)], ["verify", str(view)]):
        assert _cli_in_process(capsys, *command) == 0, capsys.readouterr().err
    with pytest.raises(StoreError):
        StoreIndex(view, readonly=True).add_shard("shards/s0.h5")


def test_writing_to_a_read_only_store_is_one_line_naming_it(read_only_view, tmp_path: Path,
                                                             capsys):
    _, view = read_only_view
    video = make_video(tmp_path / "v.mp4", seconds=1.0)
    for command in (["extract", str(video), "--store", str(view), "--features", "vggish",
                     "--random-weights", "--workers", "1", "--no-progress"],
                    ["verify", str(view), "--repair"]):
        code = _cli_in_process(capsys, *command)
        stderr = capsys.readouterr().err
        lines = [line for line in stderr.splitlines() if "error" in line]
        assert code == 3, stderr
        assert len(lines) == 1, stderr
        assert lines[0].startswith(f"vidfeat: error: {view}: read-only (a read-only mount")
        assert "Reading it works" in lines[0]


def test_a_read_only_store_with_an_unmerged_log_reads_every_shard(read_only_view):
    store, view = read_only_view
    process = multiprocessing.get_context("fork").Process(target=_write_and_die,
                                                          args=(str(store),))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert (store / "index.sqlite-wal").stat().st_size > 0
    assert open_store(view).videos() == ["late", "v0", "v1", "v2"]
    assert verify(view) == []


MERGED_INDEX_DATASET = "index"


def _as_schema_1_merged_file(merged: Path) -> None:
    """A merged file as vidfeat wrote it at schema 1: the index as one JSON document."""
    with open_store(merged) as reader:
        index = {"videos": {v: reader.attrs(v) for v in reader.videos()},
                 "entries": [dataclasses.asdict(e) for e in reader.entries()]}
    with h5py.File(merged, "r+") as h5:
        del h5[MERGED_INDEX_DATASET]
        h5[MERGED_INDEX_DATASET] = np.frombuffer(json.dumps(index).encode(), np.uint8)
        h5.attrs["schema_version"] = 1


def test_schema_1_merged_index_rows_are_read_by_field_name(tmp_path: Path):
    store = create_store(tmp_path / "store")
    _indexed(store, "s", [_video("a"), _video("b", seed=1)])
    merged = merge(store, tmp_path / "merged.h5")
    _as_schema_1_merged_file(merged)

    def rewrite_index(change) -> None:
        with h5py.File(merged, "r+") as h5:
            index = json.loads(h5[MERGED_INDEX_DATASET][()].tobytes())
            index["entries"] = [change(row) for row in index["entries"]]
            del h5[MERGED_INDEX_DATASET]
            h5[MERGED_INDEX_DATASET] = np.frombuffer(json.dumps(index).encode(), np.uint8)

    with h5py.File(merged, "r") as h5:
        rows = json.loads(h5[MERGED_INDEX_DATASET][()].tobytes())["entries"]
    assert isinstance(rows[0], dict) and rows[0]["video_id"] == "a"
    with open_store(merged) as reader:
        expected = reader.get("b", "x")

    # a newer vidfeat added a field: this one ignores it
    rewrite_index(lambda row: {**row, "added_later": [1, 2]})
    with open_store(merged) as reader:
        assert reader.entries()[0].rows == 4
    # an older vidfeat lacked a field this one has (with a default): it takes the default
    rewrite_index(lambda row: {k: v for k, v in row.items() if k != "weights_sha256"})
    with open_store(merged) as reader:
        assert reader.entries()[0].weights_sha256 == ""
        np.testing.assert_array_equal(reader.get("b", "x"), expected)
    # vidfeat 0.1 wrote positional rows: still read
    rewrite_index(lambda row: [row[k] for k in ("video_id", "feature", "shard", "status",
                                                "reason", "config_hash", "rows", "dim",
                                                "dtype", "random_weights")] + [""])
    with open_store(merged) as reader:
        assert reader.entries()[1].video_id == "b"
    # a field without a default missing: one line naming it
    rewrite_index(lambda row: {"video_id": row[0], "feature": row[1]})
    with open_store(merged) as reader, pytest.raises(StoreError, match="lack shard, status"):
        reader.videos()


def test_extracting_again_replaces_rows_quietly_and_dropping_a_video_says_so(tmp_path: Path,
                                                                           caplog):
    store = create_store(tmp_path / "store")
    _indexed(store, "same", [_video("a"), _video("b")])
    with caplog.at_level(logging.WARNING, logger="vidfeat"):
        _indexed(store, "same", [_video("a", seed=3), _video("b", seed=4)])
    assert caplog.records == []  # a video extracted again is no news
    with caplog.at_level(logging.WARNING, logger="vidfeat"):
        _indexed(store, "same", [_video("a", seed=5)])
    [record] = caplog.records
    assert "written again without b/x" in record.getMessage()
    assert "dropped" not in record.getMessage()


def _outcomes() -> list[Outcome]:
    return [
        Outcome("a", "resnet152", "ok"), Outcome("a", "vggish", "ok"),
        Outcome("b", "resnet152", "failed", "decode failed after 38 frames"),
        Outcome("b", "vggish", "failed", "/c/b.mp4: audio lost at 0.557-2.090 s"),
        Outcome("c", "resnet152", "ok"),
        Outcome("c", "vggish", "skipped", "no audio stream"),
        Outcome("d", "resnet152", "up_to_date"), Outcome("d", "vggish", "up_to_date"),
        Outcome("e", "resnet152", "skipped", "no video stream"),
        Outcome("e", "vggish", "up_to_date"),
    ]


def test_a_run_report_is_written_into_the_store_and_read_back(tmp_path: Path, capsys):
    store = create_store(tmp_path / "store")
    report = build_report(_outcomes(), started=1_800_000_000.0, ended=1_800_000_075.5,
                          command=["vidfeat", "extract", "corpus", "--store", str(store)],
                          configuration={"features": ["resnet152", "vggish"]}, exit_code=1,
                          videos_total=7, rows={"resnet152": 16, "vggish": 3},
                          model_seconds={"resnet152": 3.0, "vggish": 0.5},
                          paths={v: f"/c/{v}.mp4" for v in "abce"})
    path = write_report(store, report)
    assert path.parent == store / RUNS_DIR and path.name.startswith("20270115T080000Z-")
    content = json.loads(path.read_text())
    assert content["format"] == "vidfeat-run" and content["seconds"] == 75.5
    # two videos of the run have no outcome (an interrupted run): not started
    assert content["videos"] == {"total": 7, "done": 2, "up_to_date": 1, "skipped": 1,
                                 "failed": 1, "not_started": 2}
    assert content["features"] == {"ok": 3, "up_to_date": 3, "skipped": 2, "failed": 2}
    assert content["throughput"]["resnet152"] == {"videos": 2, "rows": 16, "seconds": 3.0,
                                                  "videos_per_s": 0.667, "rows_per_s": 5.333}
    assert [f["video_id"] + "/" + f["feature"] for f in content["failures"]] == [
        "b/resnet152", "b/vggish"]
    assert content["failures"][1]["reason"].endswith("audio lost at 0.557-2.090 s")
    assert {f["source_path"] for f in content["failures"]} == {"/c/b.mp4"}
    [again] = read_reports(store)
    assert again == report
    assert _cli_in_process(capsys, "inspect", str(store), "--runs") == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    assert line.split()[:4] == ["2027-01-15T08:00:00+0000", "1m16s", "exit", "1"]
    assert "done 2, up to date 1, skipped 1, failed 1, not started 2" in line
    assert "vidfeat extract" in line


def test_inspect_failures_lists_every_failed_feature_from_the_index(tmp_path: Path, capsys):
    store = create_store(tmp_path / "store")
    _indexed(store, "s1", [VideoRecord("bad", {"source_path": "/c/bad.mp4"}, [
        FeatureRecord("resnet152", "failed", reason="decode failed after 38 frames"),
        FeatureRecord("vggish", "skipped", reason="no audio stream")])])
    _indexed(store, "s2", [_video("good")])
    assert _cli_in_process(capsys, "inspect", str(store), "--failures") == 0
    assert capsys.readouterr().out == "bad\tresnet152\tdecode failed after 38 frames\t/c/bad.mp4\n"
    assert _cli_in_process(capsys, "inspect", str(store), "--failures", "--runs") == 0
    assert capsys.readouterr().out.startswith("no runs recorded\n\nbad\tresnet152")
    # none failed: nothing on stdout, for `| wc -l`; a listing is of the whole store
    clean = create_store(tmp_path / "clean")
    _indexed(clean, "s1", [_video("good")])
    assert _cli_in_process(capsys, "inspect", str(clean), "--failures") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "no failures\n"
    assert _cli_in_process(capsys, "inspect", str(store), "bad", "--failures") == 2
    assert "give no VIDEO_ID" in capsys.readouterr().err


def _cli_in_process(capsys, *args: str) -> int:
    from vidfeat.cli import main

    capsys.readouterr()
    return main(list(args))


@pytest.mark.parametrize("flags", [["--batch-size", "0"], ["--features", ","],
                                   ["--features", " , "], ["--decode-threads", "0"]])
def test_bad_extract_flags_are_usage_errors_before_the_store_exists(tmp_path: Path, capsys,
                                                                    flags: list[str]):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    store = tmp_path / "store"
    assert _cli_in_process(capsys, "extract", str(video), "--store", str(store), *flags) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("vidfeat: error: --")
    assert not store.exists()
