"""Known weights files: where they come from, their hashes, the cache, and verified loading.

Every file is verified by sha256 before each use (torch.hub only checks at download time).
Files torch.hub downloaded (``$TORCH_HOME/hub/checkpoints``) are used in place, verified.
Files with a published hash are checked against it: the full sha256 where known, otherwise
the prefix torchvision puts in its file names. Files without a published hash (c3d.pickle, the
ActivityNet PCA) are pinned: the sha256 seen at fetch/import is written beside the file and
every later use must match it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vidfeat.errors import WeightsError

PIN_SUFFIX = ".sha256"


@dataclass(frozen=True)
class WeightsSpec:
    name: str
    extractor: str  # the extractor it serves ("" for auxiliary files such as PCA parameters)
    url: str
    sha256: str | None  # full hash or published prefix; None: pinned on first fetch/import
    licence: str
    note: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_TORCHVISION = "https://download.pytorch.org/models/"
_TORCHVGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"

REGISTRY: dict[str, WeightsSpec] = {spec.name: spec for spec in [
    WeightsSpec("resnet152-imagenet1k-v1", "resnet152", _TORCHVISION + "resnet152-394f9c45.pth",
                "394f9c45", "BSD-3-Clause (torchvision); ImageNet terms of use",
                "torchvision ResNet152_Weights.IMAGENET1K_V1, resize 256 crop 224"),
    WeightsSpec("resnet152-imagenet1k-v2", "resnet152", _TORCHVISION + "resnet152-f82ba261.pth",
                "f82ba261", "BSD-3-Clause (torchvision); ImageNet terms of use",
                "torchvision ResNet152_Weights.IMAGENET1K_V2, resize 232 crop 224"),
    WeightsSpec("r2plus1d_18-kinetics400", "r2plus1d_18",
                _TORCHVISION + "r2plus1d_18-91a641e6.pth", "91a641e6",
                "BSD-3-Clause (torchvision); Kinetics terms",
                "torchvision R2Plus1D_18 KINETICS400_V1"),
    WeightsSpec("r3d_18-kinetics400", "r3d_18", _TORCHVISION + "r3d_18-b3b3357e.pth", "b3b3357e",
                "BSD-3-Clause (torchvision); Kinetics terms", "torchvision R3D_18 KINETICS400_V1"),
    WeightsSpec("s3d-kinetics400", "s3d", _TORCHVISION + "s3d-d76dad2f.pth", "d76dad2f",
                "BSD-3-Clause (torchvision); Kinetics terms", "torchvision S3D KINETICS400_V1"),
    WeightsSpec("c3d-sports1m", "c3d", "http://imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle",
                None, "research use (port of facebookarchive/C3D, BSD)",
                "DavideA/c3d-pytorch port of the Sports-1M Caffe model; keys conv1 ... fc8"),
    WeightsSpec("c3d-pca-activitynet", "",
                "http://ec2-52-25-205-214.us-west-2.compute.amazonaws.com/files/"
                "PCA_activitynet_v1-3.hdf5", None, "ActivityNet challenge data",
                "PCA of C3D fc7 (data/U, data/S, data/x_mean) for ActivityNet 500-d features"),
    WeightsSpec("vggish-audioset", "vggish", _TORCHVGGISH + "vggish-10086976.pth", "10086976",
                "Apache-2.0 (tensorflow/models)", "torchvggish port of the AudioSet VGGish"),
    WeightsSpec("vggish-pca-audioset", "", _TORCHVGGISH + "vggish_pca_params-970ea276.pth",
                "970ea276", "Apache-2.0 (tensorflow/models)",
                "AudioSet release PCA: pca_eigen_vectors (128, 128), pca_means (128,)"),
]}


def home() -> Path:
    """The cache: ``$VIDFEAT_HOME/weights`` (default ``~/.cache/vidfeat/weights``)."""
    base = os.environ.get("VIDFEAT_HOME") or os.path.join(Path.home(), ".cache", "vidfeat")
    return Path(base).expanduser().resolve() / "weights"


def spec(name: str) -> WeightsSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected(spec_: WeightsSpec, path: Path) -> str | None:
    if spec_.sha256:
        return spec_.sha256
    pin = path.with_name(path.name + PIN_SUFFIX)
    return pin.read_text().strip() if pin.is_file() else None


def verify(spec_: WeightsSpec, path: Path) -> str:
    """The file's sha256, after checking it against the published or pinned hash."""
    actual = sha256_file(path)
    expected = _expected(spec_, path)
    if expected is not None and not actual.startswith(expected):
        raise WeightsError(
            f"{path}: sha256 {actual[:16]}... does not match {spec_.name}'s {expected[:16]}...; "
            f"the file is corrupt or not {spec_.filename}: fetch or import it again"
        )
    return actual


def torch_hub_checkpoints() -> list[Path]:
    """Where torch.hub keeps the weights it downloaded: ``$TORCH_HOME/hub/checkpoints``
    (torch's default ``~/.cache/torch/hub/checkpoints``, searched too)."""
    places = [Path(torch.hub.get_dir()) / "checkpoints"]
    default = Path.home() / ".cache" / "torch" / "hub" / "checkpoints"
    return places if default in places else [*places, default]


def candidates(name: str, weights_dir: Path | None = None) -> list[Path]:
    """Where ``locate`` looks for the file of ``name``, in order, and the pins beside them."""
    spec_ = spec(name)
    places = [Path(weights_dir)] if weights_dir else []
    places.append(home())
    if spec_.sha256:
        places += torch_hub_checkpoints()
    return [path for place in places
            for path in (place / spec_.filename, place / (spec_.filename + PIN_SUFFIX))]


