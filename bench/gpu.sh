#!/usr/bin/env bash
# The GPU benchmark, in one go (one H200; about 5 minutes, 9 at most: one device call): install, then
#   1. a full PPAR training step vs a bare forward+backward of the same CLIP ViT-B/16 tower, batch 8, 512x512, bf16
#      autocast: median step times and their ratio, training img/s, peak GPU memory (max_memory_allocated, each
#      workload in a fresh process), model FLOP utilisation against a bf16 8192^3 matmul timed in the same run;
#   2. the training data pipeline (TrainSamples + the gta5 augment, GTA5-sized synthetic PNGs) with one DataLoader
#      worker per CPU core: images/s;
#   3. `train()` end to end, 300 steps on a prepared GTA5-sized synthetic copy, then the final evaluation on
#      1024x2048 images: samples/s, median step, data wait, projected time of 20,000 steps + 500 images.
# Results (JSON + logs) go to $OUT, or bench-results/gpu-<date> when OUT is not set.
#
#   bash bench/gpu.sh
#   # a CPU dry run of every step with tiny sizes (checks the script, measures nothing of interest):
#   BENCH_DEVICE=cpu BENCH_PRESET=tiny BENCH_IMAGE=64 BENCH_BATCH=2 BENCH_REPEATS=2 DATA_SIZE=128x256 \
#     DATA_IMAGES=4 DATA_SAMPLES=4 E2E_STEPS=4 E2E_FRAMES=4 E2E_RESIZE=64x128 E2E_EVAL_IMAGES=1 \
#     E2E_EVAL_SIZE=128x256 E2E_LOG_EVERY=2 bash bench/gpu.sh
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-bench-results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
export OUT HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

DEVICE="${BENCH_DEVICE:-cuda}"
PRESET="${BENCH_PRESET:-vit-b16}"
IMAGE="${BENCH_IMAGE:-512}"
BATCH="${BENCH_BATCH:-8}"
REPEATS="${BENCH_REPEATS:-20}"
WARMUP="${BENCH_WARMUP:-3}"
WORKERS="${DATA_WORKERS:-$(nproc)}"
PY="${PY:-python3}"
VENV="${BENCH_VENV:-.venv-bench}"

log() { printf '[gpu.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$OUT/gpu.log" >&2; }
# A step that fails or times out is logged (its stderr file says why) and the next one still runs: one device
# call must bring back every figure it can. The script exits 1 at the end if any step failed.
FAILED=""
failed() { FAILED="${FAILED:+$FAILED, }$1"; log "$1 failed or ran out of time: see $OUT/*.stderr"; }

# --- 1. install ------------------------------------------------------------------------------------------------
# A fresh venv that sees the machine's packages (its CUDA torch in particular: nothing is downloaded when the
# machine already has the dependencies, which matters on a machine without network). ppar itself goes in editable.
# BENCH_VENV=none uses $PY itself (the machine's python); BENCH_INSTALL=0 skips the install (already installed).
if [[ "$VENV" == none ]]; then
  VPY="$PY"
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV (with the machine's site-packages) from $($PY --version 2>&1)"
    "$PY" -m venv --system-site-packages "$VENV"
  fi
  VPY="$VENV/bin/python"
fi
if [[ "${BENCH_INSTALL:-1}" == 0 ]]; then
  log "BENCH_INSTALL=0: using the ppar already importable by $VPY"
elif "$VPY" -c "import torch, torchvision, open_clip, cv2, safetensors, typer, rich, numpy, PIL" 2>/dev/null; then
  log "dependencies present: pip install -e . without dependencies or build isolation (works offline)"
  "$VPY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tee -a "$OUT/gpu.log" >&2
else
  log "dependencies missing: pip install -e . (needs a package registry)"
  "$VPY" -m pip install --quiet -e . 2>&1 | tee -a "$OUT/gpu.log" >&2
fi
"$VPY" - <<'EOF' 2>&1 | tee "$OUT/environment.txt" >&2
import os, platform, torch, open_clip, ppar_core
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "open_clip", open_clip.__version__, "cpus", os.cpu_count())
print("cuda available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
if [[ "$DEVICE" == cuda* ]]; then
  "$VPY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { log "torch sees no CUDA device: run this on the GPU machine (or set BENCH_DEVICE=cpu for a dry run)"; exit 1; }
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi

# --- 2. training step: PPAR vs bare tower, bf16 autocast -----------------------------------------------------------
AMP=(--amp)
[[ "${BENCH_AMP:-1}" == 0 ]] && AMP=()
log "train step: $PRESET ${IMAGE}x${IMAGE} batch $BATCH on $DEVICE, ${WARMUP} warm-up + ${REPEATS} timed steps each"
timeout 170 "$VPY" bench/train_step.py --device "$DEVICE" --preset "$PRESET" --image-size "$IMAGE" \
  --batch-size "$BATCH" "${AMP[@]}" --warmup "$WARMUP" --repeats "$REPEATS" \
  --json "$OUT/train_step_${DEVICE%%:*}.json" 2> "$OUT/train_step.stderr" | tee "$OUT/train_step.txt" \
  || failed "train step"

# --- 3. data pipeline, every CPU core -----------------------------------------------------------------------------
log "data pipeline: ${DATA_SIZE:-1052x1914} synthetic PNGs, gta5 augment, $WORKERS workers"
timeout 130 "$VPY" bench/data_pipeline.py --workers "$WORKERS" --size "${DATA_SIZE:-1052x1914}" \
  --frames "${DATA_IMAGES:-8}" --samples "${DATA_SAMPLES:-24}" --repeats 1 \
  --json "$OUT/data_pipeline.json" 2> "$OUT/data_pipeline.stderr" | tee "$OUT/data_pipeline.txt" \
  || failed "data pipeline"

# --- 4. end to end: train() 300 steps on a prepared GTA5-sized copy, then the final evaluation -------------------
log "end to end: $PRESET, batch $BATCH, ${IMAGE} crops, ${E2E_STEPS:-300} steps on $DEVICE, then evaluation"
timeout 240 "$VPY" bench/train_e2e.py --device "$DEVICE" --preset "$PRESET" --batch "$BATCH" --crop "$IMAGE" \
  --steps "${E2E_STEPS:-300}" --frames "${E2E_FRAMES:-64}" --size "${DATA_SIZE:-1052x1914}" \
  --resize "${E2E_RESIZE:-720x1280}" --eval-images "${E2E_EVAL_IMAGES:-8}" --eval-size "${E2E_EVAL_SIZE:-1024x2048}" \
  --log-every "${E2E_LOG_EVERY:-25}" --json "$OUT/train_e2e.json" 2> "$OUT/train_e2e.stderr" | tee "$OUT/train_e2e.txt" \
  || failed "end to end"

log "done: results in $OUT${FAILED:+ (failed: $FAILED)}"
for name in train_step data_pipeline train_e2e; do tail -n 1 "$OUT/$name.txt" 2>/dev/null || true; done
[[ -z "$FAILED" ]]
