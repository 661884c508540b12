"""The image encoder in ONNX Runtime / OpenVINO: masks agree with torch, the export cache, engine choice and errors;
and the batched mask upsampling and windowed prompt building give what the old per-item code gave."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from autosam import io, progress, prompts
from autosam.errors import AutosamError
from autosam.prompts import bounding_box, prompts_for_slices
from autosam.sam import SamPredictor, SamPrompt, build_sam, onnx_export
from autosam.sam import engines as runtime
from autosam.sam import transforms as T
from autosam.sam.engines import RuntimeEncoder, resolve_engine
from autosam.sample import sample_dataset

ENGINES = [pytest.param(e, marks=pytest.mark.skipif(not runtime.installed(e), reason=f"{e} is not installed"))
           for e in ("onnx", "openvino")]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


@pytest.fixture(scope="module")
def runtime_cache(tmp_path_factory):
    """One runtime cache folder for this module (each export of LiteMedSAM takes 10-20 s)."""
    folder = tmp_path_factory.mktemp("autosam_cache")
    old = os.environ.get("AUTOSAM_CACHE_DIR")
    os.environ["AUTOSAM_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("AUTOSAM_CACHE_DIR", None)
    else:
        os.environ["AUTOSAM_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def sample_slices():
    """The bundled hc18 image 801_HC and 4 prompted slices of hippocampus_148, with their reference labels."""
    out = []
    for dataset, case_id in (("hc18", "801_HC"), ("hippocampus", "hippocampus_148")):
        root = sample_dataset(dataset)
        info = io.load_dataset_json(root)
        files = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)[case_id]
        case = io.read_case(case_id, files)
        label = io.read_label(root / "labelsTr" / f"{case_id}{info.file_ending}")[0]
        image = T.normalize_case(case.image, info.channel_names)
        keep = [z for z in range(label.shape[0]) if label[z].any()]
        for z in keep[:: max(1, len(keep) // 4)][:4]:
            out.append((image[:, z], label[z]))
    return out


def sample_prompts(sample_slices) -> list[SamPrompt]:
    """Boxes from the labels (one per label and component), a positive point and a box with a mask prompt."""
    out = []
    for i, (_, label) in enumerate(sample_slices):
        for cp in prompts_for_slices(label[None], sorted(set(np.unique(label)) - {0}), "box"):
            out.append(SamPrompt(i, box=cp.prompt.box))
        pos = np.argwhere(label > 0)[len(np.argwhere(label > 0)) // 2]
        out.append(SamPrompt(i, points=np.array([[pos[1], pos[0]]], dtype=np.float32), point_labels=np.ones(1)))
        out.append(SamPrompt(i, box=bounding_box(label > 0), mask=np.where(label > 0, 4.0, -4.0)))
    return out


# -- the runtime against torch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_runtime_masks_agree_with_torch_on_the_sample(engine, litemedsam, runtime_cache, sample_slices):
    slices = [s for s, _ in sample_slices]
    prompts_ = sample_prompts(sample_slices)
    reference = SamPredictor(litemedsam, device="cpu", engine="torch")
    reference.set_slices(slices)
    expected = reference.predict(prompts_)
    predictor = SamPredictor(litemedsam, device="cpu", engine=engine)
    assert predictor.engine == engine
    predictor.set_slices(slices)
    assert predictor.engine == engine  # no fallback happened
    got = predictor.predict(prompts_)
    scores = [dice(a > 0, b > 0) for a, b in zip(expected.logits, got.logits)]
    assert min(scores) >= 0.99, scores
    np.testing.assert_allclose(got.iou, expected.iou, atol=1e-3)
    assert list((runtime_cache / "runtime").glob(f"litemedsam-{engine}-*/meta.json"))


def benchmark_script():
    """scripts/benchmark_cpu_runtime.py as a module: its bf16 and mixed-precision OpenVINO variants live there."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_cpu_runtime.py"
    spec = importlib.util.spec_from_file_location("benchmark_cpu_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.skipif(not runtime.installed("openvino") or not _cpu_has_bf16(), reason="needs OpenVINO and bf16")
def test_mixed_precision_keeps_the_convolutions_in_f32(litemedsam, runtime_cache, sample_slices):
    """``mixed`` (bf16 linear layers and attention, f32 convolutions) lies between f32 and bf16: its embeddings
    are at most half as far from torch's as full bf16's, and farther than f32's rounding (the variants of
    scripts/benchmark_cpu_runtime.py)."""
    bench = benchmark_script()
    canvas = T.to_canvas([s for s, _ in sample_slices], int(litemedsam.image_size))
    with torch.inference_mode():
        ref = litemedsam.embed(canvas)
    error = {}
    for precision in ("f32", "mixed", "bf16"):
        got = bench.runtime_encoder(litemedsam, "openvino", precision=precision)(canvas)
        error[precision] = float(((got - ref) ** 2).mean().sqrt() / (ref**2).mean().sqrt())
    assert error["f32"] < 1e-3 < error["mixed"] < 0.5 * error["bf16"], error
    with pytest.raises(AutosamError, match="no precision"):
        bench.runtime_encoder(litemedsam, "onnx", precision="mixed")


def test_default_engine_on_cpu_is_the_fastest_installed_runtime(litemedsam, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_importable", lambda m: True)
    assert resolve_engine("auto", cpu, "litemedsam") == runtime.PREFERENCE[0]
    assert resolve_engine("auto", cpu, "sam_vit_h") == "torch"  # big ViTs only on request
    assert resolve_engine("auto", torch.device("cuda"), "litemedsam") == "torch"
    with pytest.raises(AutosamError, match="runs on the CPU"):
        resolve_engine("onnx", torch.device("cuda"), "litemedsam")


def test_auto_without_runtime_is_torch_with_one_notice(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "_importable", lambda m: m not in ("onnxruntime", "openvino"))
    monkeypatch.setattr(progress, "_noticed", set())
    cpu = torch.device("cpu")
    assert resolve_engine("auto", cpu, "litemedsam") == "torch"
    assert resolve_engine("auto", cpu, "litemedsam") == "torch"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autosam: note:") and "autosam[cpu]" in err[0]


def test_engine_onnx_without_the_runtime_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from autosam.cli import main

    monkeypatch.setattr(runtime, "_importable", lambda m: m != "onnxruntime")
    src = sample_dataset("hc18")
    code = main(["oracle", "-i", str(src / "imagesTr"), "-l", str(src / "labelsTr"), "-o", str(tmp_path / "out"),
                 "--device", "cpu", "--engine", "onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("autosam oracle: error: --engine onnx needs onnxruntime"), err
    assert "Traceback" not in "".join(err)


# -- the cache ---------------------------------------------------------------------------------------------------
def tiny_model(seed: int = 0):
    """A SamModel with a small convolutional encoder: exports in a second, for the cache's own tests."""
    from autosam.sam.registry import SamModel, _prompt_parts

    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.GELU(),
                                  torch.nn.Conv2d(8, 256, 1))
    prompt_encoder, mask_decoder = _prompt_parts(32, 16)
    return SamModel("tiny", encoder, prompt_encoder, mask_decoder, image_size=32).eval()


@pytest.mark.skipif(not runtime.installed("onnx"), reason="onnxruntime is not installed")
def test_cache_is_reused_rebuilt_on_new_weights_and_after_corruption(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOSAM_CACHE_DIR", str(tmp_path))
    built = []
    real_build = onnx_export.build_entry
    monkeypatch.setattr(onnx_export, "build_entry", lambda *a: (built.append(a[1]), real_build(*a)))
    model = tiny_model()
    x = torch.rand(3, 3, 32, 32)
    first = RuntimeEncoder.load(model, "onnx")
    torch.testing.assert_close(first(x), model.embed(x).detach(), atol=1e-4, rtol=1e-4)  # batch 3, exported at 2
    RuntimeEncoder.load(model, "onnx")
    assert len(built) == 1  # the second load comes from the cache

    with torch.no_grad():  # new weights (as a new checkpoint or an adapter gives): a new entry
        model.image_encoder[0].weight.add_(0.1)
    second = RuntimeEncoder.load(model, "onnx")
    assert len(built) == 2 and second.folder != first.folder
    torch.testing.assert_close(second(x), model.embed(x).detach(), atol=1e-4, rtol=1e-4)

    onnx_file = second.folder / "encoder.onnx"  # truncated: one line, rebuilt, right again
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    capsys.readouterr()
    third = RuntimeEncoder.load(model, "onnx")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(built) == 3 and len(err) == 1 and "rebuilding" in err[0] and "Traceback" not in err[0], err
    torch.testing.assert_close(third(x), model.embed(x).detach(), atol=1e-4, rtol=1e-4)

    (second.folder / "meta.json").write_text("{not json")  # a corrupt meta.json: the same
    RuntimeEncoder.load(model, "onnx")
    assert len(built) == 4 and "meta.json is unreadable" in capsys.readouterr().err
    assert json.loads((second.folder / "meta.json").read_text())["key"]["engine"] == "onnx"


@pytest.mark.skipif(not runtime.installed("onnx"), reason="onnxruntime is not installed")
def test_predictor_follows_weights_changed_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSAM_CACHE_DIR", str(tmp_path))
    model = tiny_model()
    predictor = SamPredictor(model, device="cpu", engine="onnx")
    image = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    predictor.set_slices([image])
    before = predictor.embeddings.clone()
    with torch.no_grad():  # e.g. a training step between two evaluations
        model.image_encoder[2].bias.add_(1.0)
    predictor.set_slices([image])
    assert predictor.engine == "onnx"
    torch.testing.assert_close(predictor.embeddings, before + 1.0, atol=1e-4, rtol=1e-4)


def test_a_failing_export_falls_back_to_torch_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOSAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_importable", lambda m: True)

    def broken(*_):
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(onnx_export, "build_entry", broken)
    model = tiny_model()
    predictor = SamPredictor(model, device="cpu", engine="onnx")
    predictor.set_slices([np.zeros((1, 20, 30), dtype=np.float32)])
    assert predictor.engine == "torch" and predictor.embeddings.shape == (1, 256, 16, 16)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exporter exploded" in err[0] and "runs in torch" in err[0], err


@pytest.mark.skipif(not runtime.installed("onnx"), reason="onnxruntime is not installed")
def test_lora_adapter_is_exported_with_the_encoder(tmp_path, litemedsam, runtime_cache):
    from autosam.adapt.config import AdapterConfig
    from autosam.adapt.model import prepare_model, save_adapter

    model = build_sam("litemedsam")
    config = AdapterConfig(base="litemedsam", method="lora", rank=2)
    prepare_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_adapter(model, config, tmp_path / "lora")
    adapted = build_sam("litemedsam", adapter=str(tmp_path / "lora"))
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    encoder = RuntimeEncoder.load(adapted, "onnx")
    with torch.inference_mode():
        want, base = adapted.embed(x), litemedsam.embed(x)
    got = encoder(x)
    assert float((got - want).abs().max()) <= 1e-3 * float(want.abs().max())
    assert float((got - base).abs().max()) > 0.01 * float(base.abs().max())  # the adapter is in it
    assert json.loads((encoder.folder / "meta.json").read_text())["adapter"] == str(tmp_path / "lora")


# -- batched upsampling and windowed prompts ----------------------------------------------------------------------
def test_upsampling_in_chunks_equals_one_by_one():
    from autosam.sam.predictor import upsample

    low = torch.randn(7, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    sizes = [(120, 90), (64, 200), (120, 90), (300, 300), (64, 200), (120, 90), (120, 90)]
    one = upsample(low, sizes, 256, chunk=1)
    for a, b, hw in zip(upsample(low, sizes, 256, chunk=3), one, sizes):
        assert a.shape == b.shape == hw
        np.testing.assert_allclose(a, b, atol=1e-5)
    for row, hw in enumerate(sizes):
        np.testing.assert_allclose(one[row], T.logits_to_slice(low[row : row + 1], hw, 256)[0, 0].numpy(), atol=1e-6)


def test_predict_upsamples_in_batches_as_one_by_one(litemedsam):
    predictor = SamPredictor(litemedsam, device="cpu", engine="torch", batch_size=2)
    predictor.embeddings = torch.randn(3, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    predictor.sizes = [(120, 90), (64, 200), (120, 90)]
    rng = np.random.default_rng(0)
    many = [SamPrompt(i % 3, box=np.sort(rng.uniform(0, 60, 4)).astype(np.float32)[[0, 1, 2, 3]]) for i in range(7)]
    together = predictor.predict(many, batch_size=3)
    for p, logits, iou in zip(many, together.logits, together.iou):
        alone = predictor.predict([p])
        assert logits.shape == predictor.sizes[p.slice_index]
        np.testing.assert_allclose(logits, alone.logits[0], atol=1e-4)
        assert abs(iou - alone.iou[0]) < 1e-5


def _old_positive_points(component, n=1, spacing=(1.0, 1.0)):
    dist = ndimage.distance_transform_edt(np.pad(component, 1), sampling=spacing)[1:-1, 1:-1]
    yy, xx = np.indices(component.shape)
    points = []
    for _ in range(max(0, n)):
        if dist.max() <= 0:
            break
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        points.append((x, y))
        radius = dist[y, x]
        covered = ((yy - y) * spacing[0]) ** 2 + ((xx - x) * spacing[1]) ** 2 <= radius ** 2
        dist = np.where(covered, 0.0, dist)
    return np.asarray(points, dtype=np.float32).reshape(-1, 2)


def _old_negative_points(component, class_mask, n=1):
    if n <= 0:
        return np.zeros((0, 2), dtype=np.float32)
    r = max(2.0, 0.15 * np.sqrt(component.sum()))
    outside = ndimage.distance_transform_edt(~component)
    ring = (outside >= r) & (outside <= 2 * r) & ~class_mask
    if not ring.any():
        ring = ~class_mask & (outside > 0)
    if not ring.any():
        return np.zeros((0, 2), dtype=np.float32)
    ys, xs = np.nonzero(ring)
    cy, cx = ndimage.center_of_mass(component)
    chosen = [int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))]
    nearest = (ys - ys[chosen[0]]) ** 2 + (xs - xs[chosen[0]]) ** 2
    while len(chosen) < min(n, len(ys)):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, (ys - ys[chosen[-1]]) ** 2 + (xs - xs[chosen[-1]]) ** 2)
    return np.stack([xs[chosen], ys[chosen]], axis=1).astype(np.float32)


def random_labels(seed: int, shape=(3, 70, 90)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=(0, 4, 4))
    labels = np.digitize(noise, np.quantile(noise, [0.6, 0.85])).astype(np.uint8)
    labels[0, :3, :] = 1  # a component on the border
    labels[1, 30:33, 40:43] = 2  # a tiny one
    labels[2] = 0
    labels[2, 5:60, 5:80] = 1  # one that fills the slice: the negative ring falls back to the whole slice
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windowed_prompt_points_equal_the_whole_slice_ones(seed):
    labels = random_labels(seed)
    for spacing in ((1.0, 1.0), (0.7, 1.3)):
        for s in range(labels.shape[0]):
            for value in (1, 2):
                class_mask = labels[s] == value
                for comp in prompts.components(class_mask):
                    np.testing.assert_array_equal(prompts.positive_points(comp, 3, spacing),
                                                  _old_positive_points(comp, 3, spacing))
                    np.testing.assert_array_equal(prompts.negative_points(comp, class_mask, 3),
                                                  _old_negative_points(comp, class_mask, 3))


@pytest.mark.parametrize("strategy", sorted(prompts.prompt_strategies))
def test_prompts_for_slices_are_those_of_the_whole_slice_code(strategy, monkeypatch):
    labels = random_labels(5)
    probs = np.stack([ndimage.gaussian_filter((labels == v).astype(np.float32), sigma=(0, 2, 2)) for v in (1, 2)],
                     axis=1)
    kw = dict(prob_slices=probs, spacing=(0.8, 1.1), positive_points=2, negative_points=2, margin=1.0, margin_unit="mm")
    new = prompts_for_slices(labels, [1, 2], strategy, **kw)
    # the old code: whole-slice component masks, and helpers that never crop
    monkeypatch.setattr(prompts, "_positive_points",
                        lambda crop, window, n, spacing: _old_positive_points(
                            prompts._full(crop, window, labels.shape[1:]), n, spacing))
    monkeypatch.setattr(prompts, "_negative_points",
                        lambda crop, window, class_mask, n: _old_negative_points(
                            prompts._full(crop, window, class_mask.shape), class_mask, n))
    monkeypatch.setattr(prompts.Component, "mask_prompt",
                        lambda c, box: prompts.mask_logits(c.prob, box, c.options.mask_logit))
    old = prompts_for_slices(labels, [1, 2], strategy, **kw)
    assert len(new) == len(old) > 5
    for a, b in zip(new, old):
        assert a.label == b.label and a.prompt.slice_index == b.prompt.slice_index
        for field in ("box", "points", "point_labels", "mask"):
            x, y = getattr(a.prompt, field), getattr(b.prompt, field)
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
        if a.prompt.box is not None:
            comp = prompts.components(labels[a.prompt.slice_index] == a.label)
            margin = prompts.PromptOptions(margin=1.0, margin_unit="mm")
            boxes = [bounding_box(c, margin.margin_px((0.8, 1.1), (np.ptp(np.nonzero(c)[0]) + 1,
                                                                   np.ptp(np.nonzero(c)[1]) + 1))) for c in comp]
            assert any(np.array_equal(a.prompt.box, b_) for b_ in boxes)
