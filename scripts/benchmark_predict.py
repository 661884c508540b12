"""``autosam predict``'s case loop: plain against pipelined (nnU-Net's preprocessing of the next case in the read-ahead
thread, writing in the background) and, with ``--processes N``, pipelined with nnU-Net's preprocessing in N worker
processes reading N cases ahead (``autosam predict -npp N``), in one process, on the same cases.

Without ``--model`` a tiny nnU-Net 2d (1 epoch x 2 iterations, CPU) is trained on 4 cases of the bundled hippocampus
sample into a temporary folder: an untrained network costs the same per case as a trained one. No SAM runs (``-c``
nnU-Net alone), so the table isolates the loop around nnU-Net. Each variant runs twice, in the order A B C C B A,
and its faster run counts; the outputs of all variants must be identical. ``--zoom F`` writes each image
upsampled F times per axis (SimpleITK's ``Expand``, spacing divided by F), so nnU-Net resamples every case down to
its plans' spacing and its prediction back up: preprocessing and export then take a real share of a case.

    OMP_NUM_THREADS=2 python scripts/benchmark_predict.py --cases 10
    OMP_NUM_THREADS=2 python scripts/benchmark_predict.py --cases 10 --zoom 3 --processes 2
    python scripts/benchmark_predict.py --model MODEL_FOLDER --images IMAGES_DIR
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autosam import io
from autosam.nnunet import inference as nnunet
from autosam.nnunet.train import Schedule, train_nnunet
from autosam.pipelines.predict import predict_folder
from autosam.sample import sample_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hippocampus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="trained nnU-Net model folder (default: train a tiny one)")
    ap.add_argument("--images", type=Path, help=f"image folder (default: --cases cases of {DATA} or the sample)")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--zoom", type=int, default=1, help="upsample each image this many times per axis")
    ap.add_argument("--processes", type=int, default=0, help="also time -npp N (N > 0)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sample = sample_dataset("hippocampus")
        train = sorted(f.name[: -len(".nii.gz")] for f in (sample / "labelsTr").iterdir())[:4]
        model = args.model or train_nnunet(sample, train, tmp / "nnunet", 950, Schedule(
            configuration="2d", epochs=1, iterations=2, val_iterations=1, threads=args.threads), name="Bench")
        images = args.images or link_cases(DATA if DATA.is_dir() else sample, set(train), args.cases, tmp / "images")
        info = nnunet.model_dataset_info(model)
        spent = {"preprocess": 0.0}
        real = nnunet.preprocess_case

        def timed_preprocess(predictor, case):
            start = time.perf_counter()
            try:
                return real(predictor, case)
            finally:
                spent["preprocess"] += time.perf_counter() - start

        nnunet.preprocess_case = timed_preprocess
        if args.zoom > 1:
            images = zoomed(images, args.zoom, tmp / "zoomed", info.file_ending)
        variants = [("plain", False, 0), ("pipelined", True, 0)]
        if args.processes > 0:
            variants.append((f"pipelined, -npp {args.processes}", True, args.processes))
        best, outputs = {}, {}
        for i, (name, pipeline, processes) in enumerate(variants + variants[::-1]):
            out = tmp / f"out_{i}"
            spent["preprocess"] = 0.0
            start = time.perf_counter()
            written = predict_folder(images, out, lambda: nnunet.load_nnunet_predictor(model, device="cpu"), info,
                                     None, None, plans=model / "plans.json", pipeline=pipeline, quiet=True,
                                     nnunet_processes=processes)
            seconds = time.perf_counter() - start
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, spent["preprocess"], len(written))
            outputs[name] = {c: io.read_label(out / f"{c}{info.file_ending}")[0] for c in written}
        nnunet.preprocess_case = real
        shape = io.read_case("first", [sorted(images.iterdir())[0]], io.reader_writer(info.file_ending)).image.shape[1:]
    same = all(np.array_equal(outputs[name][c], outputs["plain"][c]) for name in outputs for c in outputs["plain"])
    plain = best["plain"][0]
    print(f"\n{best['plain'][2]} case(s) of {images.name}, {' x '.join(map(str, shape))} voxels (the first), model "
          f"{model.name}, {args.threads} threads, CPU, load {os.getloadavg()[0]:.1f}; identical outputs: {same}\n")
    print("| loop | s total | s/case | preprocessing s in this process (all cases) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, _, _ in variants:
        seconds, pre, n = best[name]
        print(f"| {name} | {seconds:.1f} | {seconds / n:.2f} | {pre:.1f} | {plain / seconds:.2f}x |")
    if not same:
        raise SystemExit("the variants wrote other segmentations")


def zoomed(images: Path, factor: int, folder: Path, file_ending: str) -> Path:
    """Each image of ``images`` upsampled ``factor`` times per axis (linear), its spacing divided by ``factor``."""
    import SimpleITK as sitk

    folder.mkdir()
    for f in sorted(images.iterdir()):
        image = sitk.ReadImage(str(f))
        sitk.WriteImage(sitk.Expand(image, [factor] * image.GetDimension(), sitk.sitkLinear), str(folder / f.name))
    return folder


def link_cases(source: Path, skip: set, n: int, folder: Path) -> Path:
    """Symlinks to the first ``n`` images of ``source`` whose case is not in ``skip``."""
    folder.mkdir()
    info = io.load_dataset_json(source)
    cases = [c for c in sorted(io.list_cases(source / "imagesTr", info.file_ending, info.num_channels))
             if c not in skip][:n]
    for c in cases:
        name = f"{c}_0000{info.file_ending}"
        (folder / name).symlink_to((source / "imagesTr" / name).resolve())
    return folder


if __name__ == "__main__":
    main()
