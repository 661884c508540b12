#!/usr/bin/env bash
# Run (or resume) a long study so that it outlives sessions whose folders do not survive (docs/protocol.md,
# execution notes): restore the study folder from KEEP, save into KEEP every minute and on exit
# (scripts/keep_study.py), and log each start. Each session commits KEEP; `collect` copies the finished study's
# result files into HERE.
#
#   bash scripts/kept_run.sh HERE OUT run -- autosam study ... -o OUT ...
#   bash scripts/kept_run.sh HERE OUT collect
#
# HERE: the results folder (docs/results/NAME; invocations.txt goes beside KEEP, by default HERE/kept); OUT: the
# study folder, relative to the checkout. Start it from a detached worktree of main (edits in the checkout do not
# reach it) with KEEP=<checkout>/HERE/kept, so that the checkout commits what it keeps.
set -euo pipefail
HERE=$1 OUT=$2 WHAT=$3
shift 3
if [ "$WHAT" = collect ]; then
    for f in results.csv summary.md stats.csv learning_curve.png plan.json; do
        if [ -f "$OUT/$f" ]; then cp "$OUT/$f" "$HERE/"; fi
    done
    find "$OUT/models" -name convergence.json -exec sh -c 'cp "$1" "$2/convergence_$(basename $(dirname "$1")).json"' _ {} "$HERE" \;
    exit 0
fi
[ "$WHAT" = run ] && [ "${1:-}" = -- ] || { echo "usage: kept_run.sh HERE OUT run -- COMMAND... | collect" >&2; exit 2; }
shift
KEEP=${KEEP:-$HERE/kept}
mkdir -p "$(dirname "$KEEP")"
echo "$(date -u +%FT%TZ) start, autosam $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >> "$(dirname "$KEEP")/invocations.txt"
python scripts/keep_study.py "$OUT" "$KEEP" --restore
(while sleep 60; do python scripts/keep_study.py "$OUT" "$KEEP" || true; done) &
trap 'kill $! 2>/dev/null; python scripts/keep_study.py "$OUT" "$KEEP"' EXIT
"$@"
