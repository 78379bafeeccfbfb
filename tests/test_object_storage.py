"""Videos read from object storage: a real S3 API server (moto's, with IAM enforced) reached
through s3fs with AWS_ENDPOINT_URL as a user reaches MinIO, behind a proxy that sees every
request and can drop a connection, and a static HTTP server for https-style URLs."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import vidfeat
from tests.conftest import make_video
from tests.object_servers import MotoServer, Proxy, http_server
from vidfeat.errors import ConfigError
from vidfeat.pipeline.corpus import scan
from vidfeat.pipeline.prepare import RunReport

FEATURES = {"resnet152": {"fps": 2}, "vggish": None}
# tests marked slow extract (a local Dask worker, the S3 server); the others are quick


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The server, the proxy the runs go through, the videos (also on disk), the environment
    a user would set, and one local Dask worker started with that environment."""
    from distributed import Client, LocalCluster

    server = MotoServer()
    proxy = Proxy(server.port)
    local = tmp_path_factory.mktemp("local")
    make_video(local / "one.mp4", seconds=2.5)
    make_video(local / "two.webm", seconds=2.0, fps=10)
    make_video(local / "long.mp4", seconds=12.0, audio=False)
    make_video(local / "other.mp4", seconds=3.0, source="mandelbrot")
    saved = dict(os.environ)
    os.environ.update(AWS_ENDPOINT_URL=proxy.endpoint, AWS_ACCESS_KEY_ID=server.key_id,
                      AWS_SECRET_ACCESS_KEY=server.secret, AWS_DEFAULT_REGION="us-east-1",
                      VIDFEAT_REMOTE_RETRIES="3", VIDFEAT_REMOTE_BACKOFF="0.05",
                      VIDFEAT_HOME=str(tmp_path_factory.mktemp("home")),
                      TMPDIR=str(tmp_path_factory.mktemp("tmp")))
    client = server.client()
    for bucket in ("vids", "locked", "hidden"):
        client.create_bucket(Bucket=bucket)
    for name in ("one.mp4", "two.webm"):
        client.upload_file(str(local / name), "vids", f"corpus/{name}")
    client.put_object(Bucket="vids", Key="corpus/notes.txt", Body=b"not a video")
    client.put_object(Bucket="vids", Key="corpus/sub/empty.mp4", Body=b"")
    client.upload_file(str(local / "long.mp4"), "vids", "long/long.mp4")
    client.upload_file(str(local / "other.mp4"), "vids", "drop/other.mp4")
    client.upload_file(str(local / "one.mp4"), "locked", "one.mp4")
    client.upload_file(str(local / "one.mp4"), "hidden", "one.mp4")
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0")
    dask_client = Client(cluster)
    try:
        yield {"server": server, "proxy": proxy, "local": local, "client": client,
               "dask": dask_client}
    finally:
        dask_client.close()
        cluster.close()
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def _extract(s3: dict, sources: list[str], store: Path, **options: object) -> RunReport:
    return vidfeat.extract(sources, store, features=options.pop("features", FEATURES),
                           cluster=s3["dask"], random_weights=True, progress=False, **options)


@pytest.fixture(scope="module")
def bucket_store(s3: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("bucket") / "store"
    report = _extract(s3, ["s3://vids/corpus/"], store)
    assert report.exit_code == 1, report.summary()  # the 0-byte object
    return store


@pytest.mark.slow
def test_listing_a_prefix_takes_the_video_objects_with_their_etags(s3: dict) -> None:
    corpus = scan(["s3://vids/corpus/"])
    assert [(v.video_id, v.path) for v in corpus.videos] == [
        ("one", "s3://vids/corpus/one.mp4"), ("empty", "s3://vids/corpus/sub/empty.mp4"),
        ("two", "s3://vids/corpus/two.webm")]
    one = corpus.videos[0].remote
    assert one.size == (s3["local"] / "one.mp4").stat().st_size and len(one.etag) == 32
    assert [v.video_id for v in scan(["s3://vids/corpus/"], extensions=["webm"]).videos] \
        == ["two"]


@pytest.mark.slow
def test_a_bucket_extracts_as_the_same_files_on_disk(s3: dict, bucket_store: Path,
                                                     tmp_path: Path) -> None:
    local = tmp_path / "local"
    shutil.copytree(s3["local"], local, ignore=shutil.ignore_patterns("long.mp4", "other.mp4"))
    assert _extract(s3, [str(local)], tmp_path / "store").exit_code == 0
    by_url, on_disk = vidfeat.open_store(bucket_store), vidfeat.open_store(tmp_path / "store")
    for video in ("one", "two"):
        for feature in FEATURES:
            np.testing.assert_array_equal(by_url.get(video, feature), on_disk.get(video, feature))
            np.testing.assert_array_equal(by_url.times(video, feature),
                                          on_disk.times(video, feature))
    attrs = by_url.attrs("one")
    assert attrs["source_path"] == "s3://vids/corpus/one.mp4"
    assert attrs["fingerprint"].startswith("object:") and attrs["object_etag"]


def test_a_zero_byte_object_is_its_videos_failure(bucket_store: Path) -> None:
    failures = {(video, feature): reason
                for video, feature, _, reason in vidfeat.open_store(bucket_store).failures()}
    assert set(failures) == {("empty", "resnet152"), ("empty", "vggish")}
    assert "s3://vids/corpus/sub/empty.mp4" in failures["empty", "resnet152"]
    assert "\n" not in failures["empty", "resnet152"]


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["decord", "torchcodec"])
def test_decoders_that_need_a_file_read_a_spooled_copy(s3: dict, bucket_store: Path,
                                                       tmp_path: Path, decoder: str) -> None:
    store = tmp_path / "store"
    features = {"resnet152": {"fps": 2}}
    report = _extract(s3, ["s3://vids/corpus/one.mp4"], store, features=features,
                      decoder=decoder)
    assert report.exit_code == 0, report.summary()
    np.testing.assert_array_equal(vidfeat.open_store(store).get("one", "resnet152"),
                                  vidfeat.open_store(bucket_store).get("one", "resnet152"))
    assert not list(Path(os.environ["TMPDIR"]).glob("vidfeat-spool-*"))  # removed after use


