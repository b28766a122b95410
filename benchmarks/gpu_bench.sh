#!/usr/bin/env bash
# The GPU throughput benchmark of issue 6, prepared to run as is on a lent GPU (see benchmarks/NOTES.md):
#   reference (fp16, eager, batch 32) vs the fast path (fp16, torch.compile, static shapes, auto batch)
#   for SD 2 base (512 px) and DiT-XL/2 256, random weights (no download), seconds per CIFAR-10 image on the
#   published schedule and on racing, and the fast path's errors against float32 eager.
# Writes under $OUT (default benchmarks/results): env.txt, <card>-<model>.json (bench --json), <model>.log.
# Environment: COMPILE_MODE (default "default"), MODELS (default "sd2-base dit-xl-2-256"), PER_MODEL_S (270),
# DEVICE (default cuda; DEVICE=cpu MODELS=tiny checks the plumbing on any machine).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
WHEELS=benchmarks/wheels

# 1. what the bench imports; the device has torch, triton and transformers, not diffusers (carried as wheels)
need() { python -c "import $1" 2>/dev/null || pip install -q --no-deps --no-index --find-links "$WHEELS" "${@:2}"; }
need PIL pillow
need importlib_metadata importlib_metadata zipp
need diffusers diffusers
need tqdm tqdm
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], torch.__version__, torch.version.cuda, diffusers.__version__, transformers.__version__)"
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python -c "import diffusion_classifier.cli.bench" || { echo "cannot import the bench: see above"; exit 1; }

# 2. one bench run per model: reference and fast rows, their ratio, seconds per image, agreement with fp32
CARD=$(python -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower() if torch.cuda.is_available() else 'cpu')")
SCHEDULES="cifar10"
python -c "from diffusion_classifier.core.schedules import SCHEDULES; assert 'racing' in SCHEDULES" 2>/dev/null && SCHEDULES="cifar10 racing"
status=0
for model in ${MODELS:-sd2-base dit-xl-2-256}; do
  echo "== $model on $CARD (compile mode ${COMPILE_MODE:-default})"
  timeout "${PER_MODEL_S:-270}" python -m diffusion_classifier.cli.bench --random-weights "$model" --device "${DEVICE:-cuda}" \
    --schedule $SCHEDULES --compile-mode "${COMPILE_MODE:-default}" --json \
    > "$OUT/$CARD-$model.json" 2> "$OUT/$model.log"
  rc=$?
  tail -5 "$OUT/$model.log"
  if [ $rc -ne 0 ]; then echo "$model: exit $rc (124: over ${PER_MODEL_S:-270} s)"; status=1; continue; fi
  python - "$OUT/$CARD-$model.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['device']}: {r['model']['model']}, {r['flops_per_call'] / 1e9:.1f} GFLOP per call")
for row in r["rows"]:
    print(f"  {row['name']:<9} {row['dtype']:<8} batch {row['batch_size']:>3} {row['compile']:<10} "
          f"{row['calls_per_s']:8.1f} calls/s {row['tflops']:6.1f} TFLOP/s")
print(f"  speedup {r['speedup']:.2f}x (target for sd2-base: >= 2.5x)")
for name, s in r["schedules"].items():
    secs = ", ".join(f"{k} {v:.2f} s" for k, v in s["seconds_per_image"].items())
    print(f"  {name}: {s['calls_per_image']} calls/image{'' if s['exact'] else ' (upper bound)'}: {secs}")
a = r["agreement"]
print(f"  fast vs fp32 eager: max rel error {a['max_rel_error']:.2e}, same prediction {a['predictions_agree']}/{a['images']}, "
      f"{a['overflowed']} overflowed")
EOF
done
exit $status
