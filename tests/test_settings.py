"""The settings model: one table of option bounds, one place that builds a predictor."""
from __future__ import annotations

import argparse
import math

import pytest

from autosam.errors import AutosamError
from autosam.prompts import Margin
from autosam.settings import BOUNDS, Bound, Runtime, SamSpec, check_option, option_type


@pytest.mark.parametrize("bound, good, bad", [
    (Bound(int, 1), ["1", "16"], ["0", "-1", "1.5", "nan", "x"]),
    (Bound(float, 0.0, 1.0), ["0", "0.5", "1"], ["-0.1", "1.01", "nan", "inf", "5"]),
    (Bound(float, 0.0, open_low=True), ["1e-4", "3"], ["0", "-1", "nan", "inf"]),
    (Bound(float), ["-3", "8"], ["nan", "inf", "-inf", "1e999"]),
])
def test_a_bound_takes_its_values_and_refuses_the_rest(bound, good, bad):
    for text in good:
        assert bound.accepts(bound.parse(text))
    for text in bad:
        with pytest.raises(ValueError, match="expected"):
            bound.parse(text)


def test_an_option_out_of_range_is_one_parse_error_naming_it():
    parser = argparse.ArgumentParser(prog="autosam x", exit_on_error=False)
    parser.add_argument("--weight", type=option_type("weight"))
    parser.add_argument("--batch-size", type=option_type("batch_size"))
    assert parser.parse_args(["--weight", "0.3", "--batch-size", "4"]).batch_size == 4
    for argv, name in ((["--weight", "5"], "--weight"), (["--weight", "nan"], "--weight"),
                       (["--batch-size", "0"], "--batch-size")):
        with pytest.raises(argparse.ArgumentError) as e:
            parser.parse_args(argv)
        assert name in str(e.value) and "expected" in str(e.value) and "\n" not in str(e.value)


def test_records_and_runtimes_check_through_the_same_table():
    assert check_option("lr", 1e-4, "adapter.json") == 1e-4
    with pytest.raises(AutosamError, match="adapter.json: lr = -1"):
        check_option("lr", -1, "adapter.json")
    with pytest.raises(AutosamError, match="batch_size"):
        Runtime(batch_size=0)
    assert all(isinstance(b, Bound) for b in BOUNDS.values()) and not BOUNDS["mask_logit"].accepts(math.inf)


def test_the_spec_builds_a_caching_or_plain_predictor():
    from autosam.sam import SamPredictor
    from autosam.sam.cache import CachingPredictor

    spec = SamSpec()
    model = spec.build()
    plain = spec.predictor(Runtime(device="cpu", engine="torch", batch_size=2), model=model)
    caching = spec.predictor(Runtime(device="cpu", engine="torch"), caching=True, model=model)
    assert type(plain) is SamPredictor and plain.batch_size == 2 and plain.engine == "torch"
    assert isinstance(caching, CachingPredictor) and caching.model is model
    assert spec.to_record() == {"sam": "litemedsam", "checkpoint": None, "adapter": None}
    with pytest.raises(AutosamError, match="unknown SAM backend"):
        SamSpec("nope").build()


def test_every_numeric_option_of_every_verb_has_a_bound():
    """build_parser binds each int/float option to its BOUNDS entry (a missing entry is a KeyError here)."""
    from autosam.cli import _parsers, build_parser
    from autosam.settings import device_type

    checked = devices = 0
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.dest in BOUNDS and action.choices is None and action.type not in (None, str):
                assert action.type.__name__ == action.dest, action.option_strings
                checked += 1
            devices += action.type is device_type
    assert checked > 60 and devices >= 4


def test_the_environment_and_records_check_through_the_same_table(tmp_path):
    import json

    from autosam.settings.model import Settings

    with pytest.raises(AutosamError, match="AUTOSAM_FUSION_OPTIONS: weight = 5: expected a number in"):
        Settings.resolve(None, {"AUTOSAM_FUSION": "average", "AUTOSAM_FUSION_OPTIONS": '{"weight": 5}'})
    with pytest.raises(AutosamError, match="AUTOSAM_MIN_SIZE: min_size = -3"):
        Settings.resolve(None, {"AUTOSAM_MIN_SIZE": "-3"})
    record = tmp_path / "autosam_sam.json"
    record.write_text(json.dumps({"refine": {"mask_logit": float("inf")}}))
    with pytest.raises(AutosamError, match=f"{record}: mask_logit = inf"):
        Settings.from_record(record)
    assert Settings.resolve(None, {"AUTOSAM_MIN_SIZE": "3"}).refine.min_size == 3


def test_each_refine_field_has_one_spelling_on_the_command_line_in_records_and_the_environment():
    """--positive-points sets positive_points, recorded as positive_points, read from AUTOSAM_POSITIVE_POINTS."""
    import dataclasses

    from autosam.commands.common import REFINE_FIELDS
    from autosam.settings.model import environment
    from autosam.refine import RefineConfig

    fields = {f.name for f in dataclasses.fields(RefineConfig)}
    for option, field in REFINE_FIELDS.items():
        assert field in fields and option in (field, f"no_{field}"), (option, field)
    env = {f"AUTOSAM_{name.upper()}": "2" for name in ("positive_points", "negative_points", "min_size")}
    assert environment(env) == {"positive_points": 2, "negative_points": 2, "min_size": 2}


