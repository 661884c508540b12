"""The embedding cache (autosam.sam.cache): real LiteMedSAM embeddings, reuse across predictors and processes, and
repair of a folder left damaged or out of step (plumbing: the tiny backend of conftest.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autosam import io, slicing
from autosam.sam import SamPredictor
from autosam.sam import transforms as T
from autosam.sam.cache import INDEX, CachingPredictor, EmbeddingCache, model_key
from autosam.sample import sample_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slices() -> list[np.ndarray]:
    """Two normalised ``(1, h, w)`` slices of a bundled hippocampus case."""
    root = sample_dataset("hippocampus")
    info = io.load_dataset_json(root)
    case = io.read_case("hippocampus_148", io.list_cases(root / "imagesTr", info.file_ending, 1)["hippocampus_148"])
    image = slicing.to_slices(T.normalize_case(case.image, info.channel_names), 0)
    middle = len(image) // 2
    return [np.ascontiguousarray(image[i]) for i in (middle, middle + 1)]


@pytest.fixture(scope="module")
def uncached(litemedsam, slices) -> torch.Tensor:
    plain = SamPredictor(litemedsam, device="cpu")
    plain.set_slices(slices)
    return plain.embeddings.clone()


@pytest.fixture(scope="module")
def tiny_uncached(tiny_sam, slices) -> torch.Tensor:
    plain = SamPredictor(tiny_sam, device="cpu")
    plain.set_slices(slices)
    return plain.embeddings.clone()


def filled(folder: Path, litemedsam, slices) -> CachingPredictor:
    predictor = CachingPredictor(litemedsam, device="cpu", cache=EmbeddingCache(folder))
    predictor.set_slices(slices)
    return predictor


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("emb-*.npy"))


def notices(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if "embedding cache" in line]


@pytest.mark.slow
def test_embeddings_equal_the_uncached_ones_and_are_encoded_once(tmp_path, litemedsam, slices, uncached):
    memory = CachingPredictor(litemedsam, device="cpu")
    memory.set_slices(slices)
    assert torch.equal(memory.embeddings, uncached)
    disk = filled(tmp_path / "cache", litemedsam, slices)
    assert torch.equal(disk.embeddings, uncached)  # float32 on disk: bit-identical
    assert disk.cache.stats.encoded == 2 and len(shards(tmp_path / "cache")) == 1
    disk.set_slices([slices[1], slices[0], slices[1]])  # reordered and repeated: nothing new to encode
    assert disk.cache.stats.encoded == 2 and disk.cache.stats.requested == 5
    assert torch.equal(disk.embeddings, uncached[[1, 0, 1]])
    assert disk.sizes == [s.shape[-2:] for s in (slices[1], slices[0], slices[1])]


def test_fetch_encodes_as_the_predictor_and_builds_its_encoder_once(litemedsam, slices, uncached):
    """Training callers (``finetune``, ``train-prompter --mode embedding``) fetch without an encoder: the slices are
    embedded as ``refine`` embeds them (the CPU runtime where installed), under the predictor's cache key, so
    training and the verbs share them; the encoder is built once per model, not per call."""
    cache = EmbeddingCache()
    first = cache.fetch(litemedsam, slices[:1])
    encoder = cache._encoder[1]
    second = cache.fetch(litemedsam, slices)
    assert cache._encoder[1] is encoder and cache.stats.encoded == 2
    assert torch.equal(torch.stack([first[0], second[1]]), uncached)  # bit-identical to SamPredictor's
    shared = CachingPredictor(litemedsam, device="cpu", cache=cache)
    shared.set_slices(slices)  # a verb's predictor finds them under its own key
    assert cache.stats.encoded == 2
    with torch.no_grad():  # and they are torch's embeddings, within the runtime's tolerance
        torch.testing.assert_close(second[0], litemedsam.embed(T.to_canvas(slices[:1], 256))[0], atol=1e-3, rtol=1e-3)
    assert not second[0].is_inference()  # usable in training


@pytest.mark.slow
def test_a_second_predictor_and_a_second_process_encode_nothing(tmp_path, litemedsam, slices, uncached):
    folder = tmp_path / "cache"
    filled(folder, litemedsam, slices)
    again = filled(folder, litemedsam, slices)  # a new cache object: reads the folder
    assert again.cache.stats.encoded == 0 and torch.equal(again.embeddings, uncached)
    np.save(tmp_path / "slices.npy", np.stack(slices))
    script = ("import sys, numpy as np\n"
              "from autosam.sam import build_sam\n"
              "from autosam.sam.cache import CachingPredictor, EmbeddingCache\n"
              "p = CachingPredictor(build_sam('litemedsam'), device='cpu', cache=EmbeddingCache(sys.argv[2]))\n"
              "p.set_slices(list(np.load(sys.argv[1])))\n"
              "np.save(sys.argv[3], p.embeddings.numpy())\n"
              "print('encoded', p.cache.stats.encoded)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "slices.npy"), str(folder),
                           str(tmp_path / "out.npy")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "encoded 0" in done.stdout and not notices(done.stderr)
    assert np.array_equal(np.load(tmp_path / "out.npy"), uncached.numpy())


@pytest.mark.parametrize("damage", ["truncated shard", "truncated index", "shard overwritten after loading"])
def test_a_damaged_cache_file_is_dropped_with_one_notice(damage, tmp_path, tiny_sam, slices, tiny_uncached, capsys):
    folder = tmp_path / "cache"
    filled(folder, tiny_sam, slices)
    capsys.readouterr()
    (shard,) = shards(folder)
    if damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "truncated index":
        (folder / INDEX).write_text((folder / INDEX).read_text()[:40])
    cache = EmbeddingCache(folder)
    if damage == "shard overwritten after loading":  # same size, garbage header: found when first read
        shard.write_bytes(b"\0" * shard.stat().st_size)
    predictor = CachingPredictor(tiny_sam, device="cpu", cache=cache)
    predictor.set_slices(slices)
    assert len(notices(capsys.readouterr().err)) == 1
    assert cache.stats.encoded == 2 and torch.equal(predictor.embeddings, tiny_uncached)
    assert filled(folder, tiny_sam, slices).cache.stats.encoded == 0  # rebuilt: the next run finds everything
    assert not notices(capsys.readouterr().err)


def test_a_missing_or_stale_index_is_rebuilt(tmp_path, tiny_sam, slices, tiny_uncached, capsys):
    folder = tmp_path / "cache"
    filled(folder, tiny_sam, slices[:1])
    old_index = (folder / INDEX).read_bytes()
    filled(folder, tiny_sam, slices[1:])
    assert len(shards(folder)) == 2
    capsys.readouterr()

    (folder / INDEX).write_bytes(old_index)  # out of step: the index of before the second shard
    predictor = filled(folder, tiny_sam, slices)
    assert len(notices(capsys.readouterr().err)) == 1
    assert predictor.cache.stats.encoded == 1 and torch.equal(predictor.embeddings, tiny_uncached)

    for shard in shards(folder)[:1]:  # the index names a shard that is gone
        shard.unlink()
    predictor = filled(folder, tiny_sam, slices)
    assert len(notices(capsys.readouterr().err)) == 1
    assert predictor.cache.stats.encoded == 1 and torch.equal(predictor.embeddings, tiny_uncached)

    (folder / INDEX).unlink()  # no index at all: the shards cannot be trusted
    predictor = filled(folder, tiny_sam, slices)
    assert len(notices(capsys.readouterr().err)) == 1
    assert predictor.cache.stats.encoded == 2 and torch.equal(predictor.embeddings, tiny_uncached)
    assert len(shards(folder)) == 1 and json.loads((folder / INDEX).read_text())["entries"]


def test_a_kill_while_writing_leaves_the_old_state(tmp_path, monkeypatch, capsys):
    """Killed after the shard is in place but before the index is: the cache reads as before the write."""
    folder = tmp_path / "cache"
    cache = EmbeddingCache(folder)
    cache.put(["a", "b"], torch.arange(8.0).reshape(2, 4))
    replace = os.replace

    def killed(src, dst):
        if Path(dst).name == INDEX:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr("autosam.sam.cache.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put(["c"], torch.ones(1, 4))
    monkeypatch.undo()
    fresh = EmbeddingCache(folder)
    assert torch.equal(fresh.get("a"), torch.arange(4.0)) and fresh.get("c") is None
    assert len(fresh) == 2 and len(shards(folder)) == 1  # the unindexed shard is gone
    assert not list(folder.glob(".tmp-*"))
    assert len(notices(capsys.readouterr().err)) == 1


def test_a_failed_write_keeps_the_embeddings_in_memory(tmp_path, monkeypatch, capsys):
    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("autosam.sam.cache.os.replace", full)
    cache = EmbeddingCache(tmp_path / "cache")
    cache.put(["a"], torch.ones(1, 4))
    assert torch.equal(cache.get("a"), torch.ones(4))
    (line,) = notices(capsys.readouterr().err)
    assert "No space left" in line and "memory" in line
    monkeypatch.undo()
    assert len(EmbeddingCache(tmp_path / "cache")) == 0 and not list((tmp_path / "cache").glob("*.npy"))


def test_the_key_follows_the_weights_file_and_precision(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"1")
    model = SimpleNamespace(name="litemedsam", image_size=256, checkpoint=str(weights), adapter=None)
    key = model_key(model)
    assert model_key(model) == key and model_key(model, "bfloat16") != key
    weights.write_bytes(b"12")
    assert model_key(model) != key
