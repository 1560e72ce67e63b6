#!/usr/bin/env bash
# The GPU device check (docs/cluster.md): about 5 minutes on one H100/H200-class card.
#
#   1. throughput of the built-in model at widths 1024 and 2048 in bf16: tokens/s and MFU
#   2. a tune with fractional GPUs per trial (Ray Tune, 4 trials per card at once)
#   3. `confirm` of that study at width 1024 on the GPU (bf16)
#   4. the same confirmation through torchrun with FSDP2 on one GPU (the sharded path)
#
# Every result lands in $OUT (default: a new temporary folder): throughput.json, the study
# storages, and the confirm outputs; the last lines print a summary. Usage:
#
#   bash benchmarks/gpu_check.sh            # on a machine with a CUDA GPU and CUDA torch
#   DEVICE=cpu bash benchmarks/gpu_check.sh # the same steps at toy sizes on the CPU: a check
#                                           # of this script, not a measurement
set -euo pipefail

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
export HPTRANSFER_HOME="$OUT/home"
cd "$(dirname "$0")/.."

if [ "$DEVICE" = cuda ]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees no" \
         "CUDA GPU; run it on a GPU machine with a CUDA build of torch, or DEVICE=cpu" >&2
    exit 2
  }
  WIDTHS=1024,2048 TARGET=1024 PROXIES=128,256 STEPS=200 SEQ=256 GPUS=0.25 CPUS=1
  THROUGHPUT_ARGS=(--widths "$WIDTHS" --steps 30 --compile)
  CONFIRM_DEVICE=(--device cuda --precision bf16)
else
  WIDTHS=64,128 TARGET=64 PROXIES=32,64 STEPS=8 SEQ=32 GPUS=0 CPUS=1
  THROUGHPUT_ARGS=(--widths "$WIDTHS" --steps 4 --depth 2 --batch 4 --seq-len 32 --device cpu)
  CONFIRM_DEVICE=(--device cpu)
fi
STORAGE="$OUT/study.db"
hpt() { "$PYTHON" -m hptransfer.cli "$@"; }
step() { echo; echo "== $* ($(date +%T))"; }
timed() {  # timed LABEL OUTFILE COMMAND...: run it, stdout to OUTFILE, print its wall time
  local label=$1 out=$2 start=$SECONDS
  shift 2
  "$@" > "$out"
  echo "$label wall $((SECONDS - start)) s"
}

step "1. throughput at widths $WIDTHS"
"$PYTHON" benchmarks/gpu_throughput.py "${THROUGHPUT_ARGS[@]}" --json > "$OUT/throughput.json"
"$PYTHON" - "$OUT/throughput.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
print(f"{data['device']}: large matmul {data['matmul_tflops']:.3g} TFLOP/s")
for r in data["runs"]:
    nominal = r["mfu_nominal_peak"]
    print(f"  width {r['width']} {'compiled' if r['compiled'] else 'eager'}: "
          f"{r['tokens_per_s']:,.0f} tokens/s, MFU {100 * r['mfu_measured_peak']:.1f}% of the "
          f"measured matmul" + ("" if nominal is None else f", {100 * nominal:.1f}% of nominal"))
EOF

step "2. tune widths $PROXIES with $GPUS GPU per trial (Ray Tune)"
TUNE=(tune --study gpu --widths "$PROXIES" --trials 8 --steps "$STEPS" --seq-len "$SEQ"
      --storage "$STORAGE" --backend ray --cpus-per-trial "$CPUS")
if [ "$GPUS" != 0 ]; then TUNE+=(--gpus-per-trial "$GPUS" --precision bf16); fi
timed tune "$OUT/tune.json" "$PYTHON" -m hptransfer.cli "${TUNE[@]}" --json
hpt predict --study gpu --storage "$STORAGE" --target-width "$TARGET" | tail -n 4
cp "$STORAGE" "$OUT/fsdp.db"  # the same tuned study, confirmed a second way in step 4

step "3. confirm at width $TARGET on $DEVICE"
timed confirm "$OUT/confirm.json" "$PYTHON" -m hptransfer.cli confirm --study gpu \
  --storage "$STORAGE" --target-width "$TARGET" --offsets -1,0,1 "${CONFIRM_DEVICE[@]}" --json

step "4. the same runs through torchrun with FSDP2 on one $DEVICE"
timed "torchrun fsdp" "$OUT/confirm_fsdp.json" "$PYTHON" -m torch.distributed.run \
  --standalone --nproc-per-node 1 -m hptransfer.cli confirm --study gpu \
  --storage "$OUT/fsdp.db" --target-width "$TARGET" --offsets -1,0,1 --backend torchrun \
  --sharding fsdp "${CONFIRM_DEVICE[@]}" --json

step "summary"
"$PYTHON" - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
for name in ("confirm", "confirm_fsdp"):
    result = json.load(open(f"{out}/{name}.json"))
    losses = ", ".join(f"{r['offset']:+g}: {r['loss']:.4f}" for r in result["runs"]
                       if r["loss"] is not None)
    print(f"{name}: {result['verdict']} (predicted lr {result['predicted_lr']:.4g}); {losses}")
EOF
echo "results in $OUT"
