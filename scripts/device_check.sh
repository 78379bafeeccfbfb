#!/usr/bin/env bash
# The GPU checks of issue 7 in one device call (about 8 minutes on an H200 with 16 cores):
# the CUDA tests, then benchmarks/throughput.py on the GPU. Run on the lent machine from the
# repository root, with .device/bundle.tar.xz made by scripts/device_bundle.sh and carried:
#
#   device run, carry [".device"], timeout_s 600:  bash scripts/device_check.sh
#
# Everything it prints is also written under $OUT (env.txt, cuda_tests.log, throughput.log).
# SCALE (default 0.5) sizes the benchmark's corpus; each step has its own time limit, so a
# hang costs that step only.
set -uo pipefail
out=${OUT:-/tmp/vidfeat-device}
mkdir -p "$out" /tmp/vf
tar xJf .device/bundle.tar.xz -C /tmp/vf
export PYTHONPATH=/tmp/vf/site:$PWD PYTHONUNBUFFERED=1
command -v ffprobe >/dev/null || export PATH=$PATH:/tmp/vf/bin
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import sys, torch, torchvision, av, dask; print(sys.version.split()[0], "torch",
torch.__version__, "torchvision", torchvision.__version__, "av", av.__version__, "dask",
dask.__version__, "cuda", torch.cuda.is_available())'
    echo "ffmpeg: $(command -v ffmpeg) ($(ffmpeg -version | head -1))"
    python3 -c 'import torchcodec.decoders' 2>&1 | tail -1 | sed 's/^/torchcodec: /'
    nproc
} 2>&1 | tee "$out/env.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_decoders.py::test_torchcodec_decodes_on_cuda_to_gpu_tensors 2>&1 \
    | tee "$out/cuda_tests.log"
decoders=pyav
python3 -c 'import torchcodec.decoders' 2>/dev/null && decoders=pyav,torchcodec
timeout 330 python3 benchmarks/throughput.py --device cuda --workdir /tmp/vf/bench \
    --scale "${SCALE:-0.5}" --precisions fp32,bf16 --feature-sets resnet152,c3d,vggish:resnet152 \
    --limit-repeats 2 --decoders "$decoders" 2>&1 | tee "$out/throughput.log"
