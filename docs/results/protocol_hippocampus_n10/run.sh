#!/usr/bin/env bash
# The primary confirmation run of docs/protocol.md ("Primary comparison"), registered before it started: the
# protocol's hippocampus command with E = 40 (its "convergence rule's outcome") and the three-plane SAM-free
# control nnunet-planes (its round-8 clarification). Run once; resumable: run it again with no arguments until
# it finishes (each invocation is planned for about two hours), then
# `bash docs/results/protocol_hippocampus_n10/run.sh collect` copies the results here.
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
autosam study -d ../shared/data/hippocampus -o "$OUT" --test-cases "$H" --exclude "$S" \
    --train-sizes 10 --repeats 3 --baseline nnunet \
    --adapt-source nnunet --adapt-planes --adapt-folds 3 --adapt-epochs 3 \
    --nnunet-configuration 2d --nnunet-epochs 40 --nnunet-iterations 100 \
    --methods nnunet nnunet+tuned nnunet+prompter nnunet-folds nnunet-planes "$@"
