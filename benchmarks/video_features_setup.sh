#!/usr/bin/env bash
# Recreates what benchmarks/video_features_side_by_side.py needs: a checkout of
# v-iashin/video_features and an interpreter able to run its ResNet path.
#
#   bash benchmarks/video_features_setup.sh [MIRROR] [CHECKOUT] [ENV]
#
# MIRROR: a bare git directory of https://github.com/v-iashin/video_features. The one used to
# write the benchmark was /work/.mirror/v-iashin+video_features/repo (a stored snapshot, HEAD
# a2f61b7a4cf0ca6a2d91dcc2182f57e7cfd12664, "docs: enable syntax highlighting and copy button
# (#147)"). With network access, `git clone --bare https://github.com/v-iashin/video_features`
# and `git checkout a2f61b7a` in a clone give the same tree.
# The snapshot lacks the blobs of a few large binaries (I3D, RAFT and S3D checkpoints, a drawio
# figure), none of them used by the ResNet path, so they are left out of the archive.
#
# The interpreter: a venv whose .pth file adds vidfeat's venv site-packages (torch,
# torchvision, numpy, tqdm come from there, the same builds vidfeat runs on), plus the PyPI
# packages video_features' ResNet path imports besides: omegaconf and OpenCV.
# Nothing is installed into vidfeat's own venv.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MIRROR="${1:-/work/.mirror/v-iashin+video_features/repo}"
CHECKOUT="${2:-/tmp/video_features}"
ENV="${3:-/tmp/vf-env}"
COMMIT=a2f61b7a4cf0ca6a2d91dcc2182f57e7cfd12664

rm -rf "$CHECKOUT"
mkdir -p "$CHECKOUT"
git --git-dir="$MIRROR" archive "$COMMIT" -- . \
    ':(exclude)docs/_assets/figure_src/figures.drawio' \
    ':(exclude)models/i3d/checkpoints/*.pt' \
    ':(exclude)models/raft/checkpoints/*.pth' \
    ':(exclude)models/s3d/checkpoint/*.pt' \
    | tar -x -C "$CHECKOUT"

python3 -m venv "$ENV"
SITE="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT/.venv/lib/python3.11/site-packages" > "$SITE/vidfeat-venv.pth"
"$ENV/bin/pip" install omegaconf opencv-python-headless
"$ENV/bin/python" -c 'import cv2, omegaconf, torch, torchvision, tqdm; print("ok", torch.__version__, torchvision.__version__, cv2.__version__, omegaconf.__version__)'
command -v ffmpeg >/dev/null || { echo "ffmpeg is not on PATH: video_features needs it" >&2; exit 1; }