def locate(name: str, weights_dir: Path | None = None) -> Path:
    """Where the file of ``name`` is: ``weights_dir`` first, then the cache, then torch.hub's
    cache for files with a published hash (a torchvision user has them already; every use
    verifies them, so only the published file can be used from there)."""
    spec_ = spec(name)
    for candidate in candidates(name, weights_dir)[::2]:
        if candidate.is_file():
            return candidate
    places = [Path(weights_dir)] if weights_dir else [home()]
    raise WeightsError(
        f"weights {name} not found: put {spec_.filename} in {places[0]} "
        f"(`vidfeat weights import {name} FILE`), fetch it with `vidfeat weights fetch {name}`, "
        "or pass --random-weights for a smoke test"
    )


def _install(spec_: WeightsSpec, source: Path, target_dir: Path) -> Path:
    """Verify ``source`` and move/copy it into ``target_dir`` atomically; pin its hash if the
    registry has none."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / spec_.filename
    handle, temporary = tempfile.mkstemp(dir=target_dir, prefix=".partial-")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        actual = sha256_file(Path(temporary))
        if spec_.sha256 and not actual.startswith(spec_.sha256):
            raise WeightsError(
                f"{source}: sha256 {actual[:16]}... is not {spec_.name}'s published "
                f"{spec_.sha256}...: not installed"
            )
        if spec_.extractor and not spec_.sha256:
            # a file without a published hash is pinned as it is: a model's must load first
            try:
                read_state_dict(Path(temporary), mmap=True)
            except WeightsError as error:
                raise WeightsError(f"{source}: {str(error).split(': ', 1)[1]}: not installed"
                                   ) from error
        # mkstemp's 0600 would hide the cache from workers running as other users
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    if not spec_.sha256:
        target.with_name(target.name + PIN_SUFFIX).write_text(actual + "\n")
    return target


def import_file(name: str, source: Path, target_dir: Path | None = None) -> Path:
    """Copy a weights file obtained elsewhere into the cache, verified."""
    source = Path(source)
    if not source.is_file():
        raise WeightsError(f"{source}: no such file")
    return _install(spec(name), source, Path(target_dir) if target_dir else home())


def fetch(name: str, target_dir: Path | None = None, mirror: str | None = None) -> Path:
    """Download ``name`` (from ``mirror``/FILE when given or ``$VIDFEAT_WEIGHTS_MIRROR`` is set,
    else its URL) into the cache, verified."""
    spec_ = spec(name)
    mirror = mirror or os.environ.get("VIDFEAT_WEIGHTS_MIRROR")
    url = mirror.rstrip("/") + "/" + spec_.filename if mirror else spec_.url
    with tempfile.TemporaryDirectory() as scratch:
        partial = Path(scratch) / spec_.filename
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as error:
            raise WeightsError(f"cannot download {name} from {url}: {error}") from error
        return _install(spec_, partial, Path(target_dir) if target_dir else home())


def status(name: str, weights_dir: Path | None = None) -> tuple[str, Path | None]:
    """('missing' | 'verified' | 'unpinned' | 'MISMATCH', path) for ``weights list``."""
    try:
        path = locate(name, weights_dir)
    except WeightsError:
        return "missing", None
    spec_ = spec(name)
    try:
        verify(spec_, path)
    except WeightsError:
        return "MISMATCH", path
    return ("verified" if _expected(spec_, path) else "unpinned"), path


@dataclass
class LoadedWeights:
    """A verified state dict (or none, for seeded random initialisation) and its identity."""

    state_dict: dict[str, torch.Tensor] | None
    sha256: str  # the file's sha256, or "random"
    source: str  # the file, or "random"
    weights_dir: Path | None = None
    seed: int = 0

    @property
    def random(self) -> bool:
        return self.state_dict is None

    def load_into(self, model: nn.Module, extractor: str, assign: bool = False) -> None:
        """Load with the exact key set the extractor expects; a mismatch names the keys.
        ``assign``: the model's tensors become the loaded ones (a model built on the meta
        device has none to copy into)."""
        if self.state_dict is None:
            raise WeightsError(f"{extractor}: random weights have no state dict to load")
        check_keys(self.state_dict, model, extractor, self.source)
        model.load_state_dict(self.state_dict, assign=assign)

    def auxiliary(self, name: str) -> Path | None:
        """A verified auxiliary file (e.g. PCA parameters); None with random weights."""
        if self.random:
            return None
        path = locate(name, self.weights_dir)
        verify(spec(name), path)
        return path


def check_keys(state_dict: dict[str, torch.Tensor], model: nn.Module, extractor: str,
               source: str) -> None:
    """WeightsError unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in expected if k in state_dict
                   and tuple(state_dict[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:4]}" if missing else "",
                 f"unexpected {unexpected[:4]}" if unexpected else "",
                 f"wrong shape {wrong[:4]}" if wrong else ""]
        raise WeightsError(f"{source}: not {extractor} weights: "
                           + "; ".join(p for p in parts if p))


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``path``; ``mmap`` maps it instead of reading it (to check keys)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as error:  # torch raises many types for a bad file
        raise WeightsError(f"{path}: not a loadable state dict: {error}") from error
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return dict(state)


def load_weights(extractor: str, default: str, *, file: Path | None = None,
                 weights_dir: Path | None = None, random: bool = False,
                 seed: int = 0) -> LoadedWeights:
    """The weights an extractor runs with: a user's ``file`` (any name; its sha256 is
    recorded), the verified registry file ``default``, or a seeded random init."""
    if random:
        return LoadedWeights(None, "random", "random", weights_dir, seed)
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file for {extractor}")
        sha = sha256_file(path)
    else:
        path = locate(default, weights_dir)
        sha = verify(spec(default), path)
    return LoadedWeights(read_state_dict(path), sha, str(path), weights_dir, seed)
