#!/usr/bin/env bash
# One-shot speed check on an accelerator machine (GPU or TPU), in under 8 minutes: installs the
# project with the accelerator build of jax, then runs benchmarks/speed.py (matmul peak, train-step
# FLOP/s and its share of the peak, decoding seconds per query cached and uncached) and keeps its
# JSON in $OUT (or benchmarks/results/) named after the device.
#   bash benchmarks/device.sh            # on a CUDA 12 machine
#   JAX_EXTRA=tpu bash benchmarks/device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
extra=${JAX_EXTRA:-cuda12}
python -m pip install -q -e . "jax[${extra}]" 2>&1 | tail -2
python -c "import jax; print(jax.devices())"
out=${OUT:-benchmarks/results}
mkdir -p "$out"
kind=$(python -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '_'))")
timeout 420 python benchmarks/speed.py --train_steps=20 --decode_batches=4 \
  --out="$out/speed_${kind}.json"
