"""`python -m vidfeat.pretrained_available EXTRACTOR...`: exit 0 when the default pretrained
weights of every named extractor are in the cache and verify, 1 otherwise (used by make demo)."""

import sys

from vidfeat.extractors import get_extractor
from vidfeat.extractors.weights import status


def main(extractors: list[str]) -> int:
    missing = [name for name in extractors
               if status(get_extractor(name)().weights_name)[0] != "verified"]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
