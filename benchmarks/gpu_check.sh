#!/usr/bin/env bash
# The GPU device check (docs/cluster.md): each path a GPU run takes, once, on every card
# this machine has (under 10 minutes on one H100/H200-class card).
#
#   throughput  the built-in model at widths 1024 and 2048, bf16, eager: tokens/s, MFU, peak memory
#   tune        a small study, Ray Tune, 4 trials per card at once (fractional GPUs); when
#               it fails, tune-local tunes the study again on the CPUs without Ray, so that
#               the steps after it still check their own paths
#   confirm     `confirm` of that study at width 1024 on one card (bf16)
#   fsdp        the same runs through torchrun, FSDP2 from the meta device on every card (bf16)
#   resume      a confirm with checkpoints SIGKILLed mid-run, run again: it resumes, and its
#               curves match an uninterrupted confirm's (benchmarks/resume_check.py)
#   ray-train   one confirmation run as a Ray Train job (1 worker, 1 GPU)
#   compiled    the throughput step again through torch.compile (the compile is not timed);
#               last, as the step most likely to fail
#
# Every step runs whatever happened to the ones before (a step that needs the study is
# marked failed when neither tune nor tune-local made one); the script ends with a table
# (step, status, wall time, its key number), also in $OUT/summary.tsv, and exits 1 when any
# step failed. Every output lands in $OUT (default: a new temporary folder); each step's
# stderr in $OUT/<step>.err. Usage:
#
#   bash benchmarks/gpu_check.sh            # on a machine with CUDA GPUs and CUDA torch
#   DEVICE=cpu bash benchmarks/gpu_check.sh # the same steps at toy sizes on the CPU, fsdp on
#                                           # 2 gloo ranks: a check of this script (a test in
#                                           # tests/test_gpu_check.py), not a measurement
#   SKIP="compiled ray" ...                 # steps to leave out (reported as skipped): ray
#                                           # skips ray-train and tunes without Ray
#   STEP_TIMEOUT=150 ...                    # each GPU step's time limit (default 300 s)
#   CHECK_STEPS=120 CHECK_TRIALS=6 ...      # shorter GPU runs, fewer proxy trials per width
#                                           # (defaults 200 and 8)
set -uo pipefail  # no -e: a failed step is recorded, and the next one runs

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
# python3 where `python` is absent (a bare image or a distribution's python)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
SKIP=" ${SKIP:-} "
mkdir -p "$OUT"
export HPTRANSFER_HOME="$OUT/home"
cd "$(dirname "$0")/.."

if [ "$DEVICE" = cuda ]; then
  CARDS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if [ "${CARDS:-0}" -lt 1 ]; then
    echo "gpu_check: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees no" \
         "CUDA GPU; run it on a GPU machine with a CUDA build of torch, or DEVICE=cpu" >&2
    exit 2
  fi
  RANKS=$CARDS WIDTHS=1024,2048 TARGET=1024 PROXIES=128,256 SEQ=256 DEPTH=4
  STEPS=${CHECK_STEPS:-200} TRIALS=${CHECK_TRIALS:-8}  # per run, per proxy width
  THROUGHPUT=(--widths "$WIDTHS" --steps 30)
  TUNE_DEVICE=(--gpus-per-trial 0.25 --precision bf16)
  CONFIRM_DEVICE=(--precision bf16)
  LOCAL_DEVICE=(--device cuda) RAY_DEVICE=(--gpus-per-worker 1) TOLERANCE=1e-3
  EVERY=$((STEPS / 4))
  TIMEOUT=${STEP_TIMEOUT:-300}
else
  RANKS=2 WIDTHS=64 TARGET=64 PROXIES=32,64 STEPS=24 SEQ=32 DEPTH=2 TRIALS=4
  THROUGHPUT=(--widths "$WIDTHS" --steps 4 --depth 2 --batch 4 --seq-len 32 --device cpu)
  TUNE_DEVICE=() CONFIRM_DEVICE=() LOCAL_DEVICE=(--device cpu) RAY_DEVICE=()
  TOLERANCE=0 EVERY=4 TIMEOUT=600  # a resumed run on the CPU is bit for bit the whole one
  export HPTRANSFER_THREADS=${HPTRANSFER_THREADS:-1}
fi
STUDY=(--study gpu --target-width "$TARGET")
SUMMARY="$OUT/summary.tsv"
printf 'step\tstatus\tseconds\tresult\n' > "$SUMMARY"

