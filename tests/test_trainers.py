"""Reference trainers: metrics against hand-computed cases, 2D-TAN's pieces against the
published code, and `vidfeat train` / `vidfeat eval` beating chance on a tiny extracted store."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_corpus import TrainingCorpus

from vidfeat.cli import main
from vidfeat.datasets import seeded_split
from vidfeat.datasets.trainers import metrics
from vidfeat.datasets.trainers.captioning import S2VT
from vidfeat.datasets.trainers.grounding import (
    bce_rescale_loss,
    dense_max_pool_map,
    padded_mask_and_weight,
)
from vidfeat.datasets.trainers.loop import Standardize
from vidfeat.datasets.trainers.tagging import AttentionPool

FAST = ["--epochs", "8", "--batch-size", "4", "--no-progress", "--device", "cpu"]


# -- metrics by hand ---------------------------------------------------------------------------

def test_bleu4_by_hand() -> None:
    # precisions 5/6, 4/5, 3/4, 2/3, equal lengths: (1/3) ** (1/4)
    assert metrics.bleu4([list("abcdef")], [[list("abcdeg")]]) == pytest.approx(3 ** -0.25)
    # every n-gram matches, 5 words against the closest reference of 6: exp(1 - 6/5)
    assert metrics.bleu4([list("abcde")], [[list("abcdeg"), list("xyz")]]) == pytest.approx(
        math.exp(-0.2))
    assert metrics.bleu4([list("abcd")], [[list("wxyz")]]) == 0.0


def test_grounding_recall_by_hand() -> None:
    ranked = [np.array([[0.0, 2.0], [0.0, 2.1], [3.0, 6.0], [2.0, 6.0]]),
              np.array([[4.0, 6.0], [0.0, 3.0]])]
    moments = [(2.0, 6.0), (0.0, 2.0)]
    result = metrics.grounding_metrics(ranked, moments)
    # video 1: NMS keeps [0, 2] (IoU 0 with the moment) and [3, 6] (IoU 0.75), which
    # suppresses [2, 6] (their IoU 0.75 > 0.5) as [0, 2] suppresses [0, 2.1];
    # video 2: [4, 6] (IoU 0), [0, 3] (IoU 2/3)
    assert result["r1_iou0.5"] == 0.0 and result["r5_iou0.5"] == 1.0
    assert result["r5_iou0.7"] == 0.5 and result["r5_iou0.3"] == 1.0
    assert result["miou"] == 0.0
    # IoU must exceed the threshold, as in 2D-TAN: exactly 0.5 is not a hit
    assert metrics.grounding_metrics([np.array([[0.0, 1.0]])], [(0.0, 2.0)])["r1_iou0.5"] == 0.0
    assert metrics.ranked_segments(np.array([[0.1, 0.9], [0.5, 0.3]]), 4.0).tolist() == [
        [0.0, 4.0], [2.0, 4.0], [0.0, 2.0]]  # (0,1), (1,1), (0,0); (1,0) is not a span


def test_hit_at_k_and_map_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    labels = np.array([[0, 0, 1], [1, 0, 0]])
    assert metrics.hit_at_k(scores, labels, 1) == 0.0
    assert metrics.hit_at_k(scores, labels, 2) == 0.5
    # class 0: its positive ranks 2nd -> AP 1/2; class 2 likewise; class 1 has no positive
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(0.5)


def test_chance_is_the_mean_over_seeded_draws() -> None:
    labels = np.eye(4)
    first = metrics.chance(lambda rng: {"hit1": metrics.hit_at_k(rng.random((4, 4)), labels, 1)})
    assert first == metrics.chance(
        lambda rng: {"hit1": metrics.hit_at_k(rng.random((4, 4)), labels, 1)})
    assert 0.05 < first["hit1"] < 0.5


# -- 2D-TAN pieces against the published code (microsoft/VideoX 2D-TAN/lib/models) -----------

def published_prop_max_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """prop_modules/dense.py PropMaxPool.forward with NUM_LAYERS = clips, without .cuda()."""
    num_layers = x.shape[2]
    layers = [torch.nn.Identity()] + [torch.nn.MaxPool1d(2, stride=1)
                                      for _ in range(num_layers - 1)]
    batch_size, hidden_size, num_clips = x.shape
    map_h = x.new_zeros(batch_size, hidden_size, num_clips, num_clips)
    map_mask = x.new_zeros(batch_size, 1, num_clips, num_clips)
    for dig_idx, pool in enumerate(layers):
        x = pool(x)
        start_idxs = [s_idx for s_idx in range(0, num_clips - dig_idx, 1)]
        end_idxs = [s_idx + dig_idx for s_idx in start_idxs]
        map_h[:, :, start_idxs, end_idxs] = x
        map_mask[:, :, start_idxs, end_idxs] += 1
    return map_h, map_mask


def published_padded_mask_and_weight(mask: torch.Tensor, conv: torch.nn.Conv2d) -> tuple:
    """map_modules/__init__.py get_padded_mask_and_weight, without .cuda()."""
    masked_weight = torch.round(F.conv2d(mask.clone().float(), torch.ones(1, 1, *conv.kernel_size),
                                         stride=conv.stride, padding=conv.padding,
                                         dilation=conv.dilation))
    masked_weight[masked_weight > 0] = 1 / masked_weight[masked_weight > 0]
    padded_mask = masked_weight > 0
    return padded_mask, masked_weight


def published_bce_rescale_loss(scores, masks, targets, min_iou, max_iou, bias=0.0):
    """loss.py bce_rescale_loss."""
    joint_prob = torch.sigmoid(scores) * masks
    target_prob = (targets - min_iou) * (1 - bias) / (max_iou - min_iou)
    target_prob[target_prob > 0] += bias
    target_prob[target_prob > 1] = 1
    target_prob[target_prob < 0] = 0
    loss = F.binary_cross_entropy(joint_prob, target_prob, reduction="none") * masks
    return torch.sum(loss) / torch.sum(masks)


def test_2dtan_map_mask_and_loss_match_the_published_code() -> None:
    x = torch.randn(2, 3, 7)
    ours, our_mask = dense_max_pool_map(x)
    theirs, their_mask = published_prop_max_pool(x)
    assert torch.equal(ours, theirs) and torch.equal(our_mask[0], their_mask[0])
    conv = torch.nn.Conv2d(3, 3, 5, padding=4)
    mask, weight = padded_mask_and_weight(our_mask, conv)
    their_padded, their_weight = published_padded_mask_and_weight(our_mask, conv)
    assert torch.equal(mask.bool(), their_padded) and torch.allclose(weight, their_weight)
    scores, targets = torch.randn(2, 7, 7), torch.rand(2, 7, 7)
    assert torch.allclose(bce_rescale_loss(scores, our_mask, targets, 0.3, 0.7),
                          published_bce_rescale_loss(scores, our_mask.squeeze(1).expand(2, 7, 7),
                                                     targets, 0.3, 0.7))


def test_standardize_uses_the_training_statistics() -> None:
    rows = [torch.tensor([[1.0, 5.0], [3.0, 5.0]]), torch.tensor([[5.0, 5.0]])]
    scale = Standardize(2).fit(rows)
    assert scale.mean.tolist() == [3.0, 5.0]
    # the constant column keeps std 1
    assert scale(torch.tensor([3.0 + math.sqrt(8 / 3), 6.0])).tolist() == pytest.approx([1, 1])


def test_padding_does_not_change_what_s2vt_and_the_tagger_compute() -> None:
    torch.manual_seed(0)
    rows = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    s2vt = S2VT(vocab_size=6, feature_dim=8, hidden=4, word_dim=3).eval()
    batch_words = s2vt.greedy(rows, mask, max_len=6)
    alone = s2vt.greedy(rows[1:, :3], mask[1:, :3], max_len=6)
    assert torch.equal(batch_words[1:], alone)
    (h1, _), (h2, _) = s2vt.encode(rows, mask)
    (a1, _), (a2, _) = s2vt.encode(rows[1:, :3], mask[1:, :3])
    assert torch.allclose(h1[:, 1:], a1, atol=1e-6) and torch.allclose(h2[:, 1:], a2, atol=1e-6)
    pool = AttentionPool(8, 4, dropout=0.0).eval()
    pooled = pool(rows, mask)
    assert torch.allclose(pooled[1:], pool(rows[1:, :3], mask[1:, :3]), atol=1e-6)
    nothing = pool(rows[:1], torch.zeros(1, 5, dtype=torch.bool))  # a video without audio
    assert torch.equal(nothing, torch.zeros(1, 8))


# -- the trainers end to end ------------------------------------------------------------------

def train_and_eval(training: TrainingCorpus, out: Path, task: str, annotations: str,
                   *flags: str) -> dict:
    assert main(["train", task, "--store", str(training.store), "--annotations",
                 str(training.annotation(annotations)), "--out", str(out), *FAST, *flags]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert (out / "checkpoint.pt").stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    return result


def rescore(training: TrainingCorpus, out: Path, annotations: str, *flags: str) -> dict:
    scored = out / "eval.json"
    assert main(["eval", str(out / "checkpoint.pt"), "--store", str(training.store),
                 "--annotations", str(training.annotation(annotations)), "--out", str(scored),
                 "--no-progress", "--device", "cpu", "--batch-size", "4", *flags]) == 0
    return json.loads(scored.read_text())


def test_s2vt_captions_beat_chance(training: TrainingCorpus, tmp_path: Path) -> None:
    result = train_and_eval(training, tmp_path, "captioning", "msrvtt.json", "--lr", "3e-3",
                            "--set", "hidden=64", "--set", "word_dim=32", "--set", "frames=4",
                            "--set", "fuse=[vggish]")
    assert set(result) == {"bleu4", "chance", "epochs"}
    assert result["bleu4"] > result["chance"]["bleu4"] + 0.3, result
    assert rescore(training, tmp_path, "msrvtt.json") == {"bleu4": result["bleu4"]}


def test_2dtan_grounds_the_scene_change_beyond_chance(training: TrainingCorpus,
                                                      tmp_path: Path) -> None:
    result = train_and_eval(
        training, tmp_path, "grounding", "charades_sta_train.txt", "--val-annotations",
        str(training.annotation("charades_sta_val.txt")), "--lr", "3e-3", "--set", "feature=vggish",
        "--set", "num_segments=6", "--set", "hidden=32", "--set", "word_dim=16",
        "--set", "text_layers=1", "--set", "map_layers=2", "--set", "kernel=3")
    assert set(result) == {"r1_iou0.3", "r1_iou0.5", "r1_iou0.7", "r5_iou0.3", "r5_iou0.5",
                           "r5_iou0.7", "miou", "chance", "epochs"}
    assert set(result["chance"]) == set(result) - {"chance", "epochs"}
    assert result["r1_iou0.5"] > result["chance"]["r1_iou0.5"] + 0.4, result
    assert result["r1_iou0.7"] > result["chance"]["r1_iou0.7"] + 0.4, result
    again = rescore(training, tmp_path, "charades_sta_val.txt", "--split", "all")
    assert again == {k: v for k, v in result.items() if k not in ("chance", "epochs")}


def test_attention_lstm_tags_beat_chance(training: TrainingCorpus, tmp_path: Path) -> None:
    result = train_and_eval(training, tmp_path, "tagging", "tags_train.txt", "--val-annotations",
                            str(training.annotation("tags_val.txt")), "--lr", "3e-3",
                            "--set", "image_hidden=32", "--set", "audio_hidden=16",
                            "--set", "dropout=0.2")
    assert set(result) == {"hit1", "hit2", "map", "chance", "epochs"}
    assert result["hit1"] > result["chance"]["hit1"] + 0.3, result
    assert result["map"] > result["chance"]["map"] + 0.2, result
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["split"]["val"] == sorted(f"{v}.mp4" for v in training.val_clips)
    assert "clips/quiet.mp4" in saved["split"]["train"]  # a video without audio trains too
    assert rescore(training, tmp_path, "tags_val.txt", "--split", "all") == {
        k: v for k, v in result.items() if k not in ("chance", "epochs")}


def _annotations_with_a_missing_video(training: TrainingCorpus, task: str,
                                      folder: Path) -> tuple[Path, list[str], str, list[str]]:
    """Six videos of the store and one it lacks: the file, the names, the missing one and the
    flags of a small model."""
    clips = sorted(training.clips)[:6]
    if task == "tagging":
        names, missing = [f"{v}.mp4" for v in clips], "video404.mp4"
        path = folder / "tags.txt"
        path.write_text("".join(f"{v}.mp4\ttitle\tsource_{training.clips[v][0]},"
                                f"tone_{training.clips[v][1]}\n" for v in clips)
                        + f"{missing}\tnever extracted\tsource_testsrc2\n")
        return path, names, missing, ["--set", "image_hidden=8", "--set", "audio_hidden=4"]
    if task == "captioning":
        names, missing = clips, "video404"
        path = folder / "captions.json"
        path.write_text(json.dumps({**{v: [f"clip {v}"] for v in clips},
                                    missing: ["never extracted"]}))
        return path, names, missing, ["--set", "hidden=16", "--set", "word_dim=8",
                                      "--set", "frames=2"]
    names, missing = sorted(training.scenes)[:6], "scene_missing_3"
    path = folder / "moments.txt"
    path.write_text("".join(f"{v} 0.0 {training.scenes.get(v, (3,))[0]:.1f}##the first part.\n"
                            for v in [*names, missing]))
    return path, names, missing, ["--set", "feature=vggish", "--set", "num_segments=6",
                                  "--set", "hidden=8", "--set", "word_dim=8",
                                  "--set", "text_layers=1", "--set", "map_layers=1",
                                  "--set", "kernel=3"]


@pytest.mark.parametrize("task", ["tagging", "captioning", "grounding"])
def test_the_seeded_split_is_drawn_among_the_videos_in_the_store(
        task: str, training: TrainingCorpus, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    annotations, names, missing, settings = _annotations_with_a_missing_video(training, task,
                                                                              tmp_path)
    # a seed whose 20 % split of all seven names holds out exactly the missing video
    seed = next(s for s in range(1000) if seeded_split([*names, missing], 0.2, s)[1]
                == [missing])
    with caplog.at_level(logging.WARNING, logger="vidfeat.datasets"):
        assert main(["train", task, "--store", str(training.store), "--annotations",
                     str(annotations), "--out", str(tmp_path / "out"), *FAST, "--epochs", "1",
                     "--seed", str(seed), *settings]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"1 annotated videos are not in {training.store} ({missing})" in warnings[0]
    split = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["split"]
    assert (split["train"], split["val"]) == seeded_split(names, 0.2, seed)


def test_train_rejects_bad_settings_in_one_line(training: TrainingCorpus, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "tagging", "--store", str(training.store), "--annotations",
                 str(training.annotation("tags_train.txt")), "--out", str(tmp_path),
                 "--set", "colour=blue", *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no setting colour" in err
    code = main(["eval", str(tmp_path / "missing.pt"), "--store", str(training.store),
                 "--annotations", str(training.annotation("tags_val.txt"))])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing.pt" in err and len(err.splitlines()) == 1


def test_eval_of_a_file_that_is_no_checkpoint_says_so_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """torch.load's UnpicklingError (a paragraph about weights_only, naming no file) and an
    empty file's EOFError were exit 3 "unexpected errors"."""
    labels = tmp_path / "tags_val.txt"
    labels.write_text("v1.mp4\ttitle\tcat\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in (labels, tmp_path / "empty.pt"):
        code = main(["eval", str(name), "--store", str(tmp_path), "--annotations", str(labels)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"{name}: not a vidfeat trainer checkpoint" in err and "weights_only" not in err
