#!/usr/bin/env bash
# The primary confirmation run of docs/protocol.md ("Primary comparison"), registered before it started: the
# protocol's hippocampus command with E = 40 (its "convergence rule's outcome") and the three-plane SAM-free
# control nnunet-planes (its round-8 clarification). Run once; resumable: run it again with no arguments until
# it finishes, then `bash docs/results/protocol_hippocampus_n10/run.sh collect` copies the results here.
# It outlives a session in kept/ (KEEP): each finished run's rows (results.csv), the plan and repeat 0's
# convergence record, copied there every minute while it runs and restored into a new study folder, where the
# study does not redo a run whose rows are all there. Each run (one repeat) takes about two hours on 2 cores.
# kept/ holds unfinished results: nobody reads its results.csv before the last run ends (docs/protocol.md).
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=hippocampus_148,hippocampus_149,hippocampus_165,hippocampus_221,hippocampus_319,hippocampus_320  # the sample
H=docs/results/confirmation_hippocampus.txt
OUT=study_protocol_hippocampus
HERE=docs/results/protocol_hippocampus_n10
if [ "${1:-}" = collect ]; then
    for f in results.csv summary.md stats.csv learning_curve.png plan.json; do
        [ -f "$OUT/$f" ] && cp "$OUT/$f" "$HERE/"
    done
    find "$OUT/models" -name convergence.json -exec sh -c 'cp "$1" "$2/convergence_$(basename $(dirname "$1")).json"' _ {} "$HERE" \;
    exit 0
fi
KEEP=${KEEP:-$HERE/kept}
mkdir -p "$KEEP"
if [ ! -f "$OUT/plan.json" ] && [ -f "$KEEP/plan.json" ]; then  # a new session: restore the finished runs
    mkdir -p "$OUT/models/n10_s0"
    cp "$KEEP/plan.json" "$OUT/"
    [ -f "$KEEP/results.csv" ] && cp "$KEEP/results.csv" "$OUT/"
    [ -f "$KEEP/convergence_n10_s0.json" ] && cp "$KEEP/convergence_n10_s0.json" "$OUT/models/n10_s0/convergence.json"
fi
keep() {
    for f in plan.json results.csv; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$KEEP/$f.tmp" && mv "$KEEP/$f.tmp" "$KEEP/$f"; done
    [ -f "$OUT/models/n10_s0/convergence.json" ] && cp "$OUT/models/n10_s0/convergence.json" "$KEEP/convergence_n10_s0.json"
    return 0
}
(while sleep 60; do keep; done) &
trap 'kill $! 2>/dev/null; keep' EXIT
autosam study -d ../shared/data/hippocampus -o "$OUT" --test-cases "$H" --exclude "$S" \
    --train-sizes 10 --repeats 3 --baseline nnunet \
    --adapt-source nnunet --adapt-planes --adapt-folds 3 --adapt-epochs 3 \
    --nnunet-configuration 2d --nnunet-epochs 40 --nnunet-iterations 100 \
    --methods nnunet nnunet+tuned nnunet+prompter nnunet-folds nnunet-planes "$@"
