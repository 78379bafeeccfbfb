"""Store entries plus annotations as torch Datasets for captioning, grounding and tagging.

Data flows media -> extractors -> storage -> datasets: these modules read features only through
``vidfeat.storage``'s reader, so a store directory and a merged file serve alike, in DataLoader
worker processes too. The reference trainers are in ``vidfeat.datasets.trainers``.
"""

from vidfeat.datasets.captioning import (
    CaptionAnnotations,
    CaptioningDataset,
    collate_captions,
    load_captions,
)
from vidfeat.datasets.common import average_to_fixed_length, seeded_split, uniform_indices
from vidfeat.datasets.grounding import (
    GroundingDataset,
    Moment,
    TallDataset,
    collate_moments,
    load_moments,
    sliding_windows,
    tall_windows,
    temporal_map_target,
)
from vidfeat.datasets.tagging import (
    TaggedVideo,
    TaggingDataset,
    classes_of,
    collate_tags,
    load_classes,
    load_tags,
)
from vidfeat.datasets.text import Vocabulary, tokenize

__all__ = [
    "CaptionAnnotations", "CaptioningDataset", "GroundingDataset", "Moment", "TaggedVideo",
    "TaggingDataset", "TallDataset", "Vocabulary", "average_to_fixed_length", "classes_of",
    "collate_captions", "collate_moments", "collate_tags", "load_captions", "load_classes",
    "load_moments", "load_tags", "seeded_split", "sliding_windows", "tall_windows",
    "temporal_map_target", "tokenize", "uniform_indices",
]
