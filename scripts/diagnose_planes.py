"""Which plane SAM refines nnU-Net best along: a diagnostic on the test cases of an ``autosam study`` (its nnU-Net
predictions with probabilities, its adapter, its embedding cache).

Per SAM (frozen, and the study run's adapter when it has one), the study's built-in refine default (``box+mask``,
``average``) with the slice axis forced to 0, 1 and 2, on the default axis (each case's own), and on all three
planes (``--planes``). Dice is the mean over labels and test cases; better / worse counts cases against nnU-Net
alone. Pass the study's dataset, as the study was run.

    OMP_NUM_THREADS=2 python scripts/diagnose_planes.py --study study_hippocampus_nnsrc \\
        --data ../shared/data/hippocampus --run n10_s0
"""
from __future__ import annotations

import numpy as np

from autosam import io, refine
from autosam.labels import dice_per_label
from autosam.sam import build_sam
from autosam.sam.cache import CachingPredictor

from study_diagnostics import study_parts  # scripts/, beside this file

VARIANTS = {"axis 0": {"axis": 0}, "axis 1": {"axis": 1}, "axis 2": {"axis": 2}, "default axis": {},
            "three planes": {"planes": True}}


def main() -> None:
    study = study_parts(__doc__)
    info, labels, nnunet_dir, cases = study.info, study.info.foreground, study.nnunet, study.cases
    sams = {"frozen": None, **({"adapted": str(study.adapter)} if (study.adapter / "adapter.pt").is_file() else {})}
    rows: dict = {}
    for sam_name, sam_adapter in sams.items():
        sam = CachingPredictor(build_sam("litemedsam", adapter=sam_adapter), device="cpu", cache=study.cache)
        for case_id, files in cases:
            case = io.read_case(case_id, files)
            ref = study.reference(case_id)
            seg, probs = refine.read_coarse(case, info, nnunet_dir / f"{case_id}{info.file_ending}",
                                            nnunet_dir / f"{case_id}.npz")
            rows.setdefault(("nnunet alone", ""), []).append(np.nanmean(dice_per_label(seg, ref, labels)))
            with sam.remembering_decodes():  # the planes reuse each axis's decodes
                for name, fields in VARIANTS.items():
                    out = refine.refine_case(sam, case, info, seg, probs, refine.RefineConfig.from_dict(fields), keep=False)
                    rows.setdefault((sam_name, name), []).append(
                        np.nanmean(dice_per_label(out.segmentation, ref, labels)))
            print(sam_name, case_id, flush=True)
    base = np.array(rows.pop(("nnunet alone", "")))[: len(cases)]
    print(f"\n| SAM | slices | Dice | better / worse than nnU-Net (of {len(cases)}) |\n|---|---|---:|---:|")
    print(f"| - | nnU-Net alone | {base.mean():.4f} | - |")
    for (sam_name, name), v in rows.items():
        v = np.array(v)
        print(f"| {sam_name} | {name} | {v.mean():.4f} | {int((v > base + 1e-9).sum())} / "
              f"{int((v < base - 1e-9).sum())} |")


if __name__ == "__main__":
    main()
