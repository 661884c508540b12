#!/usr/bin/env bash
# Label-free QC (issue #37), a first look on exploration cases only: nnU-Net 2d (10 training cases, 20 x 100, the
# convergence study's repeat 0, docs/results/convergence_hippocampus/) on its 26 exploration test cases, refined with
# frozen LiteMedSAM (refine's default) with QC signals, then scripts/benchmark_qc.py (cross-fitted calibration).
# No confirmation case is involved: the study excluded them, and benchmark_qc.py refuses them.
set -euo pipefail
cd "$(dirname "$0")/../../.."
STUDY=study_convergence_hippocampus
OUT=qc_explore_hippocampus
python - "$STUDY" "$OUT" <<'PY'
import sys
from pathlib import Path
from autosam import io
from autosam.pipelines.quality import QualityControl
from autosam.pipelines.refine import refine_folder
from autosam.settings import Runtime, SamSpec
study, out = Path(sys.argv[1]), Path(sys.argv[2])
info = io.load_dataset_json(study / "predictions" / "n10_s0" / "nnunet")
refine_folder(study / "test_images", study / "predictions" / "n10_s0" / "nnunet", out / "refined", info,
              SamSpec("litemedsam").maker(Runtime(device="cpu")), qc=QualityControl())
PY
python scripts/benchmark_qc.py --coarse "$STUDY/predictions/n10_s0/nnunet" --refined "$OUT/refined" \
    --labels ../shared/data/hippocampus/labelsTr
