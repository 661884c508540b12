"""LiteMedSAM's image encoder on the CPU: torch eager against ONNX Runtime and OpenVINO, side by side in one run.

Usage:
    python scripts/benchmark_cpu_runtime.py [--threads 1 2] [--batch-sizes 1 2 4 8 16] [--rounds 1]
        [--engines torch onnx openvino openvino-mixed openvino-bf16] [--study] [--cache-dir DIR]

Speed: for each thread count and batch size, every engine encodes the same random canvases; the engines take
turns in the order A B C ... C B A (``--rounds`` times), so a change of load hits all of them, and each engine's
best time counts (the first call at a new batch size pays the runtimes' shape set-up). ``load`` is the 1-minute
load average over the block. The runtimes are exported into ``--cache-dir`` (default: a new temporary folder, so
the build time is measured too).

``--study``: the oracle on the bundled sample (boxes from the reference labels, hc18 3 images, hippocampus 6
cases) with every engine: mean Dice per dataset, and per prompt the Dice between the engine's mask and torch's.
Also times the torch decoder per prompt and the mask upsampling (one call per prompt against one per slice size).
Prints markdown tables.

The ``openvino-mixed`` and ``openvino-bf16`` variants are experiments of this script only (autosam runs the
runtimes in f32): :func:`runtime_encoder` compiles the package's cached f32 IR with OpenVINO's bf16 inference
precision, or with only the :data:`MIXED_OPS` in bf16.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Benchmark variant -> (engine, precision).
VARIANTS = {"torch": ("torch", "f32"), "onnx": ("onnx", "f32"), "openvino": ("openvino", "f32"),
            "openvino-mixed": ("openvino", "mixed"), "openvino-bf16": ("openvino", "bf16")}
#: Precisions of the runtime variants (only OpenVINO has more than f32).
PRECISIONS = ("f32", "mixed", "bf16")
#: OpenVINO operations that ``mixed`` precision runs in bf16 (the matrix products of attention and the MLPs);
#: the convolutions, which move the embeddings most in bf16, and everything else stay f32.
MIXED_OPS = ("MatMul", "ScaledDotProductAttention")


def mixed(model) -> None:
    """Give the :data:`MIXED_OPS` of an OpenVINO model bf16 inputs (and their results back in f32), in place: the
    CPU plugin then runs them in bf16 and the rest in f32. (Its per-node ``disable_fp16_compression`` mark does
    not keep a node in f32 under a bf16 inference precision, so the bf16 part is made explicit instead.)"""
    import openvino as ov
    import openvino.opset13 as opset

    for op in model.get_ordered_ops():
        if op.get_type_name() not in MIXED_OPS:
            continue
        for port in op.inputs():
            source = port.get_source_output()
            if source.get_element_type() == ov.Type.f32:
                port.replace_source_output(opset.convert(source, "bf16").output(0))
        op.validate_and_infer_types()
        users = list(op.output(0).get_target_inputs())
        back = opset.convert(op.output(0), "f32")
        for port in users:
            port.replace_source_output(back.output(0))
    model.validate_nodes_and_infer_types()


def runtime_encoder(model, engine: str, threads: Optional[int] = None, precision: str = "f32"):
    """autosam's ``RuntimeEncoder`` of ``engine`` (exported into the cache if needed); with OpenVINO and
    ``precision`` ``bf16`` (its inference precision) or ``mixed`` (:data:`MIXED_OPS` in bf16, the rest in f32),
    the same cached IR compiled in that precision here."""
    from autosam.errors import AutosamError
    from autosam.sam.engines import RuntimeEncoder, compile_openvino, read_openvino

    if precision not in PRECISIONS or (engine == "onnx" and precision != "f32"):
        raise AutosamError(f"engine {engine} has no precision {precision!r}")
    encoder = RuntimeEncoder.load(model, engine, threads=threads)
    if precision == "f32":
        return encoder
    core, ov_model = read_openvino(encoder.folder)
    if precision == "mixed":
        mixed(ov_model)
    run = compile_openvino(core, ov_model, threads or torch.get_num_threads(),
                           INFERENCE_PRECISION_HINT="f32" if precision == "mixed" else precision)
    return RuntimeEncoder(engine, encoder.folder, run, encoder.key)


def encoders(model, names: list[str], threads: int) -> dict:
    """Variant -> function(canvas tensor) -> embeddings, each running on ``threads`` threads."""
    torch.set_num_threads(threads)
    out = {}
    for name in names:
        engine, precision = VARIANTS[name]
        if engine == "torch":
            out[name] = lambda x: model.embed(x)
        else:
            out[name] = runtime_encoder(model, engine, threads=threads, precision=precision)
    return out


def speed(model, names: list[str], threads: list[int], batch_sizes: list[int], rounds: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for t in threads:
        run = encoders(model, names, t)
        with torch.inference_mode():
            for f in run.values():  # warm-up
                f(torch.rand(1, 3, 256, 256))
            for bs in batch_sizes:
                x = torch.from_numpy(rng.random((bs, 3, 256, 256), dtype=np.float32))
                times = {n: [] for n in names}
                loads = [os.getloadavg()[0]]
                for _ in range(rounds):
                    for n in names + names[::-1]:
                        start = time.perf_counter()
                        run[n](x)
                        times[n].append(time.perf_counter() - start)
                loads.append(os.getloadavg()[0])
                for n in names:
                    rows.append({"threads": t, "batch": bs, "engine": n, "slices/s": bs / min(times[n]),
                                 "load": float(np.mean(loads))})
                ref = bs / min(times[names[0]])
                line = ", ".join(f"{r['engine']} {r['slices/s']:.2f} slices/s ({r['slices/s'] / ref:.2f}x)"
                                 for r in rows[-len(names):])
                print(f"threads {t} batch {bs}: {line}", flush=True)
    return rows


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def study(model, names: list[str], threads: int) -> tuple[list[dict], dict]:
    """Oracle Dice per dataset and engine, and per-prompt mask agreement with torch."""
    from autosam import io, slicing
    from autosam.labels import labels_from_probabilities
    from autosam.oracle import oracle_prompts
    from autosam.sam import SamPredictor
    from autosam.sam.engines import weights_version
    from autosam.sam.transforms import normalize_case
    from autosam.sample import sample_dataset

    torch.set_num_threads(threads)
    predictors = {}
    for n in names:
        engine, precision = VARIANTS[n]
        p = SamPredictor(model, device="cpu", engine=engine)
        if engine != "torch":  # the precision is the benchmark's choice, not the predictor's default
            p._encoder = runtime_encoder(model, engine, threads=threads, precision=precision)
            p._encoder_version = weights_version(model)
        predictors[n] = p
    rows, agreement = [], {n: [] for n in names}
    seconds = {n: 0.0 for n in names}
    for dataset in ("hc18", "hippocampus"):
        root = sample_dataset(dataset)
        info = io.load_dataset_json(root)
        cases = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
        scores = {n: [] for n in names}
        for cid in sorted(cases):
            case = io.read_case(cid, cases[cid])
            label = io.read_label(root / "labelsTr" / f"{cid}{info.file_ending}")[0]
            axis = slicing.choose_axis(case.spacing, label.shape, None)
            image = normalize_case(case.image, info.channel_names)
            prompts = oracle_prompts(label, axis, info.foreground)
            slices = slicing.to_slices(image, axis)
            wanted = sorted({cp.prompt.slice_index for cp in prompts})
            local = {s: i for i, s in enumerate(wanted)}
            masks = {}
            for n, p in predictors.items():
                start = time.perf_counter()
                p.set_slices([slices[s] for s in wanted])
                result = p.predict([replace(cp.prompt, slice_index=local[cp.prompt.slice_index]) for cp in prompts])
                seconds[n] += time.perf_counter() - start
                masks[n] = [lg > 0 for lg in result.logits]
                probs = np.zeros((len(info.foreground), len(slices)) + slices.shape[2:], dtype=np.float32)
                for cp, lg in zip(prompts, result.logits):
                    k = info.foreground.index(cp.label)
                    z = cp.prompt.slice_index
                    np.maximum(probs[k, z], 1 / (1 + np.exp(-lg)), out=probs[k, z])
                probs = np.stack([slicing.from_slices(q[:, None], axis)[0] for q in probs])
                seg = labels_from_probabilities(probs, info.foreground)
                scores[n].append(np.mean([dice(seg == v, label == v) for v in info.foreground]))
            for n in names:
                agreement[n] += [dice(a, b) for a, b in zip(masks[n], masks[names[0]])]
        for n in names:
            rows.append({"dataset": dataset, "cases": len(cases), "engine": n, "dice": float(np.mean(scores[n]))})
        print(f"{dataset}: " + ", ".join(f"{r['engine']} {r['dice']:.4f}" for r in rows[-len(names):]), flush=True)
    summary = {n: {"prompts": len(agreement[n]), "min": float(np.min(agreement[n])),
                   "mean": float(np.mean(agreement[n])), "below_0.99": int(np.sum(np.array(agreement[n]) < 0.99)),
                   "seconds": seconds[n]} for n in names}
    return rows, summary


def decoder_costs(model, threads: int, n_prompts: int = 64) -> dict:
    """Torch decoder seconds per box prompt, and mask upsampling per prompt vs batched (hc18-sized slices)."""
    from autosam.sam import SamPredictor, SamPrompt
    from autosam.sam import transforms as T
    from autosam.sam.predictor import upsample

    torch.set_num_threads(threads)
    p = SamPredictor(model, device="cpu", engine="torch")
    p.embeddings = torch.randn(1, 256, 64, 64)
    p.sizes = [(540, 800)]
    prompts = [SamPrompt(0, box=np.array([100 + i, 80, 500, 400 + i], dtype=np.float32)) for i in range(n_prompts)]
    with torch.inference_mode():
        p.predict(prompts[:2])
        start = time.perf_counter()
        low, _ = p._decode_group(prompts, (True, False, False), False)
        decode = (time.perf_counter() - start) / n_prompts
        loop, batched = [], []
        for _ in range(2):  # both keep every mask, as predict() does
            start = time.perf_counter()
            kept = [T.logits_to_slice(low[j : j + 1], (540, 800), 256)[0, 0].numpy() for j in range(n_prompts)]
            loop.append(time.perf_counter() - start)
            del kept
            start = time.perf_counter()
            kept = upsample(low, [(540, 800)] * n_prompts, 256, chunk=16)
            batched.append(time.perf_counter() - start)
            del kept
        loop, batched = min(loop), min(batched)
    return {"decoder_s_per_prompt": decode, "upsample_loop_s": loop, "upsample_batched_s": batched,
            "prompts": n_prompts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx", "openvino"], choices=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=1, help="A B C C B A sequences per measurement (default 1)")
    ap.add_argument("--study", action="store_true", help="also the oracle study on the bundled sample")
    ap.add_argument("--study-threads", type=int, default=None,
                    help="threads for the study (default: the last --threads)")
    ap.add_argument("--cache-dir", default=None, help="runtime cache (default: a new temporary folder)")
    args = ap.parse_args()
    if args.engines[0] != "torch":
        ap.error("--engines must start with torch (the reference)")
    os.environ["AUTOSAM_CACHE_DIR"] = args.cache_dir or tempfile.mkdtemp(prefix="autosam-runtime-")
    from autosam.sam import build_sam
    from autosam.sam.engines import RuntimeEncoder, cache_dir, runtime_version

    model = build_sam("litemedsam").eval()
    torch.set_num_threads(max(args.threads))
    build = {}
    for n in args.engines[1:]:
        engine, precision = VARIANTS[n]
        if engine in build:
            continue
        start = time.perf_counter()
        RuntimeEncoder.load(model, engine)
        build[engine] = (time.perf_counter() - start, runtime_version(engine).split("-")[0])
    print(f"runtime cache: {cache_dir()}; build (export + convert + check) seconds: "
          + ", ".join(f"{e} {v[1]} {v[0]:.1f}" for e, v in build.items()), flush=True)
    rows = speed(model, args.engines, args.threads, args.batch_sizes, args.rounds)
    costs = decoder_costs(model, max(args.threads))
    study_rows, agreement = study(model, args.engines, args.study_threads or args.threads[-1]) if args.study \
        else ([], {})

    print(f"\nCPU: {os.cpu_count()} cores; torch {torch.__version__}; "
          + ", ".join(f"{e} {v[1]}" for e, v in build.items()))
    print("\n| threads | batch | load | " + " | ".join(f"{n} slices/s" for n in args.engines) + " | "
          + " | ".join(f"{n} / torch" for n in args.engines[1:]) + " |")
    print("|---:|---:|---:|" + "---:|" * (2 * len(args.engines) - 1))
    for i in range(0, len(rows), len(args.engines)):
        group = rows[i : i + len(args.engines)]
        ref = group[0]["slices/s"]
        print(f"| {group[0]['threads']} | {group[0]['batch']} | {np.mean([r['load'] for r in group]):.1f} | "
              + " | ".join(f"{r['slices/s']:.2f}" for r in group) + " | "
              + " | ".join(f"{r['slices/s'] / ref:.2f}x" for r in group[1:]) + " |")
    print(f"\ntorch decoder: {1000 * costs['decoder_s_per_prompt']:.1f} ms per box prompt; upsampling "
          f"{costs['prompts']} masks to 540x800: {1000 * costs['upsample_loop_s']:.0f} ms one by one, "
          f"{1000 * costs['upsample_batched_s']:.0f} ms in chunks of 16 ({max(args.threads)} threads)")
    if study_rows:
        print("\n| engine | hc18 Dice | hippocampus Dice | prompts | per-prompt Dice vs torch: min | mean | < 0.99 | "
              "SAM seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.engines:
            d = {r["dataset"]: r["dice"] for r in study_rows if r["engine"] == n}
            a = agreement[n]
            print(f"| {n} | {d['hc18']:.4f} | {d['hippocampus']:.4f} | {a['prompts']} | {a['min']:.4f} | "
                  f"{a['mean']:.4f} | {a['below_0.99']} | {a['seconds']:.0f} |")


if __name__ == "__main__":
    main()
