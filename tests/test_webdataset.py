"""WebDataset / video2dataset tar shards as a source, written with the ``webdataset`` package
in video2dataset's layout (``{key}.mp4``, ``{key}.json``, ``{key}.txt`` per sample): local,
named by a brace pattern, and by URL from a static HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import vidfeat
from tests.conftest import make_video
from tests.object_servers import http_server
from vidfeat.pipeline.corpus import scan
from vidfeat.pipeline.prepare import RunReport

FEATURES = {"resnet152": {"fps": 2}, "vggish": None}


def _write_shard(path: Path, samples: list[tuple[str, bytes, dict]]) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for key, video, meta in samples:
            sink.write({"__key__": key, "mp4": video, "json": json.dumps(meta).encode(),
                        "txt": meta["caption"].encode()})


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from distributed import Client, LocalCluster

    root = tmp_path_factory.mktemp("shards")
    videos = root / "videos"
    videos.mkdir()
    make_video(videos / "a.mp4", seconds=2.0)
    make_video(videos / "b.mp4", seconds=2.5, source="mandelbrot")
    make_video(videos / "c.mp4", seconds=3.0)
    data = {name: (videos / f"{name}.mp4").read_bytes() for name in "abc"}

    def meta(key: str, caption: str) -> dict:
        return {"key": key, "url": f"https://example.com/{key}.mp4", "caption": caption,
                "status": "success"}

    (root / "shards").mkdir()
    _write_shard(root / "shards" / "00000.tar", [
        ("000000000", data["a"], meta("000000000", "a test pattern")),
        ("000000001", b"\x00\x00\x00\x18ftypmp42" + bytes(3000), meta("000000001", "corrupt")),
    ])
    _write_shard(root / "shards" / "00001.tar", [
        ("000010000", data["b"], meta("000010000", "a fractal")),
        ("000010001", data["c"], meta("000010001", "another pattern")),
    ])
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0")
    client = Client(cluster)
    try:
        yield {"root": root, "videos": videos, "dask": client}
    finally:
        client.close()
        cluster.close()


def _extract(shards: dict, sources: list[str], store: Path) -> RunReport:
    return vidfeat.extract(sources, store, features=FEATURES, cluster=shards["dask"],
                           random_weights=True, progress=False)


@pytest.fixture(scope="module")
def shard_store(shards: dict) -> tuple[Path, RunReport]:
    store = shards["root"] / "store"
    pattern = str(shards["root"] / "shards" / "{00000..00001}.tar")  # as a job file has it
    return store, _extract(shards, [pattern], store)


@pytest.mark.slow
def test_every_video_member_is_a_video_keyed_by_its_sample(shards: dict) -> None:
    corpus = scan([str(shards["root"] / "shards" / "{00000..00001}.tar")])
    assert [v.video_id for v in corpus.videos] == ["000000000", "000000001", "000010000",
                                                   "000010001"]
    first = corpus.videos[0]
    assert first.path.startswith(str(shards["root"] / "shards" / "00000.tar") + "#000000000.mp4@")
    assert json.loads(first.metadata)["caption"] == "a test pattern"


@pytest.mark.slow
def test_members_extract_as_the_files_they_were(shards: dict, shard_store: tuple,
                                                tmp_path: Path) -> None:
    store, report = shard_store
    assert report.exit_code == 1  # the corrupt member
    assert _extract(shards, [str(shards["videos"])], tmp_path / "files").exit_code == 0
    from_tar, from_files = vidfeat.open_store(store), vidfeat.open_store(tmp_path / "files")
    for key, name in (("000000000", "a"), ("000010000", "b"), ("000010001", "c")):
        for feature in FEATURES:
            np.testing.assert_array_equal(from_tar.get(key, feature), from_files.get(name, feature))
    attrs = from_tar.attrs("000010000")
    assert json.loads(attrs["sample"])["caption"] == "a fractal"
    assert attrs["source_path"].startswith(str(shards["root"] / "shards" / "00001.tar#"))


@pytest.mark.slow
def test_a_corrupt_member_is_that_samples_failure(shard_store: tuple) -> None:
    store, report = shard_store
    assert {(o.video_id, o.feature) for o in report.failed} == {("000000001", "resnet152"),
                                                                 ("000000001", "vggish")}
    reason = report.failed[0].reason
    assert "00000.tar#000000001.mp4" in reason and "\n" not in reason
    assert sorted(vidfeat.open_store(store).videos()) == ["000000000", "000010000", "000010001"]


@pytest.mark.slow
def test_a_rerun_over_unchanged_shards_is_up_to_date(shards: dict, shard_store: tuple) -> None:
    store, _ = shard_store
    report = _extract(shards, [str(shards["root"] / "shards" / "00001.tar")], store)
    assert report.exit_code == 0 and report.up_to_date == 2


@pytest.mark.slow
def test_a_shard_by_url_is_listed_once_and_read_by_ranges(shards: dict, tmp_path: Path) -> None:
    with http_server(shards["root"]) as server:
        url = f"http://127.0.0.1:{server.server_port}/shards/00001.tar"
        store = tmp_path / "store"
        report = _extract(shards, [url], store)
        assert report.exit_code == 0, report.summary()
        opened = vidfeat.open_store(store)
        assert sorted(opened.videos()) == ["000010000", "000010001"]
        assert opened.attrs("000010001")["source_path"].startswith(url + "#000010001.mp4@")
        server.requests.clear()
        assert _extract(shards, [url], store).up_to_date == 2
        # the member list is cached by the tar's version: a HEAD, no body read
        assert [r.split()[0] for r in server.requests] == ["HEAD"], server.requests


@pytest.mark.slow
def test_a_truncated_shard_keeps_the_members_before_the_cut(shards: dict,
                                                             tmp_path: Path) -> None:
    whole = (shards["root"] / "shards" / "00001.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    members = scan([str(shards["root"] / "shards" / "00001.tar")]).videos
    last = members[-1].remote
    offset = int(members[-1].path.rsplit("@", 1)[1].split("+")[0])
    cut.write_bytes(whole[:offset + last.size // 2])
    report = _extract(shards, [str(cut)], tmp_path / "store")
    assert report.exit_code == 1
    assert {o.video_id for o in report.failed} == {"000010001"}
    assert "the tar ends inside this member" in report.failed[0].reason
