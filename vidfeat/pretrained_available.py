"""`python -m vidfeat.pretrained_available EXTRACTOR...`: exit 0 when the default pretrained
weights of every named extractor are in the cache and verify, 1 otherwise (used by make demo)."""

import sys

from vidfeat.extractors import get_extractor
from vidfeat.extractors.weights import status

missing = [name for name in sys.argv[1:]
           if status(get_extractor(name)().weights_name)[0] != "verified"]
sys.exit(1 if missing else 0)
