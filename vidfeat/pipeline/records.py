"""What tasks report: the store records a worker builds for one feature (its attributes, and
failures with a one-line reason), a finished segment's rows, and a task's report to the
driver. Importable without torch (the driver unpickles these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vidfeat import __version__
from vidfeat.errors import VidfeatError
from vidfeat.pipeline.plan import WorkUnit
from vidfeat.storage.schema import FeatureRecord, Outcome, ShardContents, Status

if TYPE_CHECKING:
    from vidfeat.extractors.base import Extractor


@dataclass
class SegmentPart:
    """A finished segment's rows, kept in memory until its video is stitched."""

    unit: WorkUnit
    attrs: dict[str, Any]
    records: list[FeatureRecord]
    frames: int
    seconds: float
    model_seconds: dict[str, float]  # per feature: its share of the batches' model time
    end: float = 0.0  # when the last frame decoded stops showing (the last segment's: the video's)


@dataclass
class TaskReport:
    """What a task returns to the driver: outcomes and the index rows of the shards it wrote
    (which the driver indexes without opening them), never feature rows."""

    outcomes: list[Outcome] = field(default_factory=list)
    shards: list[ShardContents] = field(default_factory=list)
    parts: list[SegmentPart] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    #: per feature, the rows of the videos it extracted and their model seconds (their rows'
    #: share of their batches; decoding serves every feature of a video and is not counted)
    rows: dict[str, int] = field(default_factory=dict)
    model_seconds: dict[str, float] = field(default_factory=dict)

    def add_video(self, video_id: str, records: list[FeatureRecord],
                  model_seconds: dict[str, float]) -> None:
        """A finished video's outcomes, and what its extracted features gave and cost."""
        for record in records:
            self.outcomes.append(record.outcome(video_id))
            if record.status == Status.OK and record.data is not None:
                name = record.feature
                self.rows[name] = self.rows.get(name, 0) + len(record.data)
                self.model_seconds[name] = (self.model_seconds.get(name, 0.0)
                                            + model_seconds.get(name, 0.0))


def feature_attrs(extractor: Extractor, padded: bool = False,
                  decoded_by: tuple[str, str] | None = None) -> dict[str, Any]:
    """The attributes a feature's rows are stored with; ``decoded_by``: a visual feature's
    decoder and the device it decoded on (the CPU backends give the same frames, NVDEC's
    colour conversion does not, so a GPU decode is recorded though not in the config hash)."""
    options = extractor.options()
    attrs = {key: value for key, value in options.items()
             if isinstance(value, (int, float, str, bool))}
    attrs.update(
        model=extractor.name,
        layer=str(options.get("layer", "")),
        weights_sha256=extractor.weights_sha256,
        random_weights=extractor.weights_sha256 == "random",
        precision=extractor.precision,
        compiled=extractor.compiled,
        config=extractor.config(),
        config_hash=extractor.config_hash(),
        padded=padded,
        device=str(extractor.device),
        vidfeat_version=__version__,
    )
    if decoded_by is not None:
        attrs["decoder"], attrs["decode_device"] = decoded_by
    return attrs


def failed_record(extractor: Extractor, reason: str, status: Status = Status.FAILED
                  ) -> FeatureRecord:
    return FeatureRecord(extractor.name, status, reason=reason, attrs=feature_attrs(extractor))


def reason_of(error: BaseException) -> str:
    """One line: our own errors already say what and where; others get their type."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(error, VidfeatError) else f"{type(error).__name__}: {first}"
