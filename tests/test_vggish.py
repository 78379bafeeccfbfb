"""VGGish: the log-mel front end against the reference formula written out here from SPEC.md
(tensorflow/models research/audioset), the network's layout and weights keys, postprocessing,
and the decode path (ffmpeg -> vidfeat.media -> examples). Random weights only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidfeat.errors import ConfigError, WeightsError
from vidfeat.extractors.vggish import (
    PcaParams,
    VGGish,
    VGGishNet,
    postprocess_embeddings,
    random_pca_params,
    read_pca_params,
    smoke_test,
)
from vidfeat.extractors.vggish_mel import log_mel_spectrogram, mel_matrix, waveform_to_examples
from vidfeat.extractors.weights import LoadedWeights, load_weights
from vidfeat.media import load_audio, probe
from vidfeat.media.tools import executable

RATE = 16000
TORCHVGGISH_KEYS = sorted(
    [f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")]
    + [f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
)


# ---- the reference, written literally from SPEC.md -----------------------------------------
def reference_mel_matrix() -> np.ndarray:
    def mel(hertz):
        return 1127.0 * np.log(1.0 + hertz / 700.0)

    bin_mels = mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    matrix = np.zeros((257, 64))
    for band in range(64):
        lo, centre, hi = edges[band], edges[band + 1], edges[band + 2]
        for row in range(257):
            m = bin_mels[row]
            matrix[row, band] = max(0.0, min((m - lo) / (centre - lo), (hi - m) / (hi - centre)))
    matrix[0, :] = 0.0
    return matrix


def reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    samples = np.asarray(waveform, dtype=np.float64)
    n = np.arange(400)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)
    # an explicit DFT of the 512 samples (400 windowed, zeros at the end), bins 0..256
    dft = np.exp(-2j * np.pi * np.outer(np.arange(512), np.arange(257)) / 512)
    mel = reference_mel_matrix()
    rows = []
    for index in range(1 + (len(samples) - 400) // 160):
        buffer = np.zeros(512)
        buffer[:400] = samples[index * 160:index * 160 + 400] * window
        rows.append(np.log(np.abs(buffer @ dft) @ mel + 0.01))
    return np.array(rows)


def reference_examples(log_mel: np.ndarray, hop: int = 96) -> np.ndarray:
    starts = range(0, len(log_mel) - 96 + 1, hop)
    return np.stack([log_mel[s:s + 96] for s in starts])


def sine_1khz() -> np.ndarray:
    t = np.arange(0, 3, 1 / RATE)
    return np.sin(2 * np.pi * 1000 * t)


def assert_examples_match_reference(waveform: np.ndarray) -> None:
    expected = reference_examples(reference_log_mel(waveform))
    ours = waveform_to_examples(waveform)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


# ---- front end ------------------------------------------------------------------------------
def test_mel_matrix_is_the_reference_formula():
    ours = mel_matrix()
    assert ours.shape == (257, 64)
    assert not ours[0].any()
    np.testing.assert_allclose(ours, reference_mel_matrix(), rtol=0, atol=1e-12)


def test_mel_matrix_is_not_librosas_hz_domain_one():
    librosa = pytest.importorskip("librosa", reason="librosa not installed: nothing to compare")
    theirs = librosa.filters.mel(sr=RATE, n_fft=512, n_mels=64, fmin=125.0, fmax=7500.0,
                                 htk=True, norm=None).T
    assert np.abs(mel_matrix() - theirs).max() > 1e-3


def test_sine_matches_spec_check_values():
    reference = reference_log_mel(sine_1khz())
    assert reference.shape == (298, 64)
    assert reference.mean() == pytest.approx(-3.42962, abs=1e-5)
    assert reference.std() == pytest.approx(2.12658, abs=1e-5)
    ours = log_mel_spectrogram(sine_1khz())
    assert ours.shape == (298, 64)
    assert ours.mean() == pytest.approx(-3.42962, abs=1e-5)
    assert ours.std() == pytest.approx(2.12658, abs=1e-5)
    assert waveform_to_examples(sine_1khz()).shape == (3, 96, 64)
    assert_examples_match_reference(sine_1khz())


def test_seeded_white_noise_matches_reference():
    rng = np.random.default_rng(7)
    # silence in the middle reaches log(0.01); the odd length checks the dropped tail
    noise = 0.2 * rng.standard_normal(3 * RATE + 1234)
    noise[RATE:RATE + 4000] = 0.0
    assert_examples_match_reference(noise.astype(np.float32))


def _mux_with_video(audio_args: list[str], target: Path) -> None:
    """A small mkv: a grey video (probe needs one) and the given audio input, lossless."""
    command = [executable("ffmpeg"), "-nostdin", "-v", "error", "-y",
               "-f", "lavfi", "-i", "color=c=gray:s=64x48:r=5:d=3", *audio_args,
               "-map", "0:v", "-map", "1:a", "-c:v", "mpeg4", "-c:a", "pcm_s16le",
               "-shortest", str(target)]
    subprocess.run(command, check=True, capture_output=True)


def test_stereo_lavfi_audio_through_the_decoder_matches_reference(tmp_path):
    # speech-like: a gliding 140 Hz harmonic voice with a 4 Hz syllable envelope on the left,
    # noise on the right; 44.1 kHz, so the decoder resamples and averages the channels
    voice = ("(0.5+0.5*sin(2*PI*4*t))*(sin(2*PI*(140+20*sin(2*PI*t))*t)"
             "+0.5*sin(4*PI*(140+20*sin(2*PI*t))*t)+0.3*sin(6*PI*(140+20*sin(2*PI*t))*t))*0.3")
    source = f"aevalsrc={voice}|0.1*(random(0)-0.5):s=44100:d=3"
    video = tmp_path / "voice.mkv"
    _mux_with_video(["-f", "lavfi", "-i", source], video)
    info = probe(video)
    assert info.has_audio and info.audio_channels == 2
    waveform = load_audio(info)
    assert waveform.dtype == np.float32 and abs(waveform.size - 3 * RATE) < 200
    assert_examples_match_reference(waveform)


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng not installed (apt-get install espeak-ng): no real speech")
def test_espeak_speech_through_the_decoder_matches_reference(tmp_path):
    speech = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech),
                    "The quick brown fox jumps over the lazy dog, twice."],
                   check=True, capture_output=True)
    video = tmp_path / "speech.mkv"
    _mux_with_video(["-i", str(speech)], video)
    waveform = load_audio(probe(video))
    assert waveform.size >= 2 * RATE and np.abs(waveform).max() > 0.05
    assert_examples_match_reference(waveform)


# ---- items ----------------------------------------------------------------------------------
def test_hop_one_second_gives_examples_every_100_frames():
    # 9.7 s: 968 frames, room for 10 examples 96 frames apart but only 9 100 frames apart
    waveform = (0.3 * np.random.default_rng(1).standard_normal(155200)).astype(np.float32)
    log_mel = reference_log_mel(waveform)
    assert len(log_mel) == 968
    items, padded = VGGish(hop=1.0).audio_items(waveform, 10.0)
    assert not padded
    assert len(items) == 9
    for index, item in enumerate(items):
        assert item.tensor.shape == (1, 96, 64) and item.tensor.dtype == torch.float32
        np.testing.assert_allclose(item.tensor[0].numpy(), log_mel[100 * index:100 * index + 96],
                                   atol=1e-4)
        assert item.start == pytest.approx(10.0 + index)
        assert item.end == pytest.approx(10.0 + index + 0.96)
    default_items, _ = VGGish().audio_items(waveform, 10.0)
    assert len(default_items) == 10
    assert [round(i.start, 6) for i in default_items[:4]] == [10.0, 10.96, 11.92, 12.88]


def test_short_audio_gives_one_padded_example():
    waveform = (0.3 * np.random.default_rng(2).standard_normal(RATE // 2)).astype(np.float32)
    items, padded = VGGish().audio_items(waveform, 1.5)
    assert padded and len(items) == 1
    assert (items[0].start, items[0].end) == (1.5, pytest.approx(2.46))
    zero_padded = np.concatenate([waveform, np.zeros(15600 - waveform.size)])
    expected = reference_examples(reference_log_mel(zero_padded))
    np.testing.assert_allclose(items[0].tensor.numpy(), expected, atol=1e-4)
    assert VGGish(pad_short=False).audio_items(waveform, 1.5) == ([], False)
    assert VGGish().audio_items(np.zeros(0, np.float32), 0.0) == ([], False)


def test_padding_threshold_is_one_example():
    exact, padded = VGGish().audio_items(np.zeros(15600, np.float32), 0.0)
    assert len(exact) == 1 and not padded
    _, padded = VGGish().audio_items(np.zeros(15599, np.float32), 0.0)
    assert padded


def test_options_are_validated():
    for bad in [{"hop": 0.5}, {"hop": True}, {"hop": "1.0"}, {"relu": 1}, {"postprocess": "yes"},
                {"pad_short": None}]:
        with pytest.raises(ConfigError):
            VGGish(**bad)
    options = VGGish(hop=1).options()
    assert options["hop"] == 1.0 and options["example_hop_frames"] == 100
    assert options["sample_rate"] == 16000
    assert VGGish().config_hash() != VGGish(postprocess=True).config_hash()


# ---- network --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extractor() -> VGGish:
    loaded = VGGish()
    loaded.load(load_weights("vggish", "vggish-audioset", random=True))
    return loaded


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    waveform = 0.3 * np.random.default_rng(3).standard_normal(3 * RATE)
    return torch.from_numpy(waveform_to_examples(waveform)).unsqueeze(1)


@pytest.fixture(scope="module")
def saved_weights(extractor, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "my-vggish.pth"
    torch.save(extractor.model.state_dict(), path)
    return path


def test_keys_are_torchvggish_and_relu_changes_none(extractor):
    assert sorted(extractor.model.state_dict()) == TORCHVGGISH_KEYS
    assert sorted(VGGishNet(relu=True).state_dict()) == TORCHVGGISH_KEYS
    assert extractor.feature_dim == 128


def test_embedding_is_pre_activation_by_default(extractor, batch):
    embeddings = extractor.embed(batch)
    assert embeddings.shape == (3, 128) and embeddings.dtype == np.float32
    assert (embeddings < 0).any()


def test_relu_option_adds_the_final_relu(extractor, batch):
    with_relu = VGGish(relu=True)
    with_relu.load(load_weights("vggish", "vggish-audioset", random=True))
    rectified = with_relu.embed(batch)
    assert (rectified >= 0).all()
    np.testing.assert_array_equal(rectified, np.maximum(extractor.embed(batch), 0))


def test_flatten_is_nhwc_as_tensorflow(extractor, batch):
    state = extractor.model.state_dict()
    x = batch
    for conv, pool_after in [(0, True), (3, True), (6, False), (8, True), (11, False),
                             (13, True)]:
        x = F.relu(F.conv2d(x, state[f"features.{conv}.weight"], state[f"features.{conv}.bias"],
                            padding=1))
        if pool_after:
            x = F.max_pool2d(x, 2, 2)
    assert x.shape == (3, 512, 6, 4)

    def head(flat):
        flat = F.relu(F.linear(flat, state["embeddings.0.weight"], state["embeddings.0.bias"]))
        flat = F.relu(F.linear(flat, state["embeddings.2.weight"], state["embeddings.2.bias"]))
        return F.linear(flat, state["embeddings.4.weight"], state["embeddings.4.bias"]).numpy()

    nhwc = head(x.permute(0, 2, 3, 1).reshape(3, -1))
    nchw = head(x.reshape(3, -1))
    ours = extractor.embed(batch)
    np.testing.assert_allclose(ours, nhwc, rtol=1e-4, atol=1e-5)
    assert np.abs(ours - nchw).max() > 1e-3


def test_saved_state_dict_loads_to_identical_output(extractor, batch, saved_weights):
    # a different seed, so that a load that did nothing would show
    reloaded = VGGish()
    reloaded.load(load_weights("vggish", "vggish-audioset", file=saved_weights, seed=1))
    assert reloaded.weights_sha256 not in ("random", "unloaded")
    np.testing.assert_array_equal(reloaded.embed(batch), extractor.embed(batch))


def test_missing_key_is_named(extractor, tmp_path):
    state = extractor.model.state_dict()
    del state["embeddings.4.bias"]
    path = tmp_path / "incomplete.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"embeddings\.4\.bias"):
        VGGish().load(load_weights("vggish", "vggish-audioset", file=path))


# ---- postprocessing -------------------------------------------------------------------------
def reference_postprocess(x: np.ndarray, eigenvectors: np.ndarray, means: np.ndarray):
    pca = (x - means) @ eigenvectors.T
    return ((np.clip(pca, -2, 2) + 2) * 255 / 4).astype(np.uint8)


def test_quantisation_truncates_and_clips():
    identity = PcaParams(np.eye(128), np.zeros(128))
    x = np.zeros((1, 128))
    x[0, 0] = 100.7 / 63.75 - 2  # 100.7 after scaling: truncates to 100, would round to 101
    x[0, 1], x[0, 2] = 5.0, -7.0  # clipped
    x[0, 3], x[0, 4] = 2.0, -2.0  # the ends
    out = postprocess_embeddings(x, identity)
    assert out.dtype == np.float32
    assert out[0, :5].tolist() == [100.0, 255.0, 0.0, 255.0, 0.0]
    assert out[0, 5] == 127.0  # 127.5 truncated


def test_pca_orientation_and_means():
    rng = np.random.default_rng(4)
    eigenvectors, means = rng.standard_normal((128, 128)) / 8, rng.standard_normal(128) / 4
    x = rng.standard_normal((6, 128))
    out = postprocess_embeddings(x, PcaParams(eigenvectors, means))
    np.testing.assert_array_equal(out, reference_postprocess(x, eigenvectors, means))
    assert not np.array_equal(out, reference_postprocess(x, eigenvectors.T, means))


def test_postprocess_with_random_weights_uses_seeded_orthonormal_pca(extractor, batch):
    pca = random_pca_params()
    np.testing.assert_allclose(pca.eigenvectors @ pca.eigenvectors.T, np.eye(128), atol=1e-12)
    np.testing.assert_array_equal(pca.eigenvectors, random_pca_params().eigenvectors)
    post = VGGish(postprocess=True)
    post.load(load_weights("vggish", "vggish-audioset", random=True))
    out = post.embed(batch)
    np.testing.assert_array_equal(out, postprocess_embeddings(extractor.embed(batch), pca))
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out, np.floor(out))


def test_pca_files_torchvggish_and_tf_formats(tmp_path):
    rng = np.random.default_rng(5)
    eigenvectors, means = rng.standard_normal((128, 128)), rng.standard_normal(128)
    as_numpy, as_tensors, npz = (tmp_path / "np.pth", tmp_path / "t.pth",
                                 tmp_path / "vggish_pca_params.npz")
    torch.save({"pca_eigen_vectors": eigenvectors, "pca_means": means.reshape(-1, 1)}, as_numpy)
    torch.save({"pca_eigen_vectors": torch.from_numpy(eigenvectors),
                "pca_means": torch.from_numpy(means)}, as_tensors)
    np.savez(npz, pca_eigen_vectors=eigenvectors, pca_means=means)
    for path in (as_numpy, as_tensors, npz):
        params = read_pca_params(path)
        np.testing.assert_array_equal(params.eigenvectors, eigenvectors)
        np.testing.assert_array_equal(params.means, means)
    torch.save({"pca_eigen_vectors": eigenvectors}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="pca_means"):
        read_pca_params(tmp_path / "partial.pth")
    np.savez(tmp_path / "small.npz", pca_eigen_vectors=eigenvectors[:64], pca_means=means)
    with pytest.raises(WeightsError, match="shapes"):
        read_pca_params(tmp_path / "small.npz")


def test_postprocess_with_real_weights_needs_the_pca_file(saved_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="vggish_pca_params-970ea276.pth"):
        VGGish(postprocess=True).load(
            load_weights("vggish", "vggish-audioset", file=saved_weights))


def test_smoke_test_reports_numbers_and_fails_with_random_weights(extractor):
    post = VGGish(postprocess=True, relu=True, hop=1.0)
    post.load(LoadedWeights(None, "random", "random"))
    report = smoke_test(post)
    assert report["examples"] == [3, 96, 64]
    assert set(report["checks"]) == {"embedding_mean", "embedding_std", "postprocessed_mean",
                                     "postprocessed_std"}
    assert report["checks"]["embedding_std"]["expected"] == 0.343
    # neither relu nor hop leaks into the smoke test: it checks the reference embedding
    reference = extractor.embed(torch.from_numpy(waveform_to_examples(sine_1khz())).unsqueeze(1))
    assert report["checks"]["embedding_mean"]["value"] == pytest.approx(reference.mean(), abs=1e-6)
    assert report["checks"]["embedding_std"]["value"] == pytest.approx(reference.std(), rel=1e-5)
    assert report["passed"] is False
    with pytest.raises(RuntimeError):
        smoke_test(VGGish())
