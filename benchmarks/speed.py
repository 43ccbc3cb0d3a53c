"""Zoo-wide speed benchmark (thin wrapper over ``faceparse bench``; see faceparse/bench.py).

Examples::

    python benchmarks/speed.py --models '*' --repeats 3
    python benchmarks/speed.py --models 'unet,segface_*' --size 256
    python benchmarks/speed.py --models 'segface_mobilenet_v3_large' --variants eager,inference_mode,channels_last,sdpa_math,compile

Results: benchmarks/results/speed[_TAG]_<date>.md and .csv.
"""

from __future__ import annotations

import sys

from faceparse.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
