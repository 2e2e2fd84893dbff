"""SynerMixTrainingArguments: validation at construction, spellings, defaults, command-line parsing."""

import pytest
from transformers import HfArgumentParser

from synermix_hf import SynerMixTrainingArguments


def make(**kwargs):
    return SynerMixTrainingArguments(output_dir="unused", report_to=[], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 1.5}, r"`beta` must be between 0 and 1"),
        ({"beta": -0.1}, r"`beta` must be between 0 and 1"),
        ({"alpha": 0.0, "inter_mixup": "mixup"}, r"`alpha` must be > 0"),
        ({"alpha": -1.0, "inter_mixup": "Manifold_Mixup"}, r"`alpha` must be > 0"),
        ({"inter_mixup": "cutmix2"}, r"`inter_mixup` 'cutmix2' is not valid; choose one of none, mixup, manifold_mixup"),
        ({"max_steps": 0}, r"`max_steps` 0 trains no step"),  # the Trainer would train one step
        ({"num_train_epochs": 0}, r"`num_train_epochs` 0 trains no step"),  # it would save an untrained model
        ({"num_train_epochs": -1}, r"`num_train_epochs` -1 trains no step"),
    ],
)
def test_bad_values_raise_clear_errors_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_zero_epochs_are_accepted_where_max_steps_decides():
    assert make(num_train_epochs=0, max_steps=3).max_steps == 3


@pytest.mark.parametrize(
    "spelling, canonical",
    [("Mixup", "mixup"), ("Manifold_Mixup", "manifold_mixup"), ("manifold-mixup", "manifold_mixup"),
     ("CUTMIX", "cutmix"), ("None", "none"), ("none", "none")],
)  # fmt: skip
def test_inter_mixup_spellings(spelling, canonical):
    assert make(inter_mixup=spelling).inter_mixup == canonical


def test_alpha_is_not_checked_without_inter_mixup():
    assert make(alpha=0.0).alpha == 0.0


def test_balanced_sampler_defaults_to_on_with_intra_and_can_be_switched():
    assert make(beta=0.1).balanced_sampler is True
    assert make(beta=0.0).balanced_sampler is False
    assert make(beta=0.5, balanced_sampler=False).balanced_sampler is False
    assert make(beta=0.0, balanced_sampler=True).balanced_sampler is True


def test_parses_from_the_command_line_with_the_papers_spellings():
    (args,) = HfArgumentParser(SynerMixTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir", "unused", "--report_to", "none", "--beta", "0.1", "--inter_mixup", "Manifold_Mixup",
            "--alpha", "0.4", "--label_smoothing_factor", "0.1", "--manifold_mixup_modules", "input", "layer2",
        ]
    )  # fmt: skip
    assert (args.beta, args.inter_mixup, args.alpha) == (0.1, "manifold_mixup", 0.4)
    assert args.label_smoothing_factor == 0.1
    assert args.manifold_mixup_modules == ["input", "layer2"]
    assert args.balanced_sampler is True


def test_comma_separated_mixing_points_are_split():
    assert make(manifold_mixup_modules="input, layer2").manifold_mixup_modules == ["input", "layer2"]
