#!/usr/bin/env bash
# Installs ffmpeg and ffprobe: the Debian package when we are root, else says what to do.
set -euo pipefail
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q ffmpeg >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q ffmpeg; }
    exit 0
fi
echo "ffmpeg/ffprobe are missing and we cannot apt-get install them (not root):" >&2
echo "install the ffmpeg package, or put ffmpeg and ffprobe in a directory and set VIDFEAT_FFMPEG_DIR" >&2
exit 1
