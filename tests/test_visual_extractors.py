"""ResNet-152, C3D, R(2+1)D-18, R3D-18 and S3D extractors against independent references.

Each extractor runs on real decoded videos (made here with ffmpeg) with seeded random weights
saved to a file and loaded through ``load_weights``. The torchvision models are compared with
torchvision's own network and its weights' documented ``transforms()`` applied to frames
decoded here with PyAV; C3D is compared with a forward pass written from the Caffe definition.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import with_real_statistics
from torch import nn
from torchvision.models import ResNet152_Weights
from torchvision.models.video import R2Plus1D_18_Weights, R3D_18_Weights, S3D_Weights

from vidfeat.errors import ConfigError, WeightsError
from vidfeat.extractors.base import Extractor, Item, Sampler
from vidfeat.extractors.c3d import C3D, C3DExtractor
from vidfeat.extractors.resnet import ResNet152Extractor
from vidfeat.extractors.video_models import R2Plus1D18Extractor, R3D18Extractor, S3DExtractor
from vidfeat.extractors.weights import LoadedWeights, load_weights
from vidfeat.media import MediaInfo, iter_frames, probe
from vidfeat.media.tools import executable

# ---- videos ----------------------------------------------------------------------------------


def _encode(path: Path, frames: int, rate: int, filters: list[str]) -> Path:
    subprocess.run(
        [executable("ffmpeg"), "-nostdin", "-v", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size=352x288:rate={rate}", "-frames:v", str(frames), *filters,
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


# 352x288 frames are shrunk by every model's resize (short side 256 or 232, 256x256, 128x171):
# the antialias setting of each resize matters, and is checked
@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "3s": _encode(folder / "three_seconds.mp4", 30, 10, []),
        "20f": _encode(folder / "twenty_frames.mp4", 20, 10, []),
        "10f": _encode(folder / "ten_frames.mp4", 10, 10, []),
        # 10 frames every 0.2 s, then 10 every 0.1 s: times only PTS can tell
        "vfr": _encode(folder / "variable_rate.mp4", 20, 10, [
            "-vf", "setpts='if(lt(N,10),N*0.2,2+(N-10)*0.1)/TB'", "-fps_mode", "vfr",
            "-video_track_timescale", "1000"]),
    }


def _decode(path: Path) -> tuple[list[float], list[np.ndarray]]:
    """Every frame's PTS time and RGB image, decoded independently of vidfeat.media."""
    times, images = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            times.append(float(frame.time))
            images.append(frame.to_ndarray(format="rgb24"))
    return times, images


def _items(extractor: Extractor, path: Path, info: MediaInfo | None = None
           ) -> tuple[list[Item], Sampler]:
    """Every model input of one video, sampled while vidfeat decodes it, and the sampler."""
    info = info or probe(path)
    sampler = extractor.sampler(info)
    items: list[Item] = []
    last = None
    for frame in iter_frames(info):
        items += sampler.push(frame)
        last = frame
    items += sampler.finish(last.end)
    return items, sampler


def _spans(items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([i.start for i in items]), np.array([i.end for i in items])


def _extract(extractor: Extractor, path: Path, batch_size: int = 2) -> np.ndarray:
    items, _ = _items(extractor, path)
    batches = [torch.stack([i.tensor for i in items[at:at + batch_size]])
               for at in range(0, len(items), batch_size)]
    return np.concatenate([extractor.embed(batch) for batch in batches])


def _assert_close(ours: np.ndarray, reference: np.ndarray, rtol: float = 1e-4) -> None:
    """Equal up to float32 rounding, relative to the features' scale."""
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    scale = float(np.abs(reference).max())
    assert scale > 0
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=rtol * scale)


def _load_from_file(extractor: Extractor, state: dict[str, torch.Tensor], path: Path) -> None:
    """Save ``state`` as a weights file, load it as a user's file would be, then drop the file."""
    torch.save(state, path)
    try:
        extractor.load(load_weights(extractor.name, extractor.weights_name, file=path))
    finally:
        path.unlink()


# ---- ResNet-152 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_reference() -> nn.Module:
    torch.manual_seed(11)
    # batch norms like trained ones': the extractor folds them into its convolutions
    return with_real_statistics(torchvision.models.resnet152().eval(), seed=11)


