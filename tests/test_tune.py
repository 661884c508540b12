"""Defaults tuned on validation cases: "no SAM" where SAM hurts, a SAM fusion where it helps, recorded and used."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from autosam import io
from autosam.cli import main
from autosam.prompter.infer import WEIGHTS_ROOT
from autosam.sample import sample_dataset
from autosam.sam.cache import CachingPredictor
from autosam.tune import NO_SAM, TuneCase, candidates, tune

HC18 = sample_dataset("hc18")
INFO = io.load_dataset_json(HC18)
FILES = io.list_cases(HC18 / "imagesTr", INFO.file_ending, INFO.num_channels)


def _items(make_coarse) -> list[TuneCase]:
    items = []
    for case_id in sorted(FILES):
        case = io.read_case(case_id, FILES[case_id])
        ref = io.read_label(HC18 / "labelsTr" / f"{case_id}.png")[0]
        items.append(TuneCase(case, ref, make_coarse(ref).astype(np.int16)))
    return items


@pytest.fixture(scope="module")
def caching(litemedsam):
    return CachingPredictor(litemedsam, device="cpu", engine="torch")


def test_tuning_steps_aside_where_sam_cannot_help(caching):
    """A coarse map equal to the reference: no SAM candidate can beat it, so "no SAM" is chosen."""
    result = tune(caching, _items(lambda ref: ref), INFO, candidates(prompts=("box",)))
    assert result.best.name == NO_SAM and not result.best.use_sam
    assert result.mean(NO_SAM) == pytest.approx(1.0)
    assert result.to_dict()["validation_cases"] == sorted(FILES)


def test_tuning_chooses_sam_where_it_helps(caching):
    """A coarse map that overshoots the head by 20 px: SAM, prompted from it, recovers the outline."""
    def bloated(ref):
        return ndimage.binary_dilation(ref > 0, iterations=20)

    result = tune(caching, _items(bloated), INFO, candidates(prompts=("box",)))
    assert result.best.use_sam, result.ranking()[:3]
    assert result.mean(result.best.name) >= result.mean(NO_SAM) + 0.02, result.ranking()[:3]
    assert result.mean(NO_SAM) < 0.93


def test_a_prompt_asked_again_is_decoded_once_with_the_same_answer(caching):
    """Tuning asks the same boxes under several settings; within ``remembering_decodes`` each distinct prompt on
    a slice pays the decoder once, and the answer is the decoder's own."""
    from autosam.sam import SamPrompt

    case_id = sorted(FILES)[0]
    image = io.read_case(case_id, FILES[case_id]).image[:, 0]  # (C, Y, X) of the one slice
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    ref = io.read_label(HC18 / "labelsTr" / f"{case_id}.png")[0][0]
    ys, xs = np.nonzero(ref)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    prompts = [SamPrompt(0, box=box), SamPrompt(0, box=box + np.float32([-15, -15, 15, 15])), SamPrompt(0, box=box)]
    caching.set_slices([image])
    plain = caching.predict(prompts)
    with caching.remembering_decodes():
        caching.set_slices([image])
        first = caching.predict(prompts)
        again = caching.predict(prompts[:2])
    assert first.logits[0] is first.logits[2] and again.logits[0] is first.logits[0]  # decoded once
    assert again.logits[1] is first.logits[1]
    for a, b in zip(first.logits, plain.logits):
        assert np.allclose(a, b, atol=1e-4)
    assert np.allclose(first.iou, plain.iou, atol=1e-5)
    assert caching.predict(prompts[:1]).logits[0] is not first.logits[0]  # forgotten on leaving the block


def _prompter_copy(tmp_path, use_sam: bool):
    folder = tmp_path / "hc18_prompter"
    shutil.copytree(WEIGHTS_ROOT / "hc18", folder)
    (folder / "autosam_sam.json").unlink(missing_ok=True)
    record = {"sam": "litemedsam", "use_sam": use_sam, "refine": {"prompt": "box", "fusion": "replace"},
              "tuning": {"chosen": "test", "validation_cases": ["a", "b"]}}
    (folder / "autosam_sam.json").write_text(json.dumps(record))
    return folder


def test_segment_uses_the_recorded_default_and_the_command_line_wins(tmp_path, capsys):
    images = tmp_path / "imagesTs"
    images.mkdir()
    shutil.copy(HC18 / "imagesTr" / "800_HC_0000.png", images)
    prompter = _prompter_copy(tmp_path, use_sam=False)
    base = ["segment", "-i", str(images), "--prompter", str(prompter), "--device", "cpu"]
    assert main(base + ["-o", str(tmp_path / "tuned")]) == 0
    assert main(base + ["-o", str(tmp_path / "nosam"), "--no-sam"]) == 0
    err = capsys.readouterr().err
    assert "configuration: no SAM" in err and "tuned:" in err
    tuned, nosam = (io.read_label(tmp_path / d / "800_HC.png")[0] for d in ("tuned", "nosam"))
    assert np.array_equal(tuned, nosam)  # the record said "no SAM": the prompter's own map
    run = json.loads((tmp_path / "tuned" / "autosam_run.json").read_text())
    assert run["configuration_source"].startswith("tuned: ") and run["use_sam"] is False

    assert main(base + ["-o", str(tmp_path / "forced"), "--fusion", "union"]) == 0  # given options turn SAM on
    run = json.loads((tmp_path / "forced" / "autosam_run.json").read_text())
    assert run["refine"]["fusion"] == "union" and run["refine"]["prompt"] == "box"  # the rest from the record
    assert "command line: --fusion" in run["configuration_source"]
    forced = io.read_label(tmp_path / "forced" / "800_HC.png")[0]
    assert not np.array_equal(forced, nosam)


