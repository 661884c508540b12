#!/usr/bin/env bash
# Secondary confirmation run of docs/protocol.md ("Secondary settings"): HC18 with all 87 non-confirmation,
# non-sample images, the protocol's command with 1 repeat (fixed here, before the start) and the exploratory
# schedule 20 x 50 (EALL was not measured). Start it after protocol_hc18_n10 has finished, the same way (its
# run.sh; KEEP=<checkout>/docs/results/protocol_hc18_all/kept), then `run.sh collect`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=study_protocol_hc18_all
bash scripts/kept_run.sh docs/results/protocol_hc18_all "$OUT" "${1:-run}" -- \
    autosam study -d ../shared/data/hc18 -o "$OUT" --test-cases docs/results/confirmation_hc18.txt \
    --subject-pattern '^([^_]+)_' --exclude 719,800,801 --train-sizes all --repeats 1 --baseline nnunet \
    --adapt-source nnunet --adapt-folds 3 --adapt-epochs 3 --nnunet-configuration 2d \
    --nnunet-spacing 999 3 3 --nnunet-epochs 20 --nnunet-iterations 50 \
    --methods nnunet nnunet+tuned nnunet+prompter nnunet-folds prompter tuned
