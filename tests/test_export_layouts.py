"""Each export layout read back with the reading statements of the loader it is made for,
copied from those projects (cited per test), on a store extracted from synthetic videos."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from training_corpus import TrainingCorpus

from vidfeat import open_store
from vidfeat.cli import main
from vidfeat.storage.export import read_labels


def export(training: TrainingCorpus, *args: str) -> None:
    assert main(["export", str(training.store), *args]) == 0


def test_hdf5_per_video_datasets_load_in_2dtan_charades_and_tacos(training: TrainingCorpus,
                                                                  tmp_path: Path) -> None:
    self = SimpleNamespace(data_dir=str(tmp_path), vis_input_type="vggish")
    export(training, "--format", "hdf5", str(tmp_path / "vggish_features.hdf5"),
           "--feature", "vggish")
    export(training, "--format", "hdf5", str(tmp_path / "tall_c3d_features.hdf5"),
           "--feature", "vggish")
    store = open_store(training.store)
    with_audio = [v for v in store.videos() if "vggish" in store.features(v)]
    for vid in with_audio:
        # microsoft/VideoX 2D-TAN/lib/datasets/charades.py, Charades.get_video_features
        hdf5_file = h5py.File(os.path.join(self.data_dir, '{}_features.hdf5'.format(self.vis_input_type)), 'r')  # noqa: E501, UP032
        features = torch.from_numpy(hdf5_file[vid][:]).float()
        np.testing.assert_array_equal(features.numpy(), store.get(vid, "vggish"))
        hdf5_file.close()
        # 2D-TAN/lib/datasets/tacos.py, TACoS.get_video_features
        with h5py.File(os.path.join(self.data_dir, 'tall_c3d_features.hdf5'), 'r') as f:
            features = torch.from_numpy(f[vid][:])
        assert features.dtype == torch.float32 and features.shape == (6 if "scene" in vid
                                                                      else 2, 128)
    with h5py.File(tmp_path / "vggish_features.hdf5", "r") as h5:
        assert sorted(h5) == sorted(with_audio) and "quiet" not in h5
    # TACoS names videos by file name: the README's hard links give 2D-TAN those keys
    with h5py.File(tmp_path / "tall_c3d_features.hdf5", "a") as f:
        for video_id in list(f):
            f[video_id + ".avi"] = f[video_id]
    vid = "scene_bars_1.avi"
    with h5py.File(os.path.join(self.data_dir, 'tall_c3d_features.hdf5'), 'r') as f:
        features = torch.from_numpy(f[vid][:])
    np.testing.assert_array_equal(features.numpy(), store.get("scene_bars_1", "vggish"))


def test_hdf5_named_datasets_load_in_2dtan_activitynet(training: TrainingCorpus,
                                                       tmp_path: Path) -> None:
    self = SimpleNamespace(data_dir=str(tmp_path))
    export(training, "--format", "hdf5", str(tmp_path / "sub_activitynet_v1-3.c3d.hdf5"),
           "--feature", "vggish", "--dataset-name", "c3d_features")
    vid = "scene_bars_3"
    # 2D-TAN/lib/datasets/activitynet.py, ActivityNet.get_video_features
    with h5py.File(os.path.join(self.data_dir, 'sub_activitynet_v1-3.c3d.hdf5'), 'r') as f:
        features = torch.from_numpy(f[vid]['c3d_features'][:])
    np.testing.assert_array_equal(features.numpy(), open_store(training.store).get(vid, "vggish"))


def test_per_video_npy_loads_in_video_caption_pytorch(training: TrainingCorpus,
                                                      tmp_path: Path) -> None:
    frames, audio = tmp_path / "frames", tmp_path / "audio"
    export(training, "--format", "npy", str(frames), "--layout", "per-video",
           "--feature", "resnet152,vggish")
    export(training, "--format", "npy", str(audio), "--layout", "per-video", "--feature", "vggish")
    self = SimpleNamespace(feats_dir=[str(frames)], c3d_feats_dir=str(audio), with_c3d=1)
    store = open_store(training.store)
    for ix in range(9):
        # xiadingZ/video-caption.pytorch dataloader.py, VideoDataset.__getitem__
        fc_feat = []
        for dir in self.feats_dir:
            fc_feat.append(np.load(os.path.join(dir, 'video%i.npy' % (ix))))  # noqa: UP031
        fc_feat = np.concatenate(fc_feat, axis=1)
        if self.with_c3d == 1:
            c3d_feat = np.load(os.path.join(self.c3d_feats_dir, 'video%i.npy'%(ix)))  # noqa: E225, E501, UP031
            c3d_feat = np.mean(c3d_feat, axis=0, keepdims=True)
            fc_feat = np.concatenate((fc_feat, np.tile(c3d_feat, (fc_feat.shape[0], 1))), axis=1)

        video_id = f"video{ix}"
        assert fc_feat.shape == (2, 2048 + 128 + 128) and fc_feat.dtype == np.float32
        np.testing.assert_array_equal(fc_feat[:, :2048], store.get(video_id, "resnet152"))
        on_frames = store.on_rows_of(video_id, ["resnet152", "vggish"])["vggish"]
        np.testing.assert_array_equal(fc_feat[:, 2048:2176], on_frames)
        np.testing.assert_allclose(fc_feat[0, 2176:], store.get(video_id, "vggish").mean(0),
                                   rtol=1e-6)
    assert not (frames / "quiet.npy").exists()  # no vggish to put beside its frames
    assert (tmp_path / "frames" / "video0.npy").exists() and not list(frames.glob("scene*"))


def test_paddle_pickles_load_in_multimodal_video_tag(training: TrainingCorpus,
                                                     tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("video0 1,3\n")
    export(training, "--format", "paddle", str(tmp_path / "pkl"), "--labels", str(labels),
           "--feature", "resnet152,vggish")
    self = SimpleNamespace(filelist=str(tmp_path / "pkl"))
    store = open_store(training.store)
    for url in ("video0.mp4", "clips/quiet.mp4"):
        # PaddleVideo applications/MultimodalVideoTag/scenario_lib/datareader/
        # feature_reader.py, FeatureReader.create_reader
        filepath = os.path.join(
            self.filelist,
            url.split('/')[-1].split('.')[0] + '.pkl')
        record = pickle.load(open(filepath, 'rb'), encoding='iso-8859-1')  # noqa: SIM115
        rgb = record['feature']['image_pkl'].astype(float)
        if record['feature']['audio_pkl'].shape[0] == 0:
            audio_pkl = np.zeros((10, 128))
            audio = audio_pkl.astype(float)
        else:
            audio = record['feature']['audio_pkl'].astype(float)

        video_id = record["video"]
        np.testing.assert_array_equal(rgb, store.get(video_id, "resnet152"))
        assert audio.shape == ((10, 128) if video_id == "quiet" else (2, 128))
    assert pickle.loads((tmp_path / "pkl" / "video0.pkl").read_bytes())["label"] == [1, 3]


def test_video_features_layout_keeps_its_files_and_takes_feature(training: TrainingCorpus,
                                                                 tmp_path: Path) -> None:
    export(training, "--format", "npy", str(tmp_path), "--feature", "vggish")
    assert [p.name for p in tmp_path.iterdir()] == ["vggish"]
    assert {"video0_vggish.npy", "video0_timestamps_ms.npy", "video0_fps.npy"} <= {
        p.name for p in (tmp_path / "vggish").iterdir()}


@pytest.mark.parametrize("flags,message", [
    (["--format", "paddle", "--layout", "per-video"], "--layout per-video is for --format npy"),
    (["--format", "npy", "--dataset-name", "x"], "--dataset-name is for --format hdf5"),
    (["--format", "hdf5"], "need --feature"),
])
def test_contradictory_export_flags_are_one_line_errors(
        training: TrainingCorpus, tmp_path: Path, capsys: pytest.CaptureFixture,
        flags: list[str], message: str) -> None:
    assert main(["export", str(training.store), str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flags,absent", [
    (["--format", "hdf5", "--feature", "c3d"], "'c3d'"),  # a real extractor, not extracted
    (["--format", "hdf5", "--feature", "vggish,bogus"], "'bogus'"),
    (["--format", "npy", "--feature", "bogus"], "'bogus'"),
    (["--format", "npy", "--layout", "per-video", "--feature", "bogus"], "'bogus'"),
    (["--format", "paddle", "--feature", "resnet152,vgish"], "'vgish'"),
])
def test_export_of_a_feature_the_store_lacks_is_exit_2_and_writes_nothing(
        training: TrainingCorpus, tmp_path: Path, capsys: pytest.CaptureFixture,
        flags: list[str], absent: str) -> None:
    out = tmp_path / "out"
    assert main(["export", str(training.store), str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no feature {absent} in this store" in err
    assert err.endswith("its features: resnet152, vggish")
    assert list(tmp_path.iterdir()) == []


def test_paddle_labels_in_multimodal_video_tags_own_label_file(training: TrainingCorpus,
                                                                tmp_path: Path) -> None:
    # MultimodalVideoTag load_video_file: URL<TAB>title<TAB>names; a line without labels is
    # skipped, the first line with labels wins, the pickle is found by the URL's stem
    labels = tmp_path / "train.txt"
    labels.write_text("clips/video0.mp4\tTitle, with a comma\tpattern,low\n"
                      "video0.mp4\tlater line\tother\n"
                      "video1.mp4\tno labels yet\t\n"
                      "/data/video1.mp4\t标题\tfractal\n", encoding="utf8")
    export(training, "--format", "paddle", str(tmp_path / "pkl"), "--labels", str(labels))
    label = {video: pickle.loads((tmp_path / "pkl" / f"{video}.pkl").read_bytes())["label"]
             for video in ("video0", "video1", "video2")}
    assert label == {"video0": ["pattern", "low"], "video1": ["fractal"], "video2": []}
    # three tab-separated columns of integer ids are the other form, as before
    labels.write_text("video0\t1\t3\n")
    assert read_labels(labels) == {"video0": [1, 3]}


@pytest.mark.parametrize("content,message", [
    ("a.mp4\tTitle\tcat\nb.mp4\tno label column\n",
     "labels.txt:2: expected 'video<TAB>title<TAB>label,label' (MultimodalVideoTag's label "
     "file) as the first line is, got 'b.mp4\\tno label column'"),
    ("video0 1,3\n\nvideo1 cat,dog\n",
     "labels.txt:3: expected 'VIDEO_ID ID,ID,...' with integer class ids (or "
     "'video<TAB>title<TAB>label,label' (MultimodalVideoTag's label file) on every line), "
     "got 'video1 cat,dog'"),
    (None, "labels.txt: cannot read the labels file: No such file or directory"),
])
def test_bad_or_missing_labels_file_is_exit_2_naming_file_and_line(
        training: TrainingCorpus, tmp_path: Path, capsys: pytest.CaptureFixture,
        content: str | None, message: str) -> None:
    labels = tmp_path / "labels.txt"
    if content is not None:
        labels.write_text(content)
    out = tmp_path / "pkl"
    assert main(["export", str(training.store), "--format", "paddle", str(out),
                 "--labels", str(labels)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err == f"vidfeat: error: {tmp_path}/{message}"
    assert not out.exists()
