#!/usr/bin/env bash
# The primary confirmation run of docs/protocol.md ("Primary comparison"), registered before it started: the
# protocol's hippocampus command with E = 40 (its "convergence rule's outcome") and the three-plane SAM-free
# control nnunet-planes (its round-8 clarification). Run once; resumable: run it again with no arguments until
# it finishes, then `bash docs/results/protocol_hippocampus_n10/run.sh collect` copies the results here.
# It outlives a session in kept/ (KEEP): scripts/kept_run.sh has scripts/keep_study.py copy there, every minute
# while it runs, what a rerun needs (results.csv with every method scored so far, the plan, and for the run in
# progress its prompter, nnU-Net checkpoints without optimizer state, cross-fitted maps, fit's scores, adapters
# and record, and the cases nnunet+tuned has finished), and restore it into a new study folder; the study does not
# score a method twice or train what only scored methods need. Start it first in a session, from a detached
# worktree of main (code edits in the checkout do not reach it) with
# KEEP=<checkout>/docs/results/protocol_hippocampus_n10/kept, and commit kept/ before the session ends.
# kept/ holds unfinished results: nobody reads its results.csv before the last run ends (docs/protocol.md).
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=hippocampus_148,hippocampus_149,hippocampus_165,hippocampus_221,hippocampus_319,hippocampus_320  # the sample
OUT=study_protocol_hippocampus
bash scripts/kept_run.sh docs/results/protocol_hippocampus_n10 "$OUT" "${1:-run}" -- \
    autosam study -d ../shared/data/hippocampus -o "$OUT" --test-cases docs/results/confirmation_hippocampus.txt \
    --exclude "$S" --train-sizes 10 --repeats 3 --baseline nnunet \
    --adapt-source nnunet --adapt-planes --adapt-folds 3 --adapt-epochs 3 \
    --nnunet-configuration 2d --nnunet-epochs 40 --nnunet-iterations 100 \
    --methods nnunet nnunet+tuned nnunet+prompter nnunet-folds nnunet-planes
