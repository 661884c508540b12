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
export E=40 OUT=study_convergence_hippocampus_e40 HERE=docs/results/convergence_hippocampus_e40
PREV=study_convergence_hippocampus/models/n10_s0/convergence_2e
if [ "${1:-}" != collect ] && [ -d "$PREV" ] && [ ! -e "$OUT/models/n10_s0/convergence_e" ]; then
    mkdir -p "$OUT/models/n10_s0"
    cp -a "$PREV" "$OUT/models/n10_s0/convergence_e"
fi
exec bash docs/results/convergence_hippocampus/run.sh "$@"