def test_tune_verb_records_the_winner(tmp_path, capsys):
    prompter = _prompter_copy(tmp_path, use_sam=True)
    (prompter / "autosam_sam.json").unlink()
    code = main(["tune", "--prompter", str(prompter), "-d", str(HC18), "--cases", "800_HC", "801_HC",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "chosen: " in out
    record = json.loads((prompter / "autosam_sam.json").read_text())
    assert record["tuning"]["validation_cases"] == ["800_HC", "801_HC"]
    assert record["tuning"]["chosen_mean_dice"] >= record["tuning"]["no_sam_mean_dice"]
    assert isinstance(record["use_sam"], bool) and record["tuning"]["candidates"][NO_SAM] > 0.5


def test_the_sign_test_refuses_a_mean_lifted_by_a_few_failed_maps():
    """Numbers, no SAM: a candidate that rescues 3 failed maps but loses a little on 7 good ones gains on the mean
    and is chosen by the mean rule; with the sign test "no SAM" stays. One better on 9 of 10 passes both."""
    from autosam.tune import Candidate, RefineConfig, TuneResult, choose, sign_test_p, wins_losses

    base = [0.5, 0.5, 0.5] + [0.95] * 7
    lifted = [0.8, 0.8, 0.8] + [0.93] * 7  # mean +7.6 points, better on 3, worse on 7
    steady = [0.52, 0.52, 0.52] + [0.96] * 6 + [0.95]  # mean +1.2, better on 9, one tie
    sam = {"lifted": Candidate(RefineConfig(fusion="replace")), "steady": Candidate(RefineConfig(fusion="union"))}
    names = {NO_SAM: Candidate(None), sam["lifted"].name: sam["lifted"], sam["steady"].name: sam["steady"]}
    assert wins_losses(lifted, base) == (3, 7) and wins_losses(steady, base) == (9, 0)
    assert sign_test_p(9, 0) == pytest.approx(0.5 ** 9) and sign_test_p(0, 0) == 1.0

    only_lifted = {NO_SAM: base, sam["lifted"].name: lifted}
    assert choose(only_lifted, names).use_sam
    assert not choose(only_lifted, names, sign_test=0.05).use_sam
    both = {NO_SAM: base, sam["lifted"].name: lifted, sam["steady"].name: steady}
    assert choose(both, names) is sam["lifted"]  # the best mean
    assert choose(both, names, sign_test=0.05) is sam["steady"]  # the best mean that also passes

    result = TuneResult(cases=[str(i) for i in range(10)], scores=only_lifted, candidates=names,
                        best=choose(only_lifted, names, sign_test=0.05), sign_test=0.05)
    record = result.to_dict()
    assert record["chosen"] == NO_SAM and record["sign_test"] == 0.05 and record["chosen_better_worse"] == [0, 0]
    assert record["without_sign_test"] == sam["lifted"].name  # what the mean rule alone would have chosen
    assert record["best_sam"]["better"] == 3 and record["best_sam"]["worse"] == 7
    assert record["best_sam"]["sign_test_p"] > 0.9


def test_a_study_refuses_a_kept_tuned_default_chosen_by_another_rule(tmp_path):
    """A study folder whose prompter's tuned record was chosen without the sign test is refused, in one line and
    before anything runs, when the study now asks for one (and the record is left as it was)."""
    from autosam.errors import AutosamError
    from autosam.study import Study, StudyOptions

    record = tmp_path / "models" / "n2_s0" / "prompter" / "autosam_sam.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"use_sam": False, "tuning": {"chosen": NO_SAM, "sign_test": None}}))
    before = record.read_bytes()
    plan = {"test": [], "runs": [{"name": "n2_s0", "cases": []}]}
    same = Study(HC18, tmp_path, StudyOptions(methods=["tuned"], adapt=None), plan)
    same.check_kept(plan["runs"][0])  # the same rule: kept
    other = Study(HC18, tmp_path, StudyOptions(methods=["tuned"], adapt=None, sign_test=0.05), plan)
    with pytest.raises(AutosamError, match="chosen with no sign test, not --sign-test 0.05") as e:
        other.check_kept(plan["runs"][0])
    assert "\n" not in str(e.value) and str(record) in str(e.value)
    assert record.read_bytes() == before
