"""The worker engine: a long video split into segments gives exactly the rows of an unsplit
run, batches filled from several videos give the rows of one video at a time, and streamed
audio gives the examples of the whole waveform. In-process (no Dask): the engine is what a
worker runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ffmpeg, make_video

from vidfeat.extractors.pool import ExtractorPool, ExtractorSpec
from vidfeat.media import probe
from vidfeat.media.timeline import frame_times
from vidfeat.pipeline.corpus import VideoSource
from vidfeat.pipeline.engine import Engine
from vidfeat.pipeline.plan import WorkUnit, segments
from vidfeat.pipeline.stitch import stitch, stitch_and_write
from vidfeat.storage.reader import open_store
from vidfeat.storage.store_dir import create_store

# every test runs real models (random weights) over real videos, seconds to half a minute each
pytestmark = pytest.mark.slow

CFR_SECONDS = 8


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine")
    cfr = root / "cfr.mp4"
    # keyframes every 10 frames: segment starts fall between keyframes
    ffmpeg("-f", "lavfi", "-t", str(CFR_SECONDS), "-i", "testsrc2=size=96x72:rate=8",
           "-f", "lavfi", "-t", str(CFR_SECONDS), "-i", "sine=frequency=440:sample_rate=44100",
           "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", "-c:a", "aac", str(cfr))
    vfr = root / "vfr.mp4"
    # two frames of every six kept for the first 5 s, then every frame: frame durations vary
    ffmpeg("-f", "lavfi", "-t", "6", "-i", "testsrc2=size=96x72:rate=24",
           "-vf", "select='lt(mod(n\\,6)\\,2)+gt(n\\,120)'", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p", str(vfr))
    ts = root / "ts.ts"
    # MPEG-TS starts its timestamps at 1.4 s, and a seek to its first frame lands on the
    # second keyframe
    ffmpeg("-f", "lavfi", "-t", "10", "-i", "testsrc2=size=96x72:rate=8", "-f", "lavfi",
           "-t", "10", "-i", "sine=frequency=440", "-c:v", "libx264", "-g", "40",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(ts))
    webm = root / "webm.webm"
    # Opus's pre-skip starts the container at -0.007 s: the first frame shows at 0.014 s
    ffmpeg("-f", "lavfi", "-t", "8", "-i", "testsrc2=size=96x72:rate=8", "-f", "lavfi",
           "-t", "8", "-i", "sine=frequency=1000:sample_rate=48000", "-c:v", "libvpx-vp9",
           "-b:v", "50k", "-deadline", "realtime", "-c:a", "libopus", "-shortest", str(webm))
    short = [make_video(root / f"short{i}.mp4", seconds=1.5 + i / 2, source=source)
             for i, source in enumerate(["mandelbrot", "life", "smptebars"])]
    return {"cfr": cfr, "vfr": vfr, "ts": ts, "webm": webm, **{p.stem: p for p in short}}


def _pool(name: str, **options: object) -> ExtractorPool:
    return ExtractorPool({name: ExtractorSpec(name, dict(options), random_weights=True)}, "cpu")


def _unit(path: Path, name: str, kind: str = "visual", segment: object = None) -> WorkUnit:
    return WorkUnit(VideoSource(path.stem, str(path)), kind, (name,),  # type: ignore[arg-type]
                    f"xx/{path.stem}.{kind}", probe(path), segment)  # type: ignore[arg-type]


def _rows(store: Path, video: str, feature: str) -> tuple[np.ndarray, np.ndarray]:
    with open_store(store) as opened:
        return opened.get(video, feature), opened.times(video, feature)


@pytest.mark.parametrize(("video", "name", "options"), [
    ("cfr", "resnet152", {"fps": 1.0}),
    ("cfr", "resnet152", {"frames": 10}),
    ("cfr", "c3d", {"stride": 16}),
    ("cfr", "c3d", {"stride": 8}),
    ("vfr", "resnet152", {"fps": 1.5}),
    ("vfr", "c3d", {"stride": 8}),
    # the last segments hold no sampled frame: the last row still ends with the video
    ("cfr", "resnet152", {"fps": 0.25}),
    ("ts", "resnet152", {"fps": 1.0}),
    ("ts", "c3d", {"stride": 16}),
    ("webm", "resnet152", {"fps": 1.0}),
])
def test_segments_stitch_into_the_unsplit_rows(videos: dict[str, Path], tmp_path: Path,
                                               video: str, name: str,
                                               options: dict[str, object]) -> None:
    path = videos[video]
    pool = _pool(name, **options)
    store = create_store(tmp_path / "store")
    whole = Engine(pool, batch_size=4, dtype="float32").run([_unit(path, name)], str(store))
    (record,) = [r for r in _read_records(store, whole.shards[0].relpath)]
    stride = int(options.get("stride", 1))
    parts = segments(frame_times(path), 2.0, stride, 16 if name == "c3d" else 0)
    assert len(parts) >= 3
    units = [_unit(path, name, segment=segment) for segment in parts]
    split = Engine(pool, batch_size=4, dtype="float32").run(units, str(store))
    assert not split.shards and len(split.parts) == len(parts)
    stitched = stitch(split.parts, {name: pool.get(name).modality})
    (feature,) = stitched.features
    assert feature.status == "ok", feature.reason
    data, times = record
    assert feature.data.shape == data.shape
    np.testing.assert_allclose(feature.times, times, rtol=0, atol=1e-9)
    np.testing.assert_allclose(feature.data, data, rtol=1e-4, atol=1e-4 * np.abs(data).max())
    # the run report's throughput counts a split video's model time, as an unsplit one's
    written = stitch_and_write(split.parts, {name: pool.get(name).modality}, str(store),
                               "float32")
    assert [outcome.status for outcome in written.outcomes] == ["ok"]
    assert written.rows == {name: len(data)}
    assert written.model_seconds[name] > 0
    assert written.model_seconds[name] == pytest.approx(
        sum(p.model_seconds[name] for p in split.parts))


def _read_records(store: Path, shard: str) -> list[tuple[np.ndarray, np.ndarray]]:
    import h5py

    with h5py.File(store / shard, "r") as handle:
        videos = handle["videos"]
        return [(group[f]["data"][()].astype(np.float32), group[f]["times"][()])
                for group in videos.values() for f in group]


def test_batches_across_videos_equal_one_video_at_a_time(videos: dict[str, Path],
                                                         tmp_path: Path) -> None:
    shorts = [videos[f"short{i}"] for i in range(3)]
    pool = ExtractorPool({n: ExtractorSpec(n, {}, random_weights=True)
                          for n in ("resnet152", "c3d")}, "cpu")
    together = create_store(tmp_path / "together")
    report = Engine(pool, batch_size=3, dtype="float32").run(
        [WorkUnit(VideoSource(p.stem, str(p)), "visual", ("resnet152", "c3d"),
                  f"xx/{p.stem}", probe(p)) for p in shorts], str(together))
    assert len(report.shards) == 1  # the task's videos in one pack
    assert {o.status for o in report.outcomes} == {"ok"}
    alone = create_store(tmp_path / "alone")
    for path in shorts:
        Engine(pool, batch_size=1, dtype="float32").run(
            [WorkUnit(VideoSource(path.stem, str(path)), "visual", ("resnet152", "c3d"),
                      f"xx/{path.stem}", probe(path))], str(alone))
    for store in (together, alone):
        from vidfeat.storage.index import StoreIndex

        StoreIndex(store).recover()
    for path in shorts:
        for feature in ("resnet152", "c3d"):
            data, times = _rows(together, path.stem, feature)
            expected, expected_times = _rows(alone, path.stem, feature)
            np.testing.assert_array_equal(times, expected_times)
            np.testing.assert_allclose(data, expected, rtol=1e-4,
                                       atol=1e-4 * np.abs(expected).max())


def test_streamed_audio_gives_the_examples_of_the_whole_waveform(videos: dict[str, Path]
                                                                 ) -> None:
    from vidfeat.extractors.vggish import VGGish
    from vidfeat.extractors.vggish_mel import waveform_to_examples
    from vidfeat.media.audio import iter_audio, load_audio

    info = probe(videos["cfr"])
    vggish = VGGish()
    stream = vggish.audio_stream(info.audio_start)
    items = []
    for _, block in iter_audio(info, block_samples=7001):  # blocks cut examples anywhere
        items += stream.push(block)
    items += stream.finish()
    expected = waveform_to_examples(load_audio(info), vggish.hop_frames)
    assert len(items) == len(expected) == 8
    np.testing.assert_array_equal(np.stack([item.tensor[0].numpy() for item in items]), expected)
    assert items[1].start == pytest.approx(info.audio_start + 0.96)


def _visual_rows(pool: ExtractorPool, paths: list[Path], store: Path, decoder: str
                 ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    from vidfeat.storage.index import StoreIndex

    create_store(store)
    report = Engine(pool, batch_size=4, dtype="float32", decoder=decoder).run(
        [WorkUnit(VideoSource(p.stem, str(p)), "visual", tuple(pool.specs), f"xx/{p.stem}",
                  probe(p)) for p in paths], str(store))
    assert {o.status for o in report.outcomes} == {"ok"}, report.outcomes
    StoreIndex(store).recover()
    return {(p.stem, name): _rows(store, p.stem, name) for p in paths for name in pool.specs}


def test_a_frame_model_alone_decodes_only_the_frames_it_may_take(videos: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    """ResNet-152 at 1 fps wants one frame a second: H.264's non-reference frames between are
    left undecoded. Its rows are exactly those of a run that decodes every frame (C3D beside
    it needs them all)."""
    from vidfeat.storage.index import StoreIndex

    paths = [videos["cfr"], videos["vfr"], videos["ts"]]
    rows, frames = {}, {}
    for names in (("resnet152",), ("resnet152", "c3d")):
        pool = ExtractorPool({n: ExtractorSpec(n, {}, random_weights=True) for n in names},
                             "cpu")
        store = create_store(tmp_path / "-".join(names))
        report = Engine(pool, batch_size=4, dtype="float32").run(
            [WorkUnit(VideoSource(p.stem, str(p)), "visual", names, f"xx/{p.stem}", probe(p))
             for p in paths], str(store))
        assert {o.status for o in report.outcomes} == {"ok"}
        StoreIndex(store).recover()
        rows[names] = {p.stem: _rows(store, p.stem, "resnet152") for p in paths}
        frames[names] = report.frames
    assert frames["resnet152",] < 0.8 * frames["resnet152", "c3d"]
    for video, (data, times) in rows["resnet152", "c3d"].items():
        np.testing.assert_array_equal(rows["resnet152",][video][1], times)
        np.testing.assert_array_equal(rows["resnet152",][video][0], data)


class _PoolDecodingOnAGpu(ExtractorPool):
    """Models on the CPU (there is no GPU here) but frames asked of the GPU, as on a GPU
    worker with --decoder torchcodec: torchcodec really refuses to open them on cuda here."""

    def decode_device(self, decoder: str) -> str:
        return "cpu" if self._gpu_decode_failed else "cuda"


def test_a_gpu_decode_that_cannot_start_leaves_the_cpus_frames(
        videos: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("torchcodec")
    specs = {n: ExtractorSpec(n, {}, random_weights=True) for n in ("resnet152", "c3d")}
    shorts = [videos["short0"], videos["short1"]]
    with caplog.at_level("WARNING", logger="vidfeat.extractors.pool"):
        fell_back = _visual_rows(_PoolDecodingOnAGpu(specs, "cpu"), shorts, tmp_path / "gpu",
                                 "torchcodec")
    warnings = [r.getMessage() for r in caplog.records if "decoding on the CPU" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per worker, not once per video
    assert "cannot open it on cuda" in warnings[0] and "short0.mp4" in warnings[0]
    on_cpu = _visual_rows(ExtractorPool(specs, "cpu"), shorts, tmp_path / "cpu", "torchcodec")
    for key, (data, times) in on_cpu.items():
        np.testing.assert_array_equal(fell_back[key][1], times)
        np.testing.assert_array_equal(fell_back[key][0], data)
    with open_store(tmp_path / "gpu") as store:
        attrs = store.attrs("short1", "c3d")
        assert (attrs["decoder"], attrs["decode_device"]) == ("torchcodec", "cpu")


def test_frames_decoded_as_tensors_give_the_rows_of_pyavs_frames(videos: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    # torchcodec's frames are tensors (on the GPU where it decodes there): the extractors'
    # preprocessing takes them as they are, and must give what it gives pyav's arrays
    pytest.importorskip("torchcodec")
    pool = ExtractorPool({n: ExtractorSpec(n, {}, random_weights=True)
                          for n in ("resnet152", "c3d", "r2plus1d_18")}, "cpu")
    paths = [videos["vfr"], videos["short2"]]
    tensors = _visual_rows(pool, paths, tmp_path / "torchcodec", "torchcodec")
    arrays = _visual_rows(pool, paths, tmp_path / "pyav", "pyav")
    for key, (data, times) in arrays.items():
        np.testing.assert_array_equal(tensors[key][1], times)
        np.testing.assert_allclose(tensors[key][0], data, rtol=1e-5,
                                   atol=1e-5 * np.abs(data).max())


def test_several_decode_threads_give_the_rows_of_one(videos: dict[str, Path],
                                                     tmp_path: Path) -> None:
    # GPU workers decode several units at once: items of different videos interleave in the
    # queue and the batches, and every video must still get its own rows in order
    pool = ExtractorPool({n: ExtractorSpec(n, {}, random_weights=True)
                          for n in ("resnet152", "c3d")}, "cpu")
    paths = [videos["vfr"], *(videos[f"short{i}"] for i in range(3))]
    rows = {}
    for threads in (1, 3):
        store = create_store(tmp_path / f"threads{threads}")
        report = Engine(pool, batch_size=4, dtype="float32", decoder_threads=2,
                        decode_threads=threads).run(
            [WorkUnit(VideoSource(p.stem, str(p)), "visual", ("resnet152", "c3d"),
                      f"xx/{p.stem}", probe(p)) for p in paths], str(store))
        assert {o.status for o in report.outcomes} == {"ok"}
        assert len(report.shards) == 1  # the task's videos in one pack
        from vidfeat.storage.index import StoreIndex

        StoreIndex(store).recover()
        rows[threads] = {(p.stem, n): _rows(store, p.stem, n) for p in paths
                         for n in ("resnet152", "c3d")}
    for key, (data, times) in rows[1].items():
        np.testing.assert_array_equal(rows[3][key][1], times)
        np.testing.assert_allclose(rows[3][key][0], data, rtol=1e-4,
                                   atol=1e-4 * np.abs(data).max())


def test_a_task_of_one_unit_gives_its_decoder_every_decoder_thread(videos: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    # a long video's segment is a task of its own: one decode thread, which must not get a
    # quarter of the threads because four were allowed
    engine = Engine(_pool("resnet152"), batch_size=4, dtype="float32", decoder_threads=8,
                    decode_threads=4)
    engine.run([_unit(videos["short0"], "resnet152")], str(create_store(tmp_path / "s")))
    assert engine._threads_per_decoder == 8
    engine.run([_unit(videos[f"short{i}"], "resnet152") for i in range(2)],
               str(create_store(tmp_path / "t")))
    assert engine._threads_per_decoder == 4
