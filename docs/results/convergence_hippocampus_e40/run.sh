#!/usr/bin/env bash
# The protocol's convergence exploration, second step (docs/protocol.md, "Baseline convergence and budget"): at
# E = 20, doubling added 1.05 Dice points (../convergence_hippocampus), so the same study again at E = 40.
# Exploration cases only (the confirmation set and the sample are excluded). Resumable: run it again until it
# finishes, then `bash docs/results/convergence_hippocampus_e40/run.sh collect` copies the results here.
# Fold 0 at E = 40 is the E = 20 study's 2E model (same cases, split, seed and schedule: autosam_schedule.json is
# checked against them before it is used); it is copied from study_convergence_hippocampus when that folder exists,
# else trained again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=hippocampus_148,hippocampus_149,hippocampus_165,hippocampus_221,hippocampus_319,hippocampus_320  # the sample
H=docs/results/confirmation_hippocampus.txt
OUT=study_convergence_hippocampus_e40
HERE=docs/results/convergence_hippocampus_e40
if [ "${1:-}" = collect ]; then
    for f in results.csv summary.md stats.csv learning_curve.png plan.json; do
        [ -f "$OUT/$f" ] && cp "$OUT/$f" "$HERE/"
    done
    find "$OUT/models" -name convergence.json -exec sh -c 'cp "$1" "$2/convergence_$(basename $(dirname "$1")).json"' _ {} "$HERE" \;
    exit 0
fi
PREV=study_convergence_hippocampus/models/n10_s0/convergence_2e
if [ -d "$PREV" ] && [ ! -e "$OUT/models/n10_s0/convergence_e" ]; then
    mkdir -p "$OUT/models/n10_s0"
    cp -a "$PREV" "$OUT/models/n10_s0/convergence_e"
fi
autosam study -d ../shared/data/hippocampus -o "$OUT" --exclude "$H" "$S" \
    --train-sizes 10 --repeats 3 --nnunet-configuration 2d --nnunet-epochs 40 --nnunet-iterations 100 \
    --methods nnunet "$@"