@pytest.mark.slow  # a full-size model against its reference implementation
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_resnet152_matches_torchvision(version: str, resnet_reference: nn.Module,
                                       videos: dict[str, Path], tmp_path: Path) -> None:
    extractor = ResNet152Extractor(weights_version=version)
    assert extractor.weights_name == f"resnet152-imagenet1k-{version}"
    # torchvision's own file layout: the whole classifier, fc.* included
    _load_from_file(extractor, resnet_reference.state_dict(), tmp_path / "resnet152.pth")
    ours = _extract(extractor, videos["3s"])

    times, images = _decode(videos["3s"])
    shown = [max(i for i, t in enumerate(times) if t <= second + 1e-6) for second in (0, 1, 2)]
    enum = ResNet152_Weights.IMAGENET1K_V1 if version == "v1" else ResNet152_Weights.IMAGENET1K_V2
    transform = enum.transforms()
    batch = torch.stack([transform(torch.from_numpy(images[i]).permute(2, 0, 1)) for i in shown])
    fc = resnet_reference.fc
    try:
        resnet_reference.fc = nn.Identity()  # the network then returns flatten(avgpool(layer4))
        with torch.inference_mode():
            reference = resnet_reference(batch).numpy()
    finally:
        resnet_reference.fc = fc
    assert ours.shape == (3, 2048)
    _assert_close(ours, reference)


# ---- torchvision video models --------------------------------------------------------------

VIDEO_MODELS = {
    "r2plus1d_18": (R2Plus1D18Extractor, torchvision.models.video.r2plus1d_18,
                    R2Plus1D_18_Weights.KINETICS400_V1, 512),
    "r3d_18": (R3D18Extractor, torchvision.models.video.r3d_18,
               R3D_18_Weights.KINETICS400_V1, 512),
    "s3d": (S3DExtractor, torchvision.models.video.s3d, S3D_Weights.KINETICS400_V1, 1024),
}


def _video_reference(builder_name: str, builder: type, state: dict) -> nn.Module:
    model = builder()
    model.load_state_dict(state)
    if builder_name == "s3d":
        # S3D.forward: features, avgpool, classifier, mean over (T, H, W)
        model.classifier = nn.Identity()
    else:
        model.fc = nn.Identity()
    return model.eval()


@pytest.mark.slow  # a full-size model against its reference implementation
@pytest.mark.parametrize("name", list(VIDEO_MODELS))
def test_video_model_matches_torchvision(name: str, videos: dict[str, Path],
                                         tmp_path: Path) -> None:
    extractor_class, builder, weights_enum, dim = VIDEO_MODELS[name]
    torch.manual_seed(5)
    state = builder().state_dict()
    # 24 frames leave S3D's avgpool output two time steps, which the feature averages
    clip_len, starts = (24, [0]) if name == "s3d" else (16, [0, 8])
    extractor = extractor_class(clip_len=clip_len, stride=8)
    _load_from_file(extractor, state, tmp_path / f"{name}.pth")
    ours = _extract(extractor, videos["3s"])

    _, images = _decode(videos["3s"])
    transform = weights_enum.transforms()
    clips = [torch.stack([torch.from_numpy(image).permute(2, 0, 1)
                          for image in images[start:start + clip_len]]) for start in starts]
    batch = torch.stack([transform(clip) for clip in clips])  # (T, C, H, W) -> (C, T, H, W)
    with torch.inference_mode():
        reference = _video_reference(name, builder, state)(batch).numpy()
    assert ours.shape == (len(starts), dim) == (len(starts), extractor.feature_dim)
    _assert_close(ours, reference)


@pytest.mark.slow  # a full-size model against its reference implementation
@pytest.mark.parametrize("name", ["r2plus1d_18", "s3d"])
def test_video_transform_per_frame_equals_transform_of_the_clip(
        name: str, videos: dict[str, Path]) -> None:
    extractor_class, _, weights_enum, _ = VIDEO_MODELS[name]
    items, _ = _items(extractor_class(), videos["20f"])
    _, images = _decode(videos["20f"])
    clip = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in images[:16]])
    assert len(items) == 1
    assert torch.equal(items[0].tensor, weights_enum.transforms()(clip))


# ---- C3D -------------------------------------------------------------------------------------