@pytest.mark.slow
def test_an_unchanged_bucket_is_listed_not_downloaded(s3: dict, bucket_store: Path) -> None:
    s3["proxy"].reset()
    report = _extract(s3, ["s3://vids/corpus/"], bucket_store)
    assert report.up_to_date == 2
    reads = [line for line in s3["proxy"].requests
             if line.startswith("GET") and "list-type" not in line]
    assert not any("one.mp4" in line or "two.webm" in line for line in reads), reads
    assert s3["proxy"].bytes_down < 20_000  # listings and the empty object's HEAD only


@pytest.mark.slow
def test_a_changed_object_is_extracted_again(s3: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    s3["client"].upload_file(str(s3["local"] / "one.mp4"), "vids", "changing/v.mp4")
    assert _extract(s3, ["s3://vids/changing/"], store, features=["vggish"]).exit_code == 0
    before = vidfeat.open_store(store).get("v", "vggish")
    s3["client"].upload_file(str(s3["local"] / "other.mp4"), "vids", "changing/v.mp4")
    report = _extract(s3, ["s3://vids/changing/"], store, features=["vggish"])
    assert report.exit_code == 0 and report.up_to_date == 0 and report.extracted == 1
    after = vidfeat.open_store(store).get("v", "vggish")
    assert after.shape != before.shape  # 3 s of audio where there were 2.5


@pytest.mark.slow
def test_denied_reads_fail_their_videos_and_show_no_credential(
        s3: dict, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    listed = tmp_path / "list.txt"
    listed.write_text("s3://locked/one.mp4\ns3://vids/corpus/gone.mp4\n")
    report = _extract(s3, ["s3://locked/", f"@{listed}"], store)
    assert report.exit_code == 1
    reasons = {o.video_id: o.reason for o in report.failed}
    assert reasons["one"] == "s3://locked/one.mp4: access denied", reasons
    assert reasons["gone"] == "not found"
    with pytest.raises(ConfigError, match=r"^s3://hidden/: access denied$"):
        _extract(s3, ["s3://hidden/"], tmp_path / "other")
    secret, key_id = s3["server"].secret, s3["server"].key_id
    seen = [report.summary(), *capfd.readouterr()]
    seen += [path.read_bytes().decode("latin-1") for path in store.rglob("*") if path.is_file()]
    for text in seen:
        assert secret not in text and key_id not in text


@pytest.mark.slow
def test_a_dropped_connection_fails_the_video_and_stores_no_rows(s3: dict,
                                                                 tmp_path: Path) -> None:
    store = tmp_path / "store"
    s3["proxy"].cut = (r"GET /vids/drop/other\.mp4", 5000)
    try:
        report = _extract(s3, ["s3://vids/drop/"], store)
    finally:
        s3["proxy"].cut = None
    assert report.exit_code == 1
    reasons = {o.feature: o.reason for o in report.failed}
    assert set(reasons) == {"resnet152", "vggish"}
    assert reasons["resnet152"].startswith("s3://vids/drop/other.mp4 (bytes 0-")
    assert reasons["resnet152"].endswith("(after 3 tries)") and "\n" not in reasons["resnet152"]
    assert report.remote["retries"] >= 2  # counted, in the summary and the run report
    assert f"{report.remote['retries']} retried" in report.summary()
    (recorded,) = [json.loads(path.read_text()) for path in (store / "runs").glob("*.json")]
    assert recorded["remote"] == report.remote
    opened = vidfeat.open_store(store)
    assert {f for v, f, *_ in opened.failures() if v == "other"} == {"resnet152", "vggish"}
    # the network back: the same command extracts it
    assert _extract(s3, ["s3://vids/drop/"], store).exit_code == 0


@pytest.mark.slow
def test_a_long_video_by_url_split_equals_unsplit(s3: dict, tmp_path: Path) -> None:
    features = {"resnet152": {"fps": 1}}
    whole = _extract(s3, ["s3://vids/long/"], tmp_path / "whole", features=features)
    split = _extract(s3, ["s3://vids/long/"], tmp_path / "split", features=features,
                     segment_seconds=4.0)
    assert whole.exit_code == split.exit_code == 0
    a = vidfeat.open_store(tmp_path / "whole")
    b = vidfeat.open_store(tmp_path / "split")
    np.testing.assert_allclose(a.get("long", "resnet152", dtype=np.float32),
                               b.get("long", "resnet152", dtype=np.float32), rtol=1e-3,
                               atol=1e-3)
    np.testing.assert_array_equal(a.times("long", "resnet152"), b.times("long", "resnet152"))
    assert len(a.times("long", "resnet152")) == 12


@pytest.mark.slow
def test_https_style_sources_from_a_static_server(s3: dict, tmp_path: Path) -> None:
    with http_server(s3["local"]) as server:
        base = f"http://127.0.0.1:{server.server_port}"
        store = tmp_path / "store"
        report = _extract(s3, [f"{base}/one.mp4"], store)
        assert report.exit_code == 0, report.summary()
        assert vidfeat.open_store(store).attrs("one")["source_path"] == f"{base}/one.mp4"
        assert _extract(s3, [f"{base}/one.mp4"], store).up_to_date == 1
        listed = scan([f"{base}/"]).videos  # a prefix: the index page's links, then a HEAD each
        assert sorted(v.video_id for v in listed) == ["long", "one", "other", "two"]
        assert all(v.remote.size > 0 and v.remote.modified for v in listed)
        with pytest.raises(ConfigError, match="credentials in a source URL"):
            scan([f"http://user:pw@127.0.0.1:{server.server_port}/one.mp4"])


def test_urls_are_shown_without_credentials_and_braces_expand_as_bash_does() -> None:
    from vidfeat.media.remote import redact
    from vidfeat.pipeline.sources import expand_braces

    assert redact("https://user:pw@cdn.example.org:8443/v.mp4?X-Amz-Signature=abc&part=2") \
        == "https://cdn.example.org:8443/v.mp4?X-Amz-Signature=REDACTED&part=2"
    assert redact("s3://KEY:SECRET@bucket/v.mp4") == "s3://bucket/v.mp4"
    with pytest.raises(ConfigError) as refused:
        scan(["s3://KEY:SECRET@bucket/v.mp4"])
    assert "SECRET" not in str(refused.value) and "KEY" not in str(refused.value)
    assert expand_braces("s/{00008..00011}.tar") == [
        "s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]


def test_a_job_files_credentials_stay_out_of_the_run_report() -> None:
    from vidfeat.jobs.jobfile import job_from_document
    from vidfeat.jobs.submit import recorded_cluster

    job = job_from_document({
        "sources": ["/data/corpus"], "store": "/data/store", "features": ["vggish"],
        "cluster": {"kubernetes": {"image": "vidfeat:1", "env": {
            "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ACCESS_KEY_ID": "AKIDVALUE",
            "AWS_ENDPOINT_URL": "http://minio:9000"}}}},
        "job.yaml", Path("/"))
    recorded = repr(recorded_cluster(job.cluster))
    assert "s3cr3t-value" not in recorded and "AKIDVALUE" not in recorded
    assert "http://minio:9000" in recorded  # what is no credential stays, for debugging
    assert job.cluster.settings["env"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"  # workers


@pytest.mark.slow
def test_the_command_line_and_a_job_file_take_a_bucket(s3: dict, tmp_path: Path) -> None:
    import yaml

    from vidfeat.cli import main

    address = s3["dask"].scheduler.address
    store = tmp_path / "store"
    assert main(["extract", "s3://vids/corpus/one.mp4", "--store", str(store), "--features",
                 "vggish", "--random-weights", "--no-progress", "--scheduler", address]) == 0
    assert vidfeat.open_store(store).get("one", "vggish").shape == (2, 128)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"sources": ["s3://vids/long/"], "store": str(store),
                                   "features": ["vggish"], "random_weights": True,
                                   "progress": False, "cluster": {"address": address}}))
    assert main(["submit", str(job)]) == 0
    assert [(f.video_id, f.status) for f in vidfeat.open_store(store).failures()] == [
        ("long", "skipped")]  # a video without audio
