"""`ZPDConfig`: defaults, validation, conversion from `TrainingArguments` and the command line."""

import dataclasses
import math
import re

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_zpd.config import ZPDArguments, ZPDConfig

ZPD_DEFAULTS = {
    "band_lower": 1.1,
    "band_upper": 1.3,
    "difficulty_mode": "composite",
    "competence_weights": [0.4, 0.35, 0.25],
    "pacing": "fixed",
    "composition": "zone_and_fill",
    "zone_repeats": 2,
    "fill": "nearest",
    "fill_temperature": 0.25,
    "class_balance": True,
    "out_of_reach": "learnability_guard",
    "exclude_label_errors": True,
    "out_of_reach_in_fill": "last",
    "max_out_of_reach_fraction": 0.5,
    "anneal_fraction": 0.125,
    "min_zone_fraction": 0.05,
    "replay_fraction": 0.0,
    "prune_fraction": 0.0,
    "token_selection_fraction": None,
    "epoch_fraction": 1.0,
    "scoring_pool_size": None,
    "rescore_every": 1,
    "score_before_training": False,
    "score_source": "scoring_pass",
    "scoring_batch_size": None,
    "statistics_chunk_size": 128,
    "label_alignment": "auto",
    "fused_cross_entropy": None,
    "running_ppl_decay": 0.9,
    "reference_scores": None,
    "replay_curriculum": None,
}
ZPD_FIELDS = [
    f for f in dataclasses.fields(ZPDConfig) if f.name not in {g.name for g in dataclasses.fields(TrainingArguments)}
]


def test_the_curriculum_fields_are_zpd_arguments_own():
    """ZPDConfig is TrainingArguments plus exactly the fields of ZPDArguments (which ZPDSFTConfig shares)."""
    assert [f.name for f in ZPD_FIELDS] == [f.name for f in dataclasses.fields(ZPDArguments)]
    assert [f.name for f in dataclasses.fields(ZPDConfig)][:3] == [
        f.name for f in dataclasses.fields(TrainingArguments)
    ][:3]


def make_config(tmp_path, **kwargs) -> ZPDConfig:
    return ZPDConfig(output_dir=str(tmp_path), report_to=[], **kwargs)


def test_zpd_fields_are_the_documented_ones():
    assert [f.name for f in ZPD_FIELDS] == list(ZPD_DEFAULTS)


def test_defaults(tmp_path):
    config = make_config(tmp_path)
    for name, expected in ZPD_DEFAULTS.items():
        assert getattr(config, name) == expected, name
    assert config.effective_competence_weights == (0.4, 0.35, 0.25)
    assert isinstance(config, TrainingArguments)


def test_default_weights_are_not_shared_between_configs(tmp_path):
    first, second = make_config(tmp_path), make_config(tmp_path)
    first.competence_weights[0] = 0.9
    assert second.competence_weights == [0.4, 0.35, 0.25]