# step NAME COMMAND...: run it (stdout to $OUT/NAME.out, stderr to $OUT/NAME.err) under a
# time limit, and record whether it passed and how long it took
step() {
  local name=$1 start=$SECONDS status=passed
  shift
  echo; echo "== $name ($(date +%T))"
  if [[ "$SKIP" == *" $name "* ]]; then
    printf '%s\tskipped\t0\t(SKIP)\n' "$name" >> "$SUMMARY"
    echo "skipped"
    return 0
  fi
  timeout "$TIMEOUT" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err" || status=failed
  [ "$status" = failed ] && tail -n 20 "$OUT/$name.err" >&2
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" \
    "$(key "$name" 2>/dev/null || echo -)" >> "$SUMMARY"
  echo "$status in $((SECONDS - start)) s"
}

# key NAME: the step's one-line result, read from its output
key() {
  "$PYTHON" - "$1" "$OUT" <<'EOF'
import json, sys
name, out = sys.argv[1], sys.argv[2]
text = open(f"{out}/{name}.out").read()
if name in ("throughput", "compiled"):
    data = json.loads(text)
    print("; ".join(
        f"w{r['width']} {r['tokens_per_s']:,.0f} tok/s MFU {100 * r['mfu_measured_peak']:.1f}%"
        + ("" if r["peak_memory_gib"] is None else f" {r['peak_memory_gib']:.2f} GiB")
        for r in data["runs"]))
elif name in ("tune", "tune-local"):
    print(", ".join(f"w{w['width']} {w['complete']}/{w['finished']} complete, best "
                    f"{w['best_loss']:.4f}" for w in json.loads(text)["widths"]))
elif name == "resume":
    data = json.loads(text.strip().splitlines()[-1])
    print(f"resumed at {data['resumed_at']}, max rel diff {data['max_rel_diff']:.2g}")
else:
    data = json.loads(text)
    losses = ", ".join(f"{r['offset']:+g}: {r['loss']:.4f}" for r in data["runs"]
                       if r["loss"] is not None)
    print(f"{data['verdict']}; {losses}")
EOF
}

HPT=("$PYTHON" -m hptransfer.cli)
# a copy of the tuned study for each step that confirms it (each records its own runs)
copy() { [ -f "$OUT/study.db" ] && cp "$OUT/study.db" "$OUT/$1.db"; }

step throughput "$PYTHON" benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --json

TUNE_BASE=(tune --study gpu --widths "$PROXIES" --trials "$TRIALS" --steps "$STEPS"
           --seq-len "$SEQ" --depth "$DEPTH" --storage "$OUT/study.db" --json)
TUNE=("${TUNE_BASE[@]}")
if [[ "$SKIP" == *" ray "* ]]; then TUNE+=(--backend local --workers 1)
else TUNE+=(--backend ray --cpus-per-trial 1 "${TUNE_DEVICE[@]}"); fi
step tune "${HPT[@]}" "${TUNE[@]}"
# a tune that failed (Ray's start, say) would fail every step after it: the study is tuned
# again on this machine's CPUs, in a fresh storage, so those steps still check their paths
if ! grep -q $'^tune\tpassed' "$SUMMARY"; then
  [ -f "$OUT/study.db" ] && mv "$OUT/study.db" "$OUT/study-failed.db"
  step tune-local "${HPT[@]}" "${TUNE_BASE[@]}" --backend local --workers auto
fi
for name in confirm fsdp killed whole ray; do copy "$name"; done

step confirm "${HPT[@]}" confirm "${STUDY[@]}" --storage "$OUT/confirm.db" --offsets -1,0,1 \
  "${LOCAL_DEVICE[@]}" "${CONFIRM_DEVICE[@]}" --json

# every card (2 gloo ranks on the CPU); each rank takes its LOCAL_RANK's card
step fsdp "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$RANKS" \
  -m hptransfer.cli confirm "${STUDY[@]}" --storage "$OUT/fsdp.db" --offsets -1,0,1 \
  --backend torchrun --sharding fsdp "${CONFIRM_DEVICE[@]}" --json

step resume "$PYTHON" benchmarks/resume_check.py --study gpu --target-width "$TARGET" \
  --killed "sqlite:///$OUT/killed.db" --whole "sqlite:///$OUT/whole.db" \
  --checkpoint-dir "$OUT/checkpoints" --every "$EVERY" --tolerance "$TOLERANCE" \
  -- "${LOCAL_DEVICE[@]}" "${CONFIRM_DEVICE[@]}" --workers 1

[[ "$SKIP" == *" ray "* ]] && SKIP="$SKIP ray-train "
step ray-train "${HPT[@]}" confirm "${STUDY[@]}" --storage "$OUT/ray.db" --offsets 0,1 \
  --backend ray --workers 1 --cpus-per-worker 1 "${RAY_DEVICE[@]}" "${CONFIRM_DEVICE[@]}" --json

step compiled "$PYTHON" benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --compilation compiled \
  --json

echo
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
echo "results in $OUT"
! grep -q $'\tfailed\t' "$SUMMARY"
