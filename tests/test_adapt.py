"""SAM adaptation (autosam.adapt, ``autosam finetune``) with the real LiteMedSAM weights on the bundled sample."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from autosam.adapt import PromptNoise, add_lora, adapter_state, load_adapter, prepare_model, read_config
from autosam.adapt.data import select_cases
from autosam.adapt.lora import LoRALinear
from autosam.adapt.noise import noisy_box, noisy_points
from autosam.adapt.train import evaluate, finetune, load_training_set
from autosam.cli import main
from autosam.errors import AutosamError
from autosam import io
from autosam.prompts import bounding_box
from autosam.sam import SamPredictor, build_sam
from autosam.sam import transforms as T
from autosam.sam.cache import EmbeddingCache
from autosam.sample import sample_dataset
from autosam.splits import split_by_subject, subject_of
from conftest import ADAPTER_TRAIN

HC18 = sample_dataset("hc18")
TRAIN = ADAPTER_TRAIN
NO_NOISE = PromptNoise(jitter=0.0, margin=0.0)


@pytest.fixture
def cache_dir(adapter_cache_dir):
    return adapter_cache_dir


def _loss(model, cache_dir, noise=NO_NOISE) -> float:
    info = io.load_dataset_json(HC18)
    data = load_training_set(HC18, info, TRAIN, None, 0, "test", EmbeddingCache(cache_dir), model)
    return evaluate(model, data, noise, "dice_bce", torch.device("cpu"))["loss"]


# --- pure pieces (fast) -------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_keeps_subjects_together():
    cases = ["010_HC", "010_2HC", "032_HC", "032_2HC", "045_HC", "051_HC", "053_HC", "055_HC", "063_HC", "063_2HC"]
    a = split_by_subject(cases, 0.3, seed=3, subject_pattern=r"^[^_]+")
    assert a == split_by_subject(list(reversed(cases)), 0.3, seed=3, subject_pattern=r"^[^_]+")
    assert sorted(a["train"] + a["val"]) == sorted(cases) and a["val"]
    train_subjects = {subject_of(c, r"^[^_]+") for c in a["train"]}
    assert not train_subjects & {subject_of(c, r"^[^_]+") for c in a["val"]}
    assert split_by_subject(cases, 0.3, seed=4, subject_pattern=r"^[^_]+") != a  # the seed matters
    # the pattern with a group finds the same subjects, so the same split
    assert {k: v for k, v in split_by_subject(cases, 0.3, 3, r"^([^_]+)_").items() if k != "subject_pattern"} == \
        {k: v for k, v in a.items() if k != "subject_pattern"}
    assert select_cases(cases, exclude=["063", "045_HC"], subject_pattern=r"^[^_]+") == \
        sorted(c for c in cases if not c.startswith(("063", "045")))


def test_adapter_config_written_with_group_pattern_still_loads(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base": "litemedsam", "method": "decoder", "group_pattern": "^[^_]+", "some_future_key": 1}))
    assert read_config(tmp_path).subject_pattern == "^[^_]+"


def test_finetune_cli_speaks_the_common_vocabulary(monkeypatch, capsys):
    """-d is the dataset folder; --subject-pattern, --exclude, --margin 0.2box."""
    seen = []

    def fake_finetune(dataset, output, **kw):
        seen.append((dataset, kw))
        config = SimpleNamespace(method="decoder", base="litemedsam", epoch=1, epochs=1)
        return SimpleNamespace(config=config)

    monkeypatch.setattr("autosam.adapt.train.finetune", fake_finetune)
    argv = ["finetune", "-d", str(HC18), "-o", "unused", "--subject-pattern", "^[^_]+", "--exclude", "801,719",
            "--margin", "0.2box"]
    assert main(argv) == 0
    assert len(seen) == 1
    for dataset, kw in seen:
        assert dataset == HC18 and kw["subject_pattern"] == "^[^_]+" and kw["exclude"] == ["801", "719"]
        assert kw["prompt_noise"].margin == 0.2
    assert main(["finetune", "-d", str(HC18), "-o", "unused", "--margin", "2mm"]) == 2
    assert "0.2box" not in capsys.readouterr().err
    assert main(["finetune", "-d", str(HC18 / "dataset.json"), "-o", "unused"]) == 2
    with pytest.raises(SystemExit) as refused:  # a margin needs its unit, at parse time
        main(["finetune", "-d", str(HC18), "-o", "unused", "--margin", "0.2"])
    assert refused.value.code == 2 and "give a number with its unit" in capsys.readouterr().err


def test_noisy_prompts_stay_valid_and_vanish_without_noise():
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 30:50] = True
    rng = np.random.default_rng(0)
    assert np.array_equal(noisy_box(mask, NO_NOISE, rng), bounding_box(mask))
    strong = PromptNoise(jitter=0.5, margin=0.5)
    for _ in range(200):
        x0, y0, x1, y1 = noisy_box(mask, strong, rng)
        assert 0 <= x0 < x1 <= 59 and 0 <= y0 < y1 <= 39
    points, labels = noisy_points(mask, PromptNoise(max_points=3, negative=1.0), rng)
    pos = points[labels == 1].astype(int)
    assert 1 <= len(pos) <= 3 and mask[pos[:, 1], pos[:, 0]].all()
    with pytest.raises(AutosamError):
        PromptNoise(types=("scribble",))


# --- LoRA ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_adds_rank_times_in_plus_out_per_qkv_and_leaves_base_untouched():
    model = build_sam("litemedsam")
    qkv = [m for name, m in model.image_encoder.named_modules() if name.endswith(".qkv")]
    assert qkv and all(isinstance(m, nn.Linear) for m in qkv)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    canvas = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.embed(canvas)
    rank = 3
    added = add_lora(model.image_encoder, rank=rank)
    assert added == sum(rank * (m.in_features + m.out_features) for m in qkv)
    n_lora = sum(p.numel() for k, p in model.named_parameters() if ".lora_" in k)
    assert n_lora == added
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())  # same names, same values
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == len(qkv)
    with torch.no_grad():
        assert torch.equal(model.embed(canvas), before)  # B = 0: a fresh adapter changes nothing


def test_new_modules_and_sam_weights_get_their_own_learning_rates():
    from autosam.adapt.config import AdapterConfig
    from autosam.adapt.lora import is_lora_parameter
    from autosam.adapt.train import parameter_groups

    config = AdapterConfig(base="litemedsam", method="lora", rank=2, lr=5e-4, decoder_lr=1e-4)
    model = prepare_model(build_sam("litemedsam"), config)
    new, own = parameter_groups(model, config)
    assert (new["lr"], own["lr"]) == (5e-4, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(is_lora_parameter(names[id(p)]) for p in new["params"])
    assert all(names[id(p)].startswith("mask_decoder.") for p in own["params"])
    assert len(new["params"]) + len(own["params"]) == sum(p.requires_grad for p in model.parameters())
    single = AdapterConfig(base="litemedsam", method="decoder", lr=3e-4)
    (group,) = parameter_groups(prepare_model(build_sam("litemedsam"), single), single)
    assert group["lr"] == 3e-4


@pytest.mark.slow
def test_lora_training_step_trains_only_adapters_and_reloads_identically(tmp_path):
    folder = tmp_path / "lora"
    base = build_sam("litemedsam").state_dict()
    result = finetune(HC18, folder, method="lora", rank=2, epochs=1, batch_size=1, iterations_per_epoch=1, lr=1e-3,
                      val_fraction=0.0, cases=["719_HC"], device="cpu", log=lambda m: None)
    model = result.model
    saved = torch.load(folder / "adapter.pt", weights_only=True)
    assert saved and all(".lora_" in k or k.startswith("mask_decoder.") for k in saved)
    assert not any(k.startswith("prompt_encoder.") for k in saved)
    assert any(".lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())  # the step moved B off zero
    state = model.state_dict()
    for k, v in base.items():  # encoder and prompt encoder untouched; only the decoder was trained
        if not k.startswith("mask_decoder."):
            assert torch.equal(state[k], v), k
    config = read_config(folder)
    assert (config.method, config.rank, config.base, config.epoch) == ("lora", 2, "litemedsam", 1)
    loaded = build_sam("litemedsam", adapter=str(folder))
    canvas = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.embed(canvas), model.embed(canvas))


# --- decoder / DeSAM training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_decoder_training_lowers_the_loss_and_writes_a_complete_folder(decoder_adapter, cache_dir):
    folder, result = decoder_adapter
    assert {"adapter.pt", "adapter_config.json", "split.json", "train_state.pt"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "split.json").read_text())["train"] == TRAIN
    saved = torch.load(folder / "adapter.pt", weights_only=True)
    assert saved and all(k.startswith("mask_decoder.") for k in saved)  # only what changed
    assert len(result.config.history) == 3
    base_loss = _loss(build_sam("litemedsam"), cache_dir)
    assert _loss(result.model, cache_dir) < base_loss


@pytest.mark.slow
def test_saved_adapter_reloads_bit_identically(decoder_adapter):
    folder, result = decoder_adapter
    loaded = build_sam("litemedsam", adapter=str(folder))
    trained = adapter_state(result.model)
    params = dict(loaded.named_parameters())
    assert trained and all(torch.equal(params[k], v) for k, v in trained.items())
    emb = torch.randn(2, 256, 64, 64, generator=torch.Generator().manual_seed(2))
    boxes = torch.tensor([[20.0, 30.0, 150.0, 140.0], [60.0, 40.0, 220.0, 200.0]])
    with torch.no_grad():
        a, ia = loaded.decode(emb, boxes=boxes)
        b, ib = result.model.eval().decode(emb, boxes=boxes)
    assert torch.equal(a, b) and torch.equal(ia, ib)


@pytest.mark.slow
def test_desam_trains_its_prompt_invariant_module_and_lowers_the_loss(tmp_path, cache_dir):
    noise = PromptNoise(jitter=0.15, margin=0.1)
    result = finetune(HC18, tmp_path / "desam", method="desam", epochs=6, batch_size=2, lr=3e-4, val_fraction=0.0,
                      cases=TRAIN, cache_dir=cache_dir, prompt_noise=noise, device="cpu", log=lambda m: None)
    saved = torch.load(tmp_path / "desam" / "adapter.pt", weights_only=True)
    assert any(k.startswith("mask_decoder.mask_module.") for k in saved)
    assert not any(".transformer." in k for k in saved)  # the prompt path's transformer stays frozen
    fresh = load_adapter(build_sam("litemedsam"), tmp_path / "desam")
    assert _loss(fresh, cache_dir, noise) == pytest.approx(_loss(result.model, cache_dir, noise), abs=1e-6)
    first = result.config.history[0]["train_loss"]
    assert result.config.history[-1]["train_loss"] < first


# --- errors, resume, CLI ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_adapter_for_another_backend_is_refused(decoder_adapter, tmp_path):
    folder, _ = decoder_adapter
    other = tmp_path / "other"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("train_state.pt", "embedding_cache"))
    config = json.loads((other / "adapter_config.json").read_text())
    config["base"] = "medsam_vit_b"
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AutosamError) as err:
        build_sam("litemedsam", adapter=str(other))
    assert str(other) in str(err.value) and "medsam_vit_b" in str(err.value) and "litemedsam" in str(err.value)
    with pytest.raises(AutosamError, match="not an adapter folder"):
        build_sam("litemedsam", adapter=str(tmp_path))
    torch.save({"mask_decoder.bogus": torch.zeros(1)}, other / "adapter.pt")
    config["base"] = "litemedsam"
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AutosamError, match="does not fit"):
        build_sam("litemedsam", adapter=str(other))


@pytest.mark.slow
def test_cli_finetune_resumes_and_refuses_to_overwrite(tmp_path, cache_dir, capsys):
    out = tmp_path / "adapter"
    args = ["finetune", "-d", str(HC18), "-o", str(out), "--method", "desam", "--epochs", "1", "--iterations", "1",
            "--batch-size", "1", "--exclude", "801", "--subject-pattern", "^[^_]+", "--val-fraction", "0.5",
            "--cache-dir", str(cache_dir), "--device", "cpu"]
    assert main(args) == 0
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == TRAIN and len(split["val"]) == 1
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    resumed = args[:]
    resumed[resumed.index("--epochs") + 1] = "2"
    assert main(resumed + ["--resume"]) == 0
    config = read_config(out)
    assert config.epoch == 2 and [h["epoch"] for h in config.history] == [1, 2]
    assert json.loads((out / "split.json").read_text()) == split


def test_training_embeddings_come_from_the_cache(tmp_path, litemedsam):
    info = io.load_dataset_json(HC18)
    files = io.list_cases(HC18 / "imagesTr", info.file_ending, info.num_channels)
    image = T.normalize_case(io.read_case("801_HC", files["801_HC"]).image, info.channel_names)[:, 0]
    cache = EmbeddingCache(tmp_path)
    data = load_training_set(HC18, info, ["801_HC"], None, 0, "test", cache, litemedsam)
    predictor = SamPredictor(litemedsam, device="cpu")  # what refine encodes with: the CPU runtime where installed
    predictor.set_slices([image])
    direct = predictor.embeddings
    assert len(data.embeddings) == 1 and torch.equal(data.embeddings[0], direct[0])
    with torch.no_grad():  # the runtime's embedding is torch's
        torch.testing.assert_close(data.embeddings[0], litemedsam.embed(T.to_canvas([image], 256))[0],
                                   atol=1e-3, rtol=1e-3)
    assert data.slices[0].image is None  # dropped once embedded
    again = EmbeddingCache(tmp_path)  # a later run: read from disk, nothing encoded
    data = load_training_set(HC18, info, ["801_HC"], None, 0, "test", again, litemedsam)
    assert again.stats.encoded == 0 and torch.equal(data.embeddings[0], direct[0])


@pytest.mark.slow
def test_adapter_reaches_segment_and_refine(decoder_adapter, tmp_path, capsys):
    """``--adapter`` in the verbs that run SAM: the adapted model answers (other probabilities than the base
    model's), the run records it, and ``refine`` of the prompter's map equals ``segment`` with the same adapter."""
    folder, _ = decoder_adapter
    images = tmp_path / "imagesTs"
    images.mkdir()
    shutil.copy(HC18 / "imagesTr" / "801_HC_0000.png", images)  # not one of the adapter's training images
    common = ["-i", str(images), "--prompter", "hc18", "--save-probabilities", "--device", "cpu", "--prompt", "box",
              "--fusion", "replace"]
    adapted = ["--adapter", str(folder)]
    assert main(["segment", *common, "-o", str(tmp_path / "base")]) == 0
    assert main(["segment", *common, "-o", str(tmp_path / "adapted"), *adapted]) == 0
    assert main(["segment", *common, "-o", str(tmp_path / "coarse"), "--no-sam"]) == 0
    assert main(["refine", "-i", str(images), "-c", str(tmp_path / "coarse"), "-o", str(tmp_path / "refined"),
                 "--save-probabilities", "--device", "cpu", "--prompt", "box", "--fusion", "replace", *adapted]) == 0

    def probabilities(name: str) -> np.ndarray:
        with np.load(tmp_path / name / "801_HC.npz") as data:
            return data["probabilities"]

    assert np.abs(probabilities("adapted") - probabilities("base")).max() > 1e-3
    np.testing.assert_allclose(probabilities("refined"), probabilities("adapted"), atol=1e-4)
    for name in ("adapted", "refined"):
        assert json.loads((tmp_path / name / "autosam_run.json").read_text())["adapter"] == str(folder)
    assert json.loads((tmp_path / "base" / "autosam_run.json").read_text())["adapter"] is None

    # an adapter for another backend: one line, exit 2, no output folder
    other = tmp_path / "vit_b_adapter"
    shutil.copytree(folder, other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base": "sam_vit_b"}))
    capsys.readouterr()
    assert main(["segment", *common, "-o", str(tmp_path / "refused"), "--adapter", str(other)]) == 2
    err = capsys.readouterr().err
    assert "sam_vit_b" in err and "litemedsam" in err and "Traceback" not in err