# (field, value) pairs that must be rejected with a message naming the field.
INVALID = {
    "band_lower_zero": ({"band_lower": 0.0}, "band_lower"),
    "band_lower_negative": ({"band_lower": -1.1}, "band_lower"),
    "band_lower_nan": ({"band_lower": math.nan}, "band_lower"),
    "band_lower_inf": ({"band_lower": math.inf, "band_upper": math.inf}, "band_lower"),
    "band_upper_below_lower": ({"band_lower": 1.3, "band_upper": 1.1}, "band_upper"),
    "band_upper_equals_lower": ({"band_lower": 1.2, "band_upper": 1.2}, "band_upper"),
    "band_upper_nan": ({"band_upper": math.nan}, "band_upper"),
    "difficulty_mode_bogus": ({"difficulty_mode": "bogus"}, "difficulty_mode"),
    "weights_negative": ({"competence_weights": [1.2, -0.1, -0.1]}, "competence_weights"),
    "weights_sum_above_one": ({"competence_weights": [0.5, 0.5, 0.5]}, "competence_weights"),
    "weights_sum_below_one": ({"competence_weights": [0.4, 0.35, 0.2]}, "competence_weights"),
    "weights_two": ({"competence_weights": [0.5, 0.5]}, "competence_weights"),
    "weights_four": ({"competence_weights": [0.25, 0.25, 0.25, 0.25]}, "competence_weights"),
    "weights_nan": ({"competence_weights": [math.nan, 0.5, 0.5]}, "competence_weights"),
    "min_zone_fraction_zero": ({"min_zone_fraction": 0.0}, "min_zone_fraction"),
    "min_zone_fraction_above_one": ({"min_zone_fraction": 1.5}, "min_zone_fraction"),
    "min_zone_fraction_nan": ({"min_zone_fraction": math.nan}, "min_zone_fraction"),
    "epoch_fraction_zero": ({"epoch_fraction": 0.0}, "epoch_fraction"),
    "epoch_fraction_negative": ({"epoch_fraction": -0.5}, "epoch_fraction"),
    "epoch_fraction_above_one": ({"epoch_fraction": 1.1}, "epoch_fraction"),
    "replay_fraction_negative": ({"replay_fraction": -0.1}, "replay_fraction"),
    "replay_fraction_one": ({"replay_fraction": 1.0}, "replay_fraction"),
    "replay_fraction_nan": ({"replay_fraction": math.nan}, "replay_fraction"),
    "scoring_pool_size_zero": ({"scoring_pool_size": 0}, "scoring_pool_size"),
    "scoring_batch_size_zero": ({"scoring_batch_size": 0}, "scoring_batch_size"),
    "rescore_every_zero": ({"rescore_every": 0}, "rescore_every"),
    "statistics_chunk_size_zero": ({"statistics_chunk_size": 0}, "statistics_chunk_size"),
    "running_ppl_decay_one": ({"running_ppl_decay": 1.0}, "running_ppl_decay"),
    "running_ppl_decay_negative": ({"running_ppl_decay": -0.1}, "running_ppl_decay"),
    "running_ppl_decay_nan": ({"running_ppl_decay": math.nan}, "running_ppl_decay"),
    "replay_curriculum_blank": ({"replay_curriculum": "  "}, "replay_curriculum"),
    "composition_bogus": ({"composition": "zone_first"}, "composition"),
    "out_of_reach_bogus": ({"out_of_reach": "loss_did_not_fall"}, "out_of_reach"),
    "pacing_bogus": ({"pacing": "falling"}, "pacing"),
    "max_out_of_reach_fraction_zero": ({"max_out_of_reach_fraction": 0.0}, "max_out_of_reach_fraction"),
    "max_out_of_reach_fraction_one": ({"max_out_of_reach_fraction": 1.0}, "max_out_of_reach_fraction"),
    "difficulty_mode_reducible_typo": ({"difficulty_mode": "reducable"}, "difficulty_mode"),
    "prune_fraction_one": ({"prune_fraction": 1.0}, "prune_fraction"),
    "prune_fraction_negative": ({"prune_fraction": -0.1}, "prune_fraction"),
    "token_selection_fraction_zero": ({"token_selection_fraction": 0.0}, "token_selection_fraction"),
    "token_selection_fraction_above_one": ({"token_selection_fraction": 1.5}, "token_selection_fraction"),
    "zone_repeats_zero": ({"zone_repeats": 0}, "zone_repeats"),
    "zone_repeats_float": ({"zone_repeats": 1.5}, "zone_repeats"),
    "fill_bogus": ({"fill": "farthest"}, "fill"),
    "fill_temperature_zero": ({"fill_temperature": 0.0}, "fill_temperature"),
    "fill_temperature_nan": ({"fill_temperature": math.nan}, "fill_temperature"),
    "anneal_fraction_one": ({"anneal_fraction": 1.0}, "anneal_fraction"),
    "anneal_fraction_negative": ({"anneal_fraction": -0.1}, "anneal_fraction"),
    "label_alignment_bogus": ({"label_alignment": "left"}, "label_alignment"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_value_raises_naming_the_field(tmp_path, case):
    kwargs, field_name = INVALID[case]
    with pytest.raises(ValueError, match=rf"\b{re.escape(field_name)}\b"):
        make_config(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"band_lower": 0.5, "band_upper": 0.9},
        {"competence_weights": [1.0, 0.0, 0.0]},
        {"competence_weights": [0.2, 0.3, 0.5]},
        {"min_zone_fraction": 1.0, "epoch_fraction": 0.01, "replay_fraction": 0.99},
        {"scoring_pool_size": 1, "scoring_batch_size": 1, "rescore_every": 3, "statistics_chunk_size": 1},
        {"running_ppl_decay": 0.0},
        {"composition": "zone_only", "zone_repeats": 1, "fill": "uniform", "anneal_fraction": 0.0},
        {"fill": "weighted", "fill_temperature": 1e-3, "class_balance": False, "out_of_reach": "none"},
    ],
    ids=[
        "band_below_one",
        "loss_only_weights",
        "other_weights",
        "edge_fractions",
        "edge_sizes",
        "no_decay",
        "seed_rule",
        "weighted_fill",
    ],  # fmt: skip
)
def test_valid_edge_values_are_accepted(tmp_path, kwargs):
    config = make_config(tmp_path, **kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


def test_loss_mode_uses_loss_only_weights(tmp_path):
    config = make_config(tmp_path, difficulty_mode="loss", competence_weights=[0.2, 0.3, 0.5])
    assert config.effective_competence_weights == (1.0, 0.0, 0.0)
    composite = make_config(tmp_path, competence_weights=[0.2, 0.3, 0.5])
    assert composite.effective_competence_weights == (0.2, 0.3, 0.5)


def test_from_training_arguments_keeps_user_fields(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        learning_rate=3e-4,
        seed=7,
        per_device_train_batch_size=3,
        num_train_epochs=4,
        logging_steps=2,
    )
    config = ZPDConfig.from_training_arguments(args)
    assert isinstance(config, ZPDConfig)
    assert (config.learning_rate, config.seed, config.per_device_train_batch_size) == (3e-4, 7, 3)
    assert (config.num_train_epochs, config.logging_steps, config.output_dir) == (4, 2, str(tmp_path))
    for name, expected in ZPD_DEFAULTS.items():
        assert getattr(config, name) == expected, name
    # Every TrainingArguments field survives the conversion unchanged.
    changed = [
        f.name
        for f in dataclasses.fields(TrainingArguments)
        if f.init and getattr(config, f.name) != getattr(args, f.name)
    ]
    assert changed == []


def test_from_training_arguments_returns_a_zpd_config_unchanged(tmp_path):
    config = make_config(tmp_path, band_lower=1.05)
    assert ZPDConfig.from_training_arguments(config) is config


def test_every_zpd_field_has_help_and_is_documented():
    for f in ZPD_FIELDS:
        assert f.metadata.get("help", "").strip(), f.name
        assert f"{f.name} (`" in ZPDConfig.__doc__, f.name


def test_command_line_parsing(tmp_path):
    parser = HfArgumentParser(ZPDConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--report_to",
            "none",
            "--band_lower",
            "1.2",
            "--competence_weights",
            "0.5",
            "0.3",
            "0.2",
            "--difficulty_mode",
            "loss",
        ]
    )
    assert isinstance(config, ZPDConfig)
    assert config.band_lower == 1.2
    assert config.band_upper == 1.3
    assert config.competence_weights == [0.5, 0.3, 0.2]
    assert config.difficulty_mode == "loss"
    assert config.effective_competence_weights == (1.0, 0.0, 0.0)


def test_command_line_rejects_unknown_difficulty_mode(tmp_path, capsys):
    parser = HfArgumentParser(ZPDConfig)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--difficulty_mode", "bogus"])
    assert exit_info.value.code == 2
    assert "difficulty_mode" in capsys.readouterr().err


def test_command_line_help_renders(capsys):
    """argparse formats help with '%' substitution, so an unescaped '%' in a help text crashes `--help`."""
    parser = HfArgumentParser(ZPDConfig)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args_into_dataclasses(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for f in ZPD_FIELDS:
        assert f"--{f.name}" in help_text, f.name
    assert "Lower edge of the zone" in help_text
