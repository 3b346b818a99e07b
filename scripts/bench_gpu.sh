#!/usr/bin/env bash
# GPU bench: the `make bench` table (bench.py) on an NVIDIA GPU, with the onnxruntime CUDA and TensorRT (FP16)
# execution providers beside the CPU ones.
#
#   scripts/bench_gpu.sh [--no-install] [--venv DIR] [bench.py options, e.g. --frames 100]
#
# Needs the project venv (`make setup`). When onnxruntime in the venv has no CUDA execution provider and an
# NVIDIA GPU is present, it replaces onnxruntime by onnxruntime-gpu (with the CUDA 12 / cuDNN 9 runtime
# wheels) and installs TensorRT (the versions of docker/requirements-gpu.txt; override with ORT_GPU_VERSION
# and TRT_VERSION), unless --no-install. `make setup` later puts the CPU onnxruntime back if its inputs change.
# Without a GPU it installs nothing and exits with status 0 after saying so. TensorRT engines are cached in
# build/bench_gpu/ (the first run builds them, which takes minutes). The reference peer runs on the GPU only
# when the venv's torch is a CUDA build (the venv's default torch is CPU-only; the header says where it ran).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
ORT_GPU_VERSION="${ORT_GPU_VERSION:-1.22.0}"
TRT_VERSION="${TRT_VERSION:-10.9.0.34}"
INSTALL=1
BENCH_ARGS=()

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-install) INSTALL=0; shift ;;
        --venv)
            [[ $# -ge 2 ]] || { echo "bench_gpu: --venv needs a directory" >&2; exit 2; }
            VENV="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) BENCH_ARGS+=("$1"); shift ;;
    esac
done

PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "bench_gpu: no Python at $PY (run 'make setup' first, or pass --venv DIR)" >&2
    exit 2
fi

gpu_count() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

providers() {
    "$PY" -c 'import onnxruntime as o; print(" ".join(o.get_available_providers()))' 2>/dev/null || echo "none"
}

# CUDA, cuDNN and TensorRT libraries from the pip wheels (nvidia-*-cu12, tensorrt_libs) for onnxruntime to dlopen.
export_gpu_libs() {
    local site dirs="" d
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    for d in "$site"/nvidia/*/lib "$site"/tensorrt_libs; do
        if [[ -d "$d" ]]; then dirs+="$d:"; fi
    done
    if [[ -n "$dirs" ]]; then
        export LD_LIBRARY_PATH="${dirs%:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
}

GPUS="$(gpu_count)"
PROVIDERS="$(providers)"
if [[ " $PROVIDERS " != *" CUDAExecutionProvider "* ]]; then
    if [[ "$GPUS" == "0" ]]; then
        echo "bench_gpu: no NVIDIA GPU here (nvidia-smi missing or lists none) and onnxruntime has no" \
             "CUDAExecutionProvider (providers: $PROVIDERS): nothing to measure on a GPU; nothing installed." \
             "Run 'make bench' for the CPU table."
        exit 0
    fi
    if [[ "$INSTALL" == "0" ]]; then
        echo "bench_gpu: $GPUS GPU(s) present but onnxruntime has no CUDAExecutionProvider (providers:" \
             "$PROVIDERS) and --no-install was given. Install onnxruntime-gpu and tensorrt-cu12 in $VENV." >&2
        exit 1
    fi
    echo "bench_gpu: installing onnxruntime-gpu==$ORT_GPU_VERSION (CUDA 12, cuDNN 9 wheels) and" \
         "tensorrt-cu12==$TRT_VERSION into $VENV ..."
    "$PY" -m pip uninstall -y -q onnxruntime || true
    "$PY" -m pip install -q "onnxruntime-gpu[cuda,cudnn]==$ORT_GPU_VERSION" "tensorrt-cu12==$TRT_VERSION"
fi

export_gpu_libs
PROVIDERS="$(providers)"
if [[ " $PROVIDERS " != *" CUDAExecutionProvider "* ]]; then
    echo "bench_gpu: onnxruntime still has no CUDAExecutionProvider (providers: $PROVIDERS)." >&2
    exit 1
fi
echo "bench_gpu: $GPUS GPU(s); onnxruntime providers: $PROVIDERS"
cd "$ROOT"
exec "$PY" -m cse_pose_dev.bench --require-cuda --out-dir build/bench_gpu "${BENCH_ARGS[@]}"