def test_a_margin_without_a_unit_is_in_mm_everywhere():
    """One default unit for box margins: the prompts, the oracle, refine's config (which owns a Margin; a record's
    margin without its unit) and the oracle verb agree."""
    import dataclasses
    import inspect

    from autosam.cli import _parsers, build_parser
    from autosam.oracle import oracle_prompts, segment_case_from_labels
    from autosam.pipelines.oracle import OracleJob, oracle_folder
    from autosam.prompts import PromptOptions, prompts_for_slices
    from autosam.refine import RefineConfig

    defaults = [inspect.signature(f).parameters["margin_unit"].default
                for f in (prompts_for_slices, oracle_prompts, segment_case_from_labels, oracle_folder)]
    defaults += [{f.name: f.default for f in dataclasses.fields(c)}["margin_unit"] for c in (PromptOptions, OracleJob)]
    defaults += [RefineConfig().margin.unit, Margin().unit, RefineConfig.from_dict({"margin": 2.0}).margin.unit]
    verbs = [a.default.unit for p in _parsers(build_parser()) for a in p._actions
             if a.dest == "margin" and a.default.unit != "box"]  # finetune's noise is a fraction of the box
    assert set(defaults) == {"mm"} and set(verbs) == {"mm"} and len(verbs) >= 4


def test_a_registered_backend_is_built_by_name_and_offered_on_the_command_line(tiny_sam):
    """register_backend (conftest's tiny backend): build_sam, SamSpec and every verb's --sam know it."""
    from autosam.cli import _parsers, build_parser
    from autosam.sam import backends

    assert "tiny" in backends() and SamSpec("tiny").build().name == "tiny"
    choices = [a.choices for p in _parsers(build_parser()) for a in p._actions if a.dest == "sam" and a.choices]
    assert choices and all("tiny" in c and "litemedsam" in c for c in choices)


def test_settings_merge_in_one_order_defaults_record_environment_command_line(tmp_path):
    """defaults < record < environment < the options the user gave (an option left at its default does not count)."""
    import json

    from autosam.cli import build_parser, given_options
    from autosam.settings.model import Settings, environment

    record = tmp_path / "autosam_sam.json"
    record.write_text(json.dumps({"sam": "litemedsam", "use_sam": True,
                                  "refine": {"prompt": "box", "fusion": "union", "min_size": 8, "margin": 1.0}}))
    recorded = Settings.from_record(record)
    assert (recorded.refine.prompt, recorded.refine.min_size, recorded.refine.rebox) == ("box", 8, 0)  # rest: defaults
    env = environment({"AUTOSAM_MIN_SIZE": "5", "AUTOSAM_MARGIN": "2"})
    layered = recorded.merged(env)
    assert (layered.refine.prompt, layered.refine.min_size, layered.refine.margin) == ("box", 5, Margin(2.0, "mm"))
    argv = ["predict", "-m", "m", "-i", "i", "-o", "o", "--margin", "3px", "--min-size", "4", "--batch-size", "2"]
    args = build_parser().parse_args(argv)
    args.given = given_options(argv)
    final = layered.merged(args)
    assert (final.refine.prompt, final.refine.fusion) == ("box", "union")  # not given: the record's
    assert (final.refine.margin, final.refine.min_size) == (Margin(3.0, "px"), 4)  # given, default
    assert final.runtime.batch_size == 2 and final.sam.name == "litemedsam"
    everything = Settings.from_args(args)  # every option of the command line, at its parser default where not given
    assert (everything.refine.prompt, everything.refine.min_size, everything.refine.margin.value) == ("box+mask", 4, 3.0)


def test_settings_round_trip_through_the_record_and_the_environment(tmp_path):
    from autosam.refine import RefineConfig
    from autosam.settings.model import Settings

    settings = Settings(refine=RefineConfig(prompt="box", fusion="gated", fusion_options={"min_iou": 0.7}),
                        tuning={"chosen": "box/gated"})
    path = settings.write(tmp_path, by="test")
    assert Settings.from_record(path) == settings and Settings.from_record(settings.to_record()) == settings
    assert path.name == "autosam_sam.json" and set(settings.to_record()) == {
        "sam", "checkpoint", "adapter", "use_sam", "refine", "tuning", "runtime"}
    off = settings.with_sam(False)  # "no SAM" keeps the options it was recorded with; given options switch SAM on
    assert off.refine is None and off.describe().startswith("no SAM") and off.to_record()["use_sam"] is False
    assert Settings.from_record(off.write(tmp_path / "off")) == off and off.with_sam(True) == settings
    env = {"AUTOSAM_SAM": "litemedsam", "AUTOSAM_PROMPT": "box", "AUTOSAM_FUSION": "gated",
           "AUTOSAM_FUSION_OPTIONS": '{"min_iou": 0.7}', "AUTOSAM_DEVICE": "cpu", "AUTOSAM_BATCH_SIZE": "4"}
    from_env = Settings.from_env(env)
    assert from_env.refine == settings.refine and (from_env.runtime.device, from_env.runtime.batch_size) == ("cpu", 4)
    with pytest.raises(AutosamError, match="AUTOSAM_BATCH_SIZE='0'"):
        Settings.from_env({"AUTOSAM_BATCH_SIZE": "0"})
    with pytest.raises(AutosamError, match="unknown SAM setting 'promt'"):
        Settings.from_record({"promt": "box"})
