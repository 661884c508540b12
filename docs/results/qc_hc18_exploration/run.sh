#!/usr/bin/env bash
# Label-free QC (issue #37) on HC18, prompter + SAM, exploration cases only: a prompter trained on 10 images of
# seeded subjects (no tuning: refine's default), every other image of the other subjects scored. The 30
# confirmation images (docs/results/confirmation_hc18.txt) and the 3 sample images are never used; benchmark_qc.py
# refuses confirmation cases. Steps: train-prompter; segment --no-sam --save-probabilities (the prompter's coarse
# maps); refine --qc (frozen LiteMedSAM, default settings, signals collected on the way); scripts/benchmark_qc.py
# (calibration cross-fitted by subject). Resumable: each step keeps what it finished.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=../shared/data/hc18
WORK=${WORK:-qc_explore_hc18}
HERE=docs/results/qc_hc18_exploration
mkdir -p "$WORK"
python - "$DATA" "$WORK" <<'PY'
import os, re, sys
from pathlib import Path
import numpy as np
data, work = Path(sys.argv[1]), Path(sys.argv[2])
sacred = set(Path("docs/results/confirmation_hc18.txt").read_text().split()) | {"719_HC", "800_HC", "801_HC"}
cases = sorted(f.name[: -len("_0000.png")] for f in (data / "imagesTr").iterdir() if f.name.endswith("_0000.png"))
pool = [c for c in cases if c not in sacred]
subject = lambda c: re.match(r"^([^_]+)_", c).group(1)
subjects = sorted({subject(c) for c in pool})
train = []
for s in np.random.default_rng(20261207).permutation(subjects):
    if len(train) >= 10:
        break
    train += [c for c in pool if subject(c) == s]
test = [c for c in pool if subject(c) not in {subject(t) for t in train}]
for name, chosen in (("train", train), ("test", test)):
    root = work / name
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").exists() or os.symlink((data / "dataset.json").resolve(), root / "dataset.json")
    for c in chosen:
        for src, dst in ((data / "imagesTr" / f"{c}_0000.png", root / "imagesTr" / f"{c}_0000.png"),
                         (data / "labelsTr" / f"{c}.png", root / "labelsTr" / f"{c}.png")):
            dst.exists() or os.symlink(src.resolve(), dst)
    (work / f"{name}.txt").write_text("\n".join(chosen) + "\n")
print(f"{len(train)} training image(s), {len(test)} scored image(s) of other subjects")
PY
autosam train-prompter -d "$WORK/train" -o "$WORK/prompter" --subject-pattern '^([^_]+)_' --no-tune
autosam segment -i "$WORK/test/imagesTr" --prompter "$WORK/prompter" -o "$WORK/coarse" --no-sam --save-probabilities
autosam refine -i "$WORK/test/imagesTr" -c "$WORK/coarse" -o "$WORK/refined" --qc
python scripts/benchmark_qc.py --coarse "$WORK/coarse" --refined "$WORK/refined" --labels "$WORK/test/labelsTr" \
    --train-labels "$WORK/train/labelsTr" --subject-pattern '^([^_]+)_' | tee "$HERE/benchmark.txt"
cp "$WORK/refined/quality.csv" "$WORK/train.txt" "$WORK/test.txt" "$HERE/"
