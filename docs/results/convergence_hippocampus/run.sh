#!/usr/bin/env bash
# The protocol's convergence exploration (docs/protocol.md, "Baseline convergence and budget"): exploration cases
# only (the confirmation set and the sample are excluded). Resumable: run it again until it finishes, then
# `bash docs/results/convergence_hippocampus/run.sh collect` copies the results here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=hippocampus_148,hippocampus_149,hippocampus_165,hippocampus_221,hippocampus_319,hippocampus_320  # the sample
H=docs/results/confirmation_hippocampus.txt
E=${E:-20}  # the schedule's epochs (x 100 iterations); E, OUT and HERE are set by the later steps' run.sh
OUT=${OUT:-study_convergence_hippocampus}
HERE=${HERE:-docs/results/convergence_hippocampus}
if [ "${1:-}" = collect ]; then
    for f in results.csv summary.md stats.csv learning_curve.png plan.json; do
        [ -f "$OUT/$f" ] && cp "$OUT/$f" "$HERE/"
    done
    find "$OUT/models" -name convergence.json -exec sh -c 'cp "$1" "$2/convergence_$(basename $(dirname "$1")).json"' _ {} "$HERE" \;
    exit 0
fi
autosam study -d ../shared/data/hippocampus -o "$OUT" --exclude "$H" "$S" \
    --train-sizes 10 --repeats 3 --nnunet-configuration 2d --nnunet-epochs "$E" --nnunet-iterations 100 \
    --methods nnunet "$@"
