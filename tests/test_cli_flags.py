"""A Trainer flag given on the command line takes effect or is refused with the reason, never silently ignored."""

import pytest

from synermix_hf.cli.arguments import PAPER_RECIPE_REPLACES, ScriptArgumentParser
from synermix_hf.cli.errors import UsageError


def parse(*argv: str):
    return ScriptArgumentParser().parse(list(argv))


@pytest.mark.parametrize("flags", [["--optim", "adamw_torch"], ["--lr_scheduler_type", "cosine"],
                                   ["--warmup_steps", "2"], ["--adam_beta1", "0.8", "--optim_args", "x=1"]])
def test_optimizer_and_schedule_flags_are_refused_under_the_paper_recipe(flags):
    with pytest.raises(UsageError) as refused:
        parse("--learning_rate", "1e-3", *flags)
    message = str(refused.value)
    for flag in flags[::2]:
        assert flag in message
    assert "--recipe trainer" in message and "--learning_rate" not in message.split(":")[0]


def test_under_the_trainer_recipe_they_take_effect():
    _, _, args, _ = parse("--recipe", "trainer", "--optim", "adamw_torch", "--lr_scheduler_type", "cosine",
                          "--warmup_steps", "2", "--learning_rate", "1e-3")
    assert (args.optim, args.lr_scheduler_type, args.warmup_steps, args.learning_rate) == \
        ("adamw_torch", "cosine", 2, 1e-3)


def test_every_flag_the_paper_recipe_replaces_is_a_trainer_flag_and_says_so_in_help(capsys):
    from transformers import TrainingArguments

    assert set(PAPER_RECIPE_REPLACES) <= set(TrainingArguments.__dataclass_fields__)
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    for name in PAPER_RECIPE_REPLACES:
        assert f"--{name} " in text
    assert text.count("Only with --recipe trainer") >= len(PAPER_RECIPE_REPLACES)


@pytest.mark.parametrize("steps, strategy", [("logging_steps", "logging_strategy"), ("save_steps", "save_strategy"),
                                             ("eval_steps", "eval_strategy")])
def test_giving_an_intervals_steps_implies_its_steps_strategy(steps, strategy):
    _, _, args, _ = parse(f"--{steps}", "3")
    assert getattr(args, strategy) == "steps" and getattr(args, steps) == 3
    _, _, args, _ = parse(f"--{steps}", "3", f"--{strategy}", "epoch")  # an explicit strategy wins
    assert getattr(args, strategy) == "epoch"
    _, _, args, _ = parse()
    assert getattr(args, strategy) in ("epoch", "no")  # the recipe's per-epoch default stays without it


def test_the_method_line_names_each_configuration_and_how_to_turn_synermix_on():
    from synermix_hf.cli.methods import METHODS, describe_method

    texts = {m.name: describe_method(m.beta, m.inter_mixup, 1.0) for m in METHODS}
    for name, text in texts.items():
        assert f"(the paper's {name})" in text
    assert texts["w-RA&ER(MM)"].startswith("SynerMix (the paper's w-RA&ER(MM)): 0.1 x intra-class mixup")
    assert "0.9 x Manifold MixUp of the augmented view (alpha 1)" in texts["w-RA&ER(MM)"]
    assert "0.5 x cross-entropy of the augmented view" in texts["w-RA"]
    assert "SynerMix off" in texts["wo-RA&ER"] and "Add --beta 0.1" in texts["wo-RA&ER"]
    assert "Add --beta 0.1 to combine it" in texts["w-ER(M)"]
    assert describe_method(0.0, "cutmix", 1.0).startswith("CutMix only (alpha 1), SynerMix off")
