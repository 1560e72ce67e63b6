#!/usr/bin/env bash
# tune → predict → confirm, on the Ray cluster this runs in, into one shared study storage.
#
#   bash pipeline.sh postgresql://USER:PASSWORD@HOST:5432/DB
#   HPTRANSFER_STORAGE=postgresql://... bash pipeline.sh      # e.g. from a Kubernetes Secret
#
# The same script runs as a Ray Job (submit.py, `ray job submit`, the KubeRay RayJob in
# rayjob.yaml) or by hand on the head node. Every step joins the running cluster (RAY_ADDRESS,
# set inside a Ray Job) and writes into the same storage, so running the script again resumes:
# tune tops each width up to TRIALS, confirm trains only the missing runs.
#
# Settings, from the environment (a Ray Job's runtime_env env_vars), defaults in brackets:
#   STUDY [proxy]             study name
#   WIDTHS [64,128,256]       proxy widths, tuned in order
#   TRIALS [16]               finished trials wanted per width
#   STEPS                     steps per trial [hptransfer's default, 150]
#   TARGET_WIDTH [1024]       width of the model to predict and confirm
#   CPUS_PER_TRIAL [1]        CPUs (and training threads) per proxy trial
#   GPUS_PER_TRIAL [0]        GPUs per proxy trial; 0.25 puts four proxies on each card
#   CONFIRM_WORKERS [2]       data-parallel workers (Ray Train) per confirmation run
#   CPUS_PER_WORKER [1]       CPUs per confirmation worker
#   TUNE_ARGS                 more `hptransfer tune` flags, e.g. "--depth 2 --data /shared/x.txt"
#   CONFIRM_ARGS              more `hptransfer confirm` flags, e.g. "--offsets -1,0,1"
#   OUT_DIR [.]               where prediction.json is written
#   HPTRANSFER [hptransfer]   the command, e.g. "python -m hptransfer.cli"
# Exits with the status of the first step that fails.
set -euo pipefail

STORAGE="${1:-${HPTRANSFER_STORAGE:-}}"
if [[ -z "$STORAGE" ]]; then
    echo "pipeline.sh: give the study storage, e.g. postgresql://USER:PASSWORD@HOST:5432/DB," \
         "as the first argument or in HPTRANSFER_STORAGE" >&2
    exit 2
fi
STUDY="${STUDY:-proxy}"
WIDTHS="${WIDTHS:-64,128,256}"
TRIALS="${TRIALS:-16}"
TARGET_WIDTH="${TARGET_WIDTH:-1024}"
OUT_DIR="${OUT_DIR:-.}"
read -r -a cli <<< "${HPTRANSFER:-hptransfer}"
read -r -a tune_args <<< "${TUNE_ARGS:-}"
read -r -a confirm_args <<< "${CONFIRM_ARGS:-}"
if [[ -n "${STEPS:-}" ]]; then
    tune_args+=(--steps "$STEPS")
fi
mkdir -p "$OUT_DIR"

echo "== tune: study $STUDY, widths $WIDTHS, $TRIALS trials each"
"${cli[@]}" tune --backend ray --study "$STUDY" --storage "$STORAGE" --widths "$WIDTHS" \
    --trials "$TRIALS" --cpus-per-trial "${CPUS_PER_TRIAL:-1}" \
    --gpus-per-trial "${GPUS_PER_TRIAL:-0}" "${tune_args[@]}"

echo "== predict: width $TARGET_WIDTH"
"${cli[@]}" predict --target-width "$TARGET_WIDTH" --study "$STUDY" --storage "$STORAGE" \
    --json > "$OUT_DIR/prediction.json"
cat "$OUT_DIR/prediction.json"

echo "== confirm: width $TARGET_WIDTH, ${CONFIRM_WORKERS:-2} workers per run"
"${cli[@]}" confirm --backend ray --target-width "$TARGET_WIDTH" --study "$STUDY" \
    --storage "$STORAGE" --workers "${CONFIRM_WORKERS:-2}" \
    --cpus-per-worker "${CPUS_PER_WORKER:-1}" "${confirm_args[@]}"
