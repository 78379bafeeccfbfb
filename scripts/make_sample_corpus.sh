#!/usr/bin/env bash
# A small sample corpus made with ffmpeg's lavfi sources (real codecs, a few seconds each).
set -euo pipefail
out=${1:-demo/corpus}
mkdir -p "$out"
ff() { "${FFMPEG:-ffmpeg}" -nostdin -v error -y "$@"; }
[ -f "$out/testsrc.mp4" ] || ff -f lavfi -i testsrc2=size=320x240:rate=25:duration=6 \
    -f lavfi -i sine=frequency=440:sample_rate=44100:duration=6 \
    -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest "$out/testsrc.mp4"
[ -f "$out/mandelbrot_silent.mp4" ] || ff -f lavfi -i mandelbrot=size=320x240:rate=25 -t 4 \
    -c:v libx264 -pix_fmt yuv420p "$out/mandelbrot_silent.mp4"
# -cpu-used 8: libvpx's default speed took 50 s on this 5 s clip (2-core CPU), 0.8 s with it
[ -f "$out/life.webm" ] || ff -f lavfi -i life=size=320x240:rate=30:mold=10 \
    -f lavfi -i "sine=frequency=1000:sample_rate=48000:duration=5" -t 5 \
    -c:v libvpx-vp9 -b:v 200k -deadline realtime -cpu-used 8 -c:a libopus "$out/life.webm"
echo "sample corpus in $out: $(ls "$out" | tr '\n' ' ')"
