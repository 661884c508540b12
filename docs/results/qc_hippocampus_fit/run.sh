#!/usr/bin/env bash
# Label-free QC (issue #37) with the quality model that `autosam fit` calibrates on nnU-Net's cross-fitted maps of
# the training cases, scored as is on held-out cases; and fit --frozen's cost (issue #35). Exploration cases only:
# the confirmation set of docs/protocol.md and the bundled sample are never used (benchmark_qc.py refuses
# confirmation cases). Steps, each resumable:
#   1. scripts/benchmark_fit.py: nnU-Net 2d 5-fold cross-validation (--npz) on 10 exploration cases (kept in WORK),
#      then `fit --frozen` timed from a clean fit folder; it leaves MODEL/autosam_sam.json and autosam_quality.json;
#   2. 40 other exploration cases (seeded), never trained or tuned on;
#   3. `autosam predict -m MODEL --qc`: the record's choice and fit's quality model are read by predict itself;
#   4. scripts/benchmark_qc.py: fit's model as is, beside the cross-fitted models and softmax entropy.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=docs/results/qc_hippocampus_fit
DATA=../shared/data/hippocampus
WORK=${WORK:-/tmp/autosam_benchmark_fit}
OUT=${OUT:-qc_explore_fit}
MODEL=$WORK/e10x50/nnUNet_results/Dataset905_FitBench/nnUNetTrainer_autosam_Short__nnUNetPlans__2d
if [ ! -f "$HERE/benchmark_fit.txt" ]; then
    python scripts/benchmark_fit.py --work "$WORK" > "$OUT.fit.log"
    tail -6 "$OUT.fit.log" > "$HERE/benchmark_fit.txt"
fi
python - "$DATA" "$OUT" "$WORK/e10x50/nnUNet_raw/Dataset905_FitBench" <<'PY'
import os, sys
from pathlib import Path
import numpy as np
data, out, raw = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sacred = set(Path("docs/results/confirmation_hippocampus.txt").read_text().split())
sacred |= {f"hippocampus_{s}" for s in ("148", "149", "165", "221", "319", "320")}  # the bundled sample
trained = {f.name[: -len("_0000.nii.gz")] for f in (raw / "imagesTr").glob("*_0000.nii.gz")}  # the CV's cases
cases = sorted(f.name[: -len("_0000.nii.gz")] for f in (data / "imagesTr").glob("*_0000.nii.gz"))
pool = [c for c in cases if c not in sacred | trained]
held = sorted(pool[i] for i in np.random.default_rng(20261207).permutation(len(pool))[:40])
for sub in ("images", "labels"):
    (out / sub).mkdir(parents=True, exist_ok=True)
for c in held:
    for src, dst in ((data / "imagesTr" / f"{c}_0000.nii.gz", out / "images" / f"{c}_0000.nii.gz"),
                     (data / "labelsTr" / f"{c}.nii.gz", out / "labels" / f"{c}.nii.gz")):
        dst.exists() or os.symlink(src.resolve(), dst)
(out / "held_out.txt").write_text("\n".join(held) + "\n")
print(f"{len(held)} held-out exploration cases; nnU-Net's cross-validation trained on {len(trained)} others")
PY
autosam predict -m "$MODEL" -i "$OUT/images" -o "$OUT/predicted" --qc
python scripts/benchmark_qc.py --coarse "$OUT/predicted" --refined "$OUT/predicted" --labels "$OUT/labels" \
    --quality-model "$MODEL/autosam_quality.json" | tee "$HERE/benchmark.txt"
cp "$OUT/predicted/quality.csv" "$OUT/held_out.txt" "$MODEL/autosam_sam.json" "$MODEL/autosam_quality.json" "$HERE/"