# c3d.pickle of the DavideA/c3d-pytorch port: key -> weight shape (each also has a bias)
C3D_LAYERS = {
    "conv1": (64, 3, 3, 3, 3), "conv2": (128, 64, 3, 3, 3),
    "conv3a": (256, 128, 3, 3, 3), "conv3b": (256, 256, 3, 3, 3),
    "conv4a": (512, 256, 3, 3, 3), "conv4b": (512, 512, 3, 3, 3),
    "conv5a": (512, 512, 3, 3, 3), "conv5b": (512, 512, 3, 3, 3),
    "fc6": (4096, 8192), "fc7": (4096, 4096), "fc8": (487, 4096),
}


@pytest.fixture(scope="module")
def c3d_state() -> dict[str, torch.Tensor]:
    """A seeded random state dict in c3d.pickle's layout (He-scaled so activations stay sane)."""
    generator = torch.Generator().manual_seed(3)
    state = {}
    for layer, shape in C3D_LAYERS.items():
        fan_in = int(np.prod(shape[1:]))
        state[f"{layer}.weight"] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
        state[f"{layer}.bias"] = torch.randn(shape[0], generator=generator) * 0.01
    return state


@pytest.fixture(scope="module")
def c3d_file(c3d_state: dict[str, torch.Tensor],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("weights") / "c3d.pickle"
    torch.save(c3d_state, path)
    yield path
    path.unlink()


def _opencv_linear_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(image, (width, height)) with INTER_LINEAR on uint8, as C3D's data layer
    calls it: half-pixel centres, two taps per axis (no antialias), rounded to uint8."""
    def taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0)
        low = np.minimum(np.floor(source).astype(int), size_in - 1)
        return low, np.minimum(low + 1, size_in - 1), source - low

    top, bottom, dy = taps(image.shape[0], height)
    left, right, dx = taps(image.shape[1], width)
    pixels = image.astype(np.float64)
    rows = pixels[top] * (1 - dy)[:, None, None] + pixels[bottom] * dy[:, None, None]
    out = rows[:, left] * (1 - dx)[None, :, None] + rows[:, right] * dx[None, :, None]
    return np.round(out).astype(np.uint8)


def _caffe_c3d(images: list[np.ndarray], starts: list[int], state: dict[str, torch.Tensor],
               mean_volume: np.ndarray) -> dict[str, torch.Tensor]:
    """C3D as the Caffe reference computes it: BGR frames resized to 128x171, mean volume
    subtracted, centre crop at ((128-112)/2, (171-112)/2) in integer arithmetic, then the
    network of c3d_sport1m_feature_extractor_frm.prototxt (pool5 rounding its size up)."""
    h_off, w_off = (128 - 112) // 2, (171 - 112) // 2
    clips = []
    for start in starts:
        frames = [_opencv_linear_resize(image[..., ::-1], 128, 171)
                  for image in images[start:start + 16]]
        volume = np.stack(frames).transpose(3, 0, 1, 2).astype(np.float32) - mean_volume
        clips.append(volume[:, :, h_off:h_off + 112, w_off:w_off + 112])
    x = network_input = torch.from_numpy(np.stack(clips))

    def conv(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv3d(x, state[f"{name}.weight"], state[f"{name}.bias"], padding=1))

    with torch.inference_mode():
        x = F.max_pool3d(conv("conv1", x), kernel_size=(1, 2, 2), stride=(1, 2, 2))
        x = F.max_pool3d(conv("conv2", x), 2, 2)
        x = F.max_pool3d(conv("conv3b", conv("conv3a", x)), 2, 2)
        x = F.max_pool3d(conv("conv4b", conv("conv4a", x)), 2, 2)
        pool5 = F.max_pool3d(conv("conv5b", conv("conv5a", x)), 2, 2, ceil_mode=True)
        flat = pool5.reshape(len(starts), -1)  # C, D, H, W order
        fc6 = F.relu(F.linear(flat, state["fc6.weight"], state["fc6.bias"]))
        fc7 = F.relu(F.linear(fc6, state["fc7.weight"], state["fc7.bias"]))
    return {"input": network_input, "pool5": pool5, "flat": flat, "fc6": fc6, "fc7": fc7}


SPORTS1M_MEAN = np.array([90.25, 97.66, 101.41], dtype=np.float32).reshape(3, 1, 1, 1)


def _c3d(c3d_file: Path, **options: object) -> C3DExtractor:
    extractor = C3DExtractor(**options)
    extractor.load(load_weights("c3d", "c3d-sports1m", file=c3d_file))
    return extractor


def test_c3d_network_keys_are_those_of_c3d_pickle() -> None:
    with torch.device("meta"):
        model = C3D()
    expected = {f"{layer}.{kind}": shape if kind == "weight" else shape[:1]
                for layer, shape in C3D_LAYERS.items() for kind in ("weight", "bias")}
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == expected


@pytest.mark.slow  # a full-size model against its reference implementation
def test_c3d_fc6_matches_the_caffe_reference(c3d_file: Path, c3d_state: dict,
                                             videos: dict[str, Path]) -> None:
    extractor = _c3d(c3d_file)
    items, _ = _items(extractor, videos["3s"])
    ours = extractor.embed(torch.stack([item.tensor for item in items]))
    _, images = _decode(videos["3s"])
    reference = _caffe_c3d(images, [0], c3d_state, SPORTS1M_MEAN)
    # the same uint8 frames as the reference's, but for float ties rounded the other way
    differences = (items[0].tensor - reference["input"][0]).abs()
    assert differences.max() <= 1 and (differences > 0).float().mean() < 1e-3
    assert reference["pool5"].shape == (1, 512, 1, 4, 4)
    assert reference["flat"].shape == (1, 8192)
    assert ours.shape == (1, 4096)  # 30 frames, stride 16: one clip
    _assert_close(ours, reference["fc6"].numpy(), rtol=1e-3)


@pytest.mark.slow  # a full-size model against its reference implementation
def test_c3d_fc7_at_stride_8(c3d_file: Path, c3d_state: dict, videos: dict[str, Path]) -> None:
    extractor = _c3d(c3d_file, layer="fc7", stride=8)
    items, _ = _items(extractor, videos["3s"])
    assert [round(item.start, 6) for item in items] == [0.0, 0.8]  # more clips than stride 16
    ours = extractor.embed(torch.stack([item.tensor for item in items]))
    _, images = _decode(videos["3s"])
    _assert_close(ours, _caffe_c3d(images, [0, 8], c3d_state, SPORTS1M_MEAN)["fc7"].numpy(),
                  rtol=1e-3)


@pytest.mark.slow  # a full-size model against its reference implementation
def test_c3d_mean_volume_is_subtracted_before_the_crop(c3d_file: Path, c3d_state: dict,
                                                       videos: dict[str, Path],
                                                       tmp_path: Path) -> None:
    # a mean that differs across time, rows and columns: a wrong crop offset or frame order
    # shows in the features
    t, h, w = np.meshgrid(np.arange(16), np.arange(128), np.arange(171), indexing="ij")
    volume = (SPORTS1M_MEAN + 2.0 * t + 0.3 * h - 0.2 * w).astype(np.float32)
    mean_file = tmp_path / "sport1m_train16_128_mean.npy"
    np.save(mean_file, volume)
    ours = _extract(_c3d(c3d_file, mean_file=mean_file), videos["20f"])
    _, images = _decode(videos["20f"])
    _assert_close(ours, _caffe_c3d(images, [0], c3d_state, volume)["fc6"].numpy(), rtol=1e-3)


@pytest.mark.slow  # a full-size model against its reference implementation
def test_c3d_activitynet_pca_projects_fc7(c3d_file: Path, c3d_state: dict,
                                          videos: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    components = rng.standard_normal((512, 4096)).astype(np.float32) / 64
    centre = rng.standard_normal(4096).astype(np.float32)
    with h5py.File(tmp_path / "PCA_activitynet_v1-3.hdf5", "w") as handle:
        handle["data/U"] = components
        handle["data/S"] = np.ones(512, dtype=np.float32)
        handle["data/x_mean"] = centre
    extractor = C3DExtractor(pca=True)
    assert extractor.layer == "fc7" and extractor.feature_dim == 500
    extractor.load(load_weights("c3d", "c3d-sports1m", file=c3d_file, weights_dir=tmp_path))
    ours = _extract(extractor, videos["20f"])
    _, images = _decode(videos["20f"])
    fc7 = _caffe_c3d(images, [0], c3d_state, SPORTS1M_MEAN)["fc7"].numpy()
    _assert_close(ours, (fc7 - centre) @ components[:500].T, rtol=1e-3)


@pytest.mark.slow  # a full-size model against its reference implementation
def test_c3d_pca_with_random_weights_is_a_seeded_orthonormal_projection() -> None:
    clip = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(0)) * 50
    full, projected = C3DExtractor(layer="fc7"), C3DExtractor(pca=True)
    for extractor in (full, projected):
        extractor.load(load_weights("c3d", "c3d-sports1m", random=True, seed=4))
    fc7, reduced = full.embed(clip), projected.embed(clip)
    assert reduced.shape == (1, 500)
    # an orthonormal projection of a centred vector never lengthens it
    assert 0 < np.linalg.norm(reduced) <= np.linalg.norm(fc7) * (1 + 1e-5)


@pytest.mark.parametrize("extractor_class, rename", [
    (C3DExtractor, ("conv1.weight", "conv1a.weight")),  # the Caffe blob name
    (ResNet152Extractor, ("fc.weight", "classifier.weight")),
])
def test_weights_with_other_keys_are_refused_by_name(
        extractor_class: type[Extractor], rename: tuple[str, str]) -> None:
    extractor = extractor_class()
    torch.manual_seed(0)
    state = extractor.build_model().state_dict()
    old, new = rename
    state[new] = state.pop(old)
    with pytest.raises(WeightsError) as caught:
        extractor.load(LoadedWeights(state, "sha", "renamed.pth"))
    assert old in str(caught.value) and new in str(caught.value)


# ---- sampling with real decoding ----------------------------------------------------------


def test_one_frame_per_second_on_whole_seconds(videos: dict[str, Path]) -> None:
    items, _ = _items(ResNet152Extractor(fps=1.0), videos["3s"])
    starts, ends = _spans(items)
    np.testing.assert_allclose(starts, [0, 1, 2], atol=1e-6)
    np.testing.assert_allclose(ends, [1, 2, 3], atol=1e-6)
    np.testing.assert_array_equal(starts[1:], ends[:-1])  # contiguous


def test_fps_takes_the_frame_shown_at_each_target_time(videos: dict[str, Path]) -> None:
    # at 1/10240 s per tick several of these frame times are a hair above k/5 in floating
    # point: the frame starting at a target must still be the one taken
    times, _ = _decode(videos["3s"])
    items, _ = _items(ResNet152Extractor(fps=5.0), videos["3s"])
    np.testing.assert_allclose(_spans(items)[0], times[::2], atol=1e-9)


@pytest.mark.slow  # a full-size model against its reference implementation
def test_variable_frame_rate_rows_take_their_times_from_pts(videos: dict[str, Path]) -> None:
    times, _ = _decode(videos["vfr"])
    assert len(set(np.round(np.diff(times), 3))) == 2  # really two frame rates
    frames, _ = _items(ResNet152Extractor(fps=2.0), videos["vfr"])
    np.testing.assert_allclose(_spans(frames)[0], [0, 0.4, 1.0, 1.4, 2.0, 2.5], atol=1e-6)
    clips, _ = _items(R3D18Extractor(clip_len=4, stride=4), videos["vfr"])
    starts, ends = _spans(clips)
    np.testing.assert_allclose(starts, [0, 0.8, 1.6, 2.2, 2.6], atol=1e-6)
    np.testing.assert_allclose(ends, [0.8, 1.6, 2.2, 2.6, 3.0], atol=1e-6)


def test_fixed_frame_count_repeats_frames_of_a_short_video(videos: dict[str, Path]) -> None:
    times, _ = _decode(videos["20f"])
    wanted = [times[i] for i in np.round(np.linspace(0, 19, 40)).astype(int)]
    extractor = ResNet152Extractor(frames=40)
    info = probe(videos["20f"])
    for known in (info, dataclasses.replace(info, frame_count=None)):  # counted by ffprobe
        items, _ = _items(extractor, videos["20f"], known)
        assert len(items) == 40
        np.testing.assert_allclose(_spans(items)[0], wanted, atol=1e-6)
        assert items[0].tensor.shape == (3, 224, 224)


@pytest.mark.parametrize("counted", [22, 25])
def test_fixed_frame_count_survives_a_frame_count_beyond_the_decoded_frames(
        counted: int, videos: dict[str, Path]) -> None:
    # containers may count frames that never decode (an mp4 edit list can hide the last);
    # the rows wanted past the end repeat the last frame. With 22 counted, frame 19 is wanted
    # itself; with 25 it is not
    times, _ = _decode(videos["20f"])
    info = dataclasses.replace(probe(videos["20f"]), frame_count=counted)
    items, _ = _items(ResNet152Extractor(frames=40), videos["20f"], info)
    wanted = np.minimum(np.round(np.linspace(0, counted - 1, 40)).astype(int), 19)
    assert len(items) == 40
    starts, ends = _spans(items)
    np.testing.assert_allclose(starts, [times[i] for i in wanted], atol=1e-6)
    np.testing.assert_allclose(ends[-1], 2.0, atol=1e-6)


@pytest.mark.parametrize("extractor, starts", [
    (C3DExtractor(), [0]),
    (C3DExtractor(stride=8), [0, 8]),
    (R3D18Extractor(clip_len=16, stride=8), [0, 8]),
    (R3D18Extractor(clip_len=4, stride=10), [0, 10, 20]),  # frames between clips skipped
])
def test_clips_start_every_stride_frames(extractor: Extractor, starts: list[int],
                                         videos: dict[str, Path]) -> None:
    clip_len = extractor.options()["clip_len"]
    items, sampler = _items(extractor, videos["3s"])
    starts_s, ends_s = _spans(items)
    np.testing.assert_allclose(starts_s, np.array(starts) / 10, atol=1e-6)
    np.testing.assert_allclose(ends_s, (np.array(starts) + clip_len) / 10, atol=1e-6)
    assert not sampler.padded


def test_a_video_shorter_than_a_clip_gives_one_padded_clip(videos: dict[str, Path]) -> None:
    items, sampler = _items(C3DExtractor(), videos["10f"])
    assert len(items) == 1 and sampler.padded
    assert (items[0].start, round(items[0].end, 6)) == (0.0, 1.0)
    clip = items[0].tensor
    assert clip.shape == (3, 16, 112, 112)
    # padded with the last frame
    assert all(torch.equal(clip[:, 9], clip[:, t]) for t in range(10, 16))
    assert not torch.equal(clip[:, 8], clip[:, 9])


# ---- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: ResNet152Extractor(weights_version="v3"),
    lambda: ResNet152Extractor(fps=0),
    lambda: ResNet152Extractor(fps=True),
    lambda: ResNet152Extractor(fps=1.0, frames=40),
    lambda: ResNet152Extractor(frames=0),
    lambda: ResNet152Extractor(frames=2.5),
    lambda: C3DExtractor(layer="fc8"),
    lambda: C3DExtractor(layer="fc6", pca=True),
    lambda: C3DExtractor(stride=0),
    lambda: C3DExtractor(pca="yes"),
    lambda: S3DExtractor(clip_len=13),
    lambda: R2Plus1D18Extractor(stride=-8),
    lambda: R3D18Extractor(clip_len=16.0),
])
def test_bad_options_are_config_errors(make: object) -> None:
    with pytest.raises(ConfigError):
        make()


def test_a_mean_file_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "mean.npy", np.zeros((3, 16, 112, 112), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"\(3, 16, 128, 171\)"):
        C3DExtractor(mean_file=tmp_path / "mean.npy")
    with pytest.raises(ConfigError, match="cannot read"):
        C3DExtractor(mean_file=tmp_path / "missing.npy")


def test_options_name_everything_that_changes_the_output() -> None:
    v1, v2 = ResNet152Extractor(), ResNet152Extractor(weights_version="v2")
    assert (v1.weights_name, v2.weights_name) == ("resnet152-imagenet1k-v1",
                                                  "resnet152-imagenet1k-v2")
    assert (v1.options()["resize_size"], v2.options()["resize_size"]) == (256, 232)
    assert v1.options()["fps"] == 1.0 and ResNet152Extractor(frames=40).options()["frames"] == 40
    variants = [C3DExtractor(), C3DExtractor(layer="fc7"), C3DExtractor(stride=8),
                C3DExtractor(pca=True), R3D18Extractor(), R3D18Extractor(stride=8),
                R3D18Extractor(clip_len=32), v1, v2, ResNet152Extractor(fps=2.0)]
    hashes = {extractor.config_hash() for extractor in variants}
    assert len(hashes) == len(variants)
    assert C3DExtractor().options()["crop_offset"] == [8, 29]
    assert S3DExtractor().options()["resize_size"] == [256, 256]
