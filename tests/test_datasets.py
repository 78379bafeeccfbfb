"""Datasets on a store extracted from synthetic videos: shapes, masks, padding, vocabulary,
2D-TAN's temporal map, the annotation formats, DataLoader workers and merged files."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from training_corpus import SOURCES, TrainingCorpus

from vidfeat import open_store
from vidfeat.cli import main
from vidfeat.datasets import (
    CaptioningDataset,
    GroundingDataset,
    Moment,
    TaggingDataset,
    TallDataset,
    Vocabulary,
    average_to_fixed_length,
    classes_of,
    collate_captions,
    collate_moments,
    collate_tags,
    load_captions,
    load_classes,
    load_moments,
    load_tags,
    seeded_split,
    sliding_windows,
    tall_windows,
    temporal_map_target,
    tokenize,
)
from vidfeat.datasets.grounding import map_mask, span_iou
from vidfeat.storage.export import export_per_video
from vidfeat.storage.index import StoreIndex
from vidfeat.storage.schema import FeatureRecord, VideoRecord
from vidfeat.storage.store_dir import create_store
from vidfeat.storage.writer import write_shard


@pytest.fixture(scope="session")
def merged(training: TrainingCorpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "store.h5"
    assert main(["merge", str(training.store), str(out)]) == 0
    return out


# -- text ----------------------------------------------------------------------------------

def test_vocabulary_specials_min_count_and_the_28_id_cut() -> None:
    assert tokenize("A man, riding a Horse!") == ["a", "man", "riding", "a", "horse"]
    vocab = Vocabulary.build(["a man rides", "a man runs", "a dog"], min_count=2)
    assert vocab.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "man"]
    assert vocab.encode("A man sings.") == [1, 4, 5, 3, 2]
    long = vocab.encode(" ".join(["a"] * 40), max_len=28)
    assert len(long) == 28 and long[0] == 1 and long[-1] == 2 and long[1:27] == [4] * 26
    assert vocab.decode([1, 4, 5, 2, 4, 0]) == ["a", "man"]
    assert Vocabulary(vocab.itos) == vocab


# -- captioning ------------------------------------------------------------------------------

def test_load_captions_msrvtt_plain_and_a_bad_file(tmp_path: Path,
                                                   training: TrainingCorpus) -> None:
    msrvtt = load_captions(training.annotation("msrvtt.json"))
    assert msrvtt.captions["video0"] == [SOURCES["testsrc2"], SOURCES["testsrc2"].capitalize()
                                         + "."]
    assert msrvtt.splits["video2"] == "validate" and msrvtt.splits["video0"] == "train"
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"video1": ["one", "two"]}))
    assert load_captions(plain).captions == {"video1": ["one", "two"]} and not load_captions(
        plain).splits
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="bad.json"):
        load_captions(bad)


def test_captioning_takes_40_frames_uniformly_and_fuses_audio_on_frame_rows(
        training: TrainingCorpus) -> None:
    store = open_store(training.store)
    vocab = Vocabulary.build(SOURCES.values())
    captions = {"video0": [SOURCES["testsrc2"]], "quiet": ["silence"]}
    data = CaptioningDataset(store, captions, vocab, fuse=("vggish",))
    item = data[data.items.index(("video0", 0))]
    frames = store.get("video0", "resnet152")
    assert item["features"].shape == (40, 2048 + 128)
    # S2VT: round(linspace(0, N-1, 40)); two rows -> 20 of each (0.5 rounds to even: 0)
    expected = frames[np.round(np.linspace(0, len(frames) - 1, 40)).astype(int)]
    np.testing.assert_array_equal(item["features"][:, :2048].numpy(), expected)
    assert (np.round(np.linspace(0, 1, 40)) == 0).sum() == 20
    # vggish rows [k, k + 0.96] onto frame rows [0, 1), [1, 2): each frame row overlaps one
    audio, times = store.get("video0", "vggish"), store.times("video0", "vggish")
    assert store.times("video0", "resnet152").tolist() == [[0.0, 1.0], [1.0, 2.0]]
    assert np.allclose(times[:, 0], [0.0, 1.0])
    np.testing.assert_allclose(item["features"][0, 2048:].numpy(), audio[0], rtol=1e-6)
    np.testing.assert_allclose(item["features"][-1, 2048:].numpy(), audio[1], rtol=1e-6)
    assert item["present"].tolist() == [True, True]
    assert item["caption"].tolist() == vocab.encode(SOURCES["testsrc2"])
    # no audio stream: zeros where vggish would be, and ``present`` says so
    quiet = data[data.items.index(("quiet", 0))]
    assert quiet["video_id"] == "quiet" and quiet["present"].tolist() == [True, False]
    assert not quiet["features"][:, 2048:].any()


def test_captioning_unpadded_batches_carry_masks(training: TrainingCorpus) -> None:
    captions = load_captions(training.annotation("msrvtt.json")).captions
    captions["quiet"] = ["a very long caption about nothing at all"]
    vocab = Vocabulary.build(s for refs in captions.values() for s in refs)
    data = CaptioningDataset(training.store, captions, vocab, frames=None)
    batch = collate_captions([data[data.items.index(("video0", 0))],
                              data[data.items.index(("quiet", 0))]])
    assert batch["features"].shape == (2, 2, 2048)
    assert batch["feature_mask"].tolist() == [[True, True], [True, False]]
    assert not batch["features"][1, 1].any()
    lengths = [len(vocab.encode(SOURCES["testsrc2"])),
               len(vocab.encode(captions["quiet"][0]))]
    assert batch["caption_mask"].sum(dim=1).tolist() == lengths
    assert (batch["captions"][0, lengths[0]:] == vocab.pad).all()


def test_videos_missing_from_the_store_are_reported_once_and_skipped(
        training: TrainingCorpus, caplog: pytest.LogCaptureFixture) -> None:
    captions = load_captions(training.annotation("msrvtt.json")).captions
    with caplog.at_level(logging.WARNING, logger="vidfeat.datasets"):
        data = CaptioningDataset(training.store, captions, Vocabulary([]), source="msrvtt.json")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "msrvtt.json: 1 annotated videos are not in" in warnings[0] and "video404" in warnings[0]
    assert len(data) == 18 and "video404" not in data.references


def test_a_video_whose_feature_did_not_extract_is_reported_with_why(
        training: TrainingCorpus, caplog: pytest.LogCaptureFixture) -> None:
    # "quiet" is in the store, but has no audio: its vggish was skipped, not lost
    captions = {"video0": [SOURCES["testsrc2"]], "quiet": ["silence"]}
    with caplog.at_level(logging.WARNING, logger="vidfeat.datasets"):
        data = CaptioningDataset(training.store, captions, Vocabulary([]), feature="vggish",
                                 source="caps.json")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["caps.json: 1 have no usable vggish rows (quiet: skipped (no audio "
                        "stream)); skipped"]
    assert [video for video, _ in data.items] == ["video0"]


# -- grounding -------------------------------------------------------------------------------

def published_average_to_fixed_length(visual_input: torch.Tensor,
                                      num_sample_clips: int) -> torch.Tensor:
    """microsoft/VideoX 2D-TAN/lib/datasets/__init__.py, with config.DATASET.NUM_SAMPLE_CLIPS
    as an argument."""
    num_clips = visual_input.shape[0]
    idxs = torch.arange(0, num_sample_clips + 1, 1.0) / num_sample_clips * num_clips
    idxs = torch.min(torch.round(idxs).long(), torch.tensor(num_clips - 1))
    new_visual_input = []
    for i in range(num_sample_clips):
        s_idx, e_idx = idxs[i].item(), idxs[i + 1].item()
        if s_idx < e_idx:
            new_visual_input.append(torch.mean(visual_input[s_idx:e_idx], dim=0))
        else:
            new_visual_input.append(visual_input[s_idx])
    return torch.stack(new_visual_input, dim=0)


@pytest.mark.parametrize("rows,length", [(10, 4), (4, 10), (7, 7), (128, 128), (300, 128)])
def test_average_to_fixed_length_is_2dtans(rows: int, length: int) -> None:
    x = np.random.default_rng(rows).normal(size=(rows, 5)).astype(np.float32)
    np.testing.assert_allclose(average_to_fixed_length(x, length),
                               published_average_to_fixed_length(torch.from_numpy(x), length),
                               rtol=1e-6)


def test_average_to_fixed_length_by_hand() -> None:
    x = np.array([[0.0], [2.0], [4.0], [6.0]], dtype=np.float32)
    # bounds round(0, 2, 4) clamped to N-1 = 3: rows [0, 2) and [2, 3); as published, the
    # last row never enters a mean
    assert average_to_fixed_length(x, 2).tolist() == [[1.0], [4.0]]
    assert average_to_fixed_length(x, 1).tolist() == [[2.0]]


def test_temporal_map_target_by_hand() -> None:
    # duration 4 s, 4 cells: candidate (i, j) spans [i, j + 1] seconds; moment [1, 3]
    target = temporal_map_target(1.0, 3.0, 4.0, 4)
    expected = np.array([[0.0, 1 / 3, 2 / 3, 0.5],
                         [0.0, 0.5, 1.0, 2 / 3],
                         [0.0, 0.0, 0.5, 1 / 3],
                         [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(target, expected, rtol=1e-6)
    assert map_mask(3).tolist() == [[True, True, True], [False, True, True],
                                    [False, False, True]]


def test_load_moments_charades_tacos_activitynet(tmp_path: Path) -> None:
    charades = tmp_path / "charades_sta_test.txt"
    charades.write_text("3MSZA 24.3 30.4##person turn a light on.\nAB12 5.0 5.0##empty.\n")
    assert load_moments(charades) == [Moment("3MSZA", 24.3, 30.4, "person turn a light on")]
    tacos = tmp_path / "test.json"  # 2D-TAN's data/TACoS: timestamps in frames
    tacos.write_text(json.dumps({"s30-d52.avi": {
        "num_frames": 300, "fps": 30.0, "timestamps": [[30, 150], [200, 400], [90, 60]],
        "sentences": ["He takes a knife.", "He cuts.", "backwards"]}}))
    assert load_moments(tacos) == [Moment("s30-d52.avi", 1.0, 5.0, "He takes a knife.", 10.0),
                                   Moment("s30-d52.avi", 200 / 30, 10.0, "He cuts.", 10.0)]
    activitynet = tmp_path / "val.json"
    activitynet.write_text(json.dumps({"v_uqiMw7tQ1Cc": {
        "duration": 55.15, "timestamps": [[0.28, 55.15], [13.79, 60.0]],
        "sentences": ["A weight lifting tutorial is given.", "  The coach helps."]}}))
    assert load_moments(activitynet)[1] == Moment("v_uqiMw7tQ1Cc", 13.79, 55.15,
                                                  "The coach helps.", 55.15)
    broken = tmp_path / "broken.txt"
    broken.write_text("no hashes here\n")
    with pytest.raises(ValueError, match=r"broken.txt:1"):
        load_moments(broken)


def test_grounding_items_from_a_scene_change(training: TrainingCorpus) -> None:
    moments = load_moments(training.annotation("charades_sta_train.txt"))
    vocab = Vocabulary.build(m.sentence for m in moments)
    data = GroundingDataset(training.store, moments, vocab, feature="vggish", num_segments=6,
                            normalize=False)
    index = next(i for i, (v, m) in enumerate(data.moments)
                 if v == "scene_bars_2" and m.start == 2.0)
    item = data[index]
    rows = open_store(training.store).get("scene_bars_2", "vggish")
    duration = item["duration"]
    assert duration == pytest.approx(6.0, abs=0.05)
    np.testing.assert_allclose(item["features"].numpy(), average_to_fixed_length(rows, 6))
    assert item["span"].tolist() == pytest.approx([2 / duration, min(6.0, duration) / duration])
    np.testing.assert_allclose(item["map_target"].numpy(),
                               temporal_map_target(2.0, min(6.0, duration), duration, 6))
    assert item["map_target"][2, 5] == pytest.approx(1.0, abs=0.02)  # [2 s, end]
    normalized = GroundingDataset(training.store, moments, vocab, feature="vggish",
                                  num_segments=12)[index]["features"]
    assert normalized.shape == (12, 128)  # 6 rows repeated to 12, each of unit length
    np.testing.assert_allclose(normalized.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    batch = collate_moments([data[0], data[index]])
    assert batch["features"].shape == (2, 6, 128) and batch["map_targets"].shape == (2, 6, 6)
    assert batch["word_mask"].sum(dim=1).tolist() == [len(data[0]["words"]), len(item["words"])]


def test_tall_sliding_windows_and_context_by_hand() -> None:
    assert sliding_windows(6.0, (2.0,), overlap=0.5).tolist() == [
        [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]]
    assert sliding_windows(3.0, (4.0,)).tolist() == [[0.0, 3.0]]
    rows = np.arange(6, dtype=np.float32)[:, None]  # one row per second, value = its second
    times = np.stack([np.arange(6.0), np.arange(1.0, 7.0)], axis=1)
    features = tall_windows(rows, times, np.array([[0.0, 2.0], [2.0, 4.0]]))
    # [mean(left context), mean(window), mean(right context)]; no rows left of 0 s: zeros
    assert features.tolist() == [[0.0, 0.5, 2.5], [0.5, 2.5, 4.5]]
    assert span_iou(np.array([[0.0, 2.0], [1.0, 3.0]]), (1.0, 2.0)).tolist() == [0.5, 0.5]


def test_tall_dataset_items(training: TrainingCorpus) -> None:
    moments = load_moments(training.annotation("charades_sta_val.txt"))
    grounding = GroundingDataset(training.store, moments, Vocabulary([]), feature="vggish")
    item = TallDataset(grounding, sizes=(2.0, 3.0), overlap=0.5)[0]
    assert item["features"].shape == (len(item["windows"]), 3 * 128)
    video, moment = grounding.moments[0]
    np.testing.assert_allclose(item["iou"].numpy(),
                               span_iou(item["windows"].numpy(), (moment.start, moment.end)))
    np.testing.assert_allclose(item["offsets"][:, 0].numpy(),
                               moment.start - item["windows"][:, 0].numpy())


# -- tagging ---------------------------------------------------------------------------------

def test_label_file_and_class_list(tmp_path: Path) -> None:
    labels = tmp_path / "train.txt"
    labels.write_text("a/b/18e9.mp4\tsome title\tx,y\n18e9.mp4\tagain\tz\nc1\t\t\nc2\tt\ty\n")
    tagged = load_tags(labels)
    assert [(t.video, t.labels) for t in tagged] == [("a/b/18e9.mp4", ("x", "y")),
                                                      ("18e9.mp4", ("z",)), ("c2", ("y",))]
    assert classes_of(tagged) == ["x", "y", "z"]
    classes = tmp_path / "class.txt"
    classes.write_text("cat\t1\ndog\t0\n")
    assert load_classes(classes) == ["dog", "cat"]
    (tmp_path / "bad.txt").write_text("only one column\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        load_tags(tmp_path / "bad.txt")


def test_tagging_items_masks_and_missing_audio(training: TrainingCorpus) -> None:
    tagged = load_tags(training.annotation("tags_train.txt"))
    classes = classes_of(tagged)
    data = TaggingDataset(training.store, tagged, classes)
    ids = [video_id for video_id, _ in data.videos]
    assert "quiet" in ids and "video0" in ids  # "clips/quiet.mp4" and "video0.mp4" resolved
    quiet, video0 = data[ids.index("quiet")], data[ids.index("video0")]
    assert quiet["audio_present"] is False and quiet["audio"].shape == (1, 128)
    assert not quiet["audio"].any()
    assert [classes[i] for i in video0["labels"].nonzero().flatten()] == [
        "source_testsrc2", f"tone_{training.clips['video0'][1]}"]
    batch = collate_tags([video0, quiet])
    assert batch["image"].shape == (2, 2, 2048) and batch["image_mask"].tolist() == [
        [True, True], [True, False]]
    assert batch["audio_mask"].tolist() == [[True, True], [False, False]]
    store = open_store(training.store)
    np.testing.assert_array_equal(video0["image"].numpy(), store.get("video0", "resnet152"))


def test_seeded_split_is_reproducible() -> None:
    keys = [f"v{i}" for i in range(10)]
    train, val = seeded_split(keys, 0.2, seed=3)
    assert (train, val) == seeded_split(reversed(keys), 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == sorted(keys)
    assert seeded_split(keys, 0.2, seed=4) != (train, val)


# -- workers and merged files -----------------------------------------------------------------

@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_a_merged_file_like_the_directory(
        training: TrainingCorpus, merged: Path, context: str) -> None:
    tagged = load_tags(training.annotation("tags_train.txt"))
    classes = classes_of(tagged)
    direct = collate_tags([TaggingDataset(training.store, tagged, classes)[i] for i in range(4)])
    loader = DataLoader(TaggingDataset(merged, tagged, classes), batch_size=4,
                        collate_fn=collate_tags, num_workers=2,
                        multiprocessing_context=multiprocessing.get_context(context))
    batch = next(iter(loader))
    assert batch["video_ids"] == direct["video_ids"]
    for key in ("image", "image_mask", "audio", "audio_mask", "labels"):
        assert torch.equal(batch[key], direct[key]), key


def test_a_feature_with_no_rows_counts_as_missing(tmp_path: Path) -> None:
    """VGGish with ``pad_short=False`` records a short clip as ok with zero rows."""
    store = create_store(tmp_path / "store")
    spans = np.array([[0.0, 1.0], [1.0, 2.0]])
    frames = np.arange(8, dtype=np.float32).reshape(2, 4)
    record = VideoRecord("short", {"duration": 2.0}, [
        FeatureRecord("resnet152", "ok", data=frames, times=spans),
        FeatureRecord("vggish", "ok", data=np.zeros((0, 3), np.float32),
                      times=np.zeros((0, 2)))])
    StoreIndex(store).add([write_shard(store, "short", [record], dtype="float32")])
    item = CaptioningDataset(store, {"short": ["a b"]}, Vocabulary([]), fuse=("vggish",),
                             frames=None)[0]
    assert item["features"].tolist() == [[0, 1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 0, 0, 0]]
    assert item["present"].tolist() == [True, False]
    out = tmp_path / "npy"
    assert export_per_video(store, out, ["resnet152", "vggish"]) == 0
    assert export_per_video(store, out, ["resnet152"]) == 1
    assert GroundingDataset(store, [Moment("short", 0.0, 1.0, "a")], Vocabulary([]),
                            feature="vggish").moments == []


def test_a_charades_moment_starting_after_the_video_end_is_dropped_as_2dtan_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Charades-STA's durations come from the store: 2D-TAN's charades.py clips the end to the
    duration, then keeps start < end. Kept, the moment had span (1.25, 1.0) and an all-zero map
    target."""
    store = create_store(tmp_path / "store")
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    spans = np.array([[0.0, 0.5], [0.5, 1.0], [1.0, 1.5], [1.5, 2.0]])
    record = VideoRecord("v", {"duration": 2.0}, [
        FeatureRecord("c3d", "ok", data=rows, times=spans)])
    StoreIndex(store).add([write_shard(store, "v", [record], dtype="float32")])
    annotations = tmp_path / "charades_sta_train.txt"
    annotations.write_text("v 2.5 6.0##after the end.\nv 2.0 3.0##at the end.\n"
                           "v 1.0 6.0##over the end.\n")
    with caplog.at_level(logging.WARNING, logger="vidfeat.datasets"):
        data = GroundingDataset(store, load_moments(annotations), Vocabulary([]),
                                num_segments=4, source=str(annotations))
    assert [(m.start, m.end) for _, m in data.moments] == [(1.0, 6.0)]
    assert data[0]["span"].tolist() == [0.5, 1.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 moments start at or after their video's end" in warnings[0]


def test_a_missing_class_list_is_a_value_error_naming_it(tmp_path: Path) -> None:
    """`train tagging --classes MISSING` was exit 3 with a bare '[Errno 2] ...'."""
    with pytest.raises(ValueError, match=r"nope.txt: cannot read the class list"):
        load_classes(tmp_path / "nope.txt")
