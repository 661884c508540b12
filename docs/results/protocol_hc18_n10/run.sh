#!/usr/bin/env bash
# Secondary confirmation run of docs/protocol.md ("Secondary settings"): HC18 at 10 training images, the protocol's
# command with 2 repeats (fixed here, before the start) and the exploratory schedule 20 x 100 (E10 was not
# measured: the CPU went to the primary run). Start it only after the primary run has finished, as the primary's
# run.sh is started: from a detached worktree with KEEP=<checkout>/docs/results/protocol_hc18_n10/kept
# (scripts/kept_run.sh); rerun it with no arguments until it finishes, then `run.sh collect`. Nobody reads
# kept/results.csv before the last repeat ends.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=study_protocol_hc18_n10
bash scripts/kept_run.sh docs/results/protocol_hc18_n10 "$OUT" "${1:-run}" -- \
    autosam study -d ../shared/data/hc18 -o "$OUT" --test-cases docs/results/confirmation_hc18.txt \
    --subject-pattern '^([^_]+)_' --exclude 719,800,801 --train-sizes 10 --repeats 2 --baseline nnunet \
    --adapt-source nnunet --adapt-folds 3 --adapt-epochs 3 --nnunet-configuration 2d \
    --nnunet-spacing 999 3 3 --nnunet-epochs 20 --nnunet-iterations 100 \
    --methods nnunet nnunet+tuned nnunet+prompter nnunet-folds prompter tuned
