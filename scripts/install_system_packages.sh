#!/usr/bin/env bash
# Installs the system tools vidfeat uses: ffmpeg/ffprobe (decoding, probing; the tests make
# their videos with ffmpeg) and espeak-ng (speech audio for the VGGish parity tests).
# The Debian packages when we are root; otherwise says what to do.
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q && apt-get install -y -q "${missing[@]}"; }
    exit 0
fi
echo "missing ${missing[*]} and not root: install the Debian/Ubuntu packages ${missing[*]}" >&2
echo "(or put ffmpeg and ffprobe in a directory and set VIDFEAT_FFMPEG_DIR)" >&2
command -v ffmpeg >/dev/null  # espeak-ng only adds a test; ffmpeg is required
