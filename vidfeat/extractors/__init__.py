"""Feature extractors: one module per model family, a registry, and weights management."""

from vidfeat.extractors._api import Extractor, Item, get_extractor, list_extractors

__all__ = ["Extractor", "Item", "get_extractor", "list_extractors"]
