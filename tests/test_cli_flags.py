"""A Trainer flag given on the command line takes effect or is refused with the reason, never silently ignored."""

import re

import pytest

from synermix_hf.cli.arguments import PAPER_RECIPE_REPLACES, ScriptArgumentParser
from synermix_hf.cli.errors import UsageError


def parse(*argv: str):
    return ScriptArgumentParser().parse(list(argv))


# `--warmup_steps 0` is the Trainer's default: given, it is refused too (it would have no effect either).
@pytest.mark.parametrize("flags", [["--optim", "adamw_torch"], ["--lr_scheduler_type", "cosine"],
                                   ["--warmup_steps", "2"], ["--warmup_steps", "0"],
                                   ["--adam_beta1", "0.8", "--optim_args", "x=1"]])
def test_optimizer_and_schedule_flags_are_refused_under_the_paper_recipe(flags):
    with pytest.raises(UsageError) as refused:
        parse("--learning_rate", "1e-3", *flags)
    message = str(refused.value)
    for flag in flags[::2]:
        assert flag in message
    assert "--recipe 'trainer'" in message and "--learning_rate" not in message.split(":")[0]


@pytest.mark.parametrize("flags, named", [(["--max_steps", "0"], "--max_steps"), (["-ep", "0"], "--num_train_epochs")])
def test_a_run_of_no_step_is_refused_in_one_line(tmp_path, flags, named):
    with pytest.raises(UsageError, match=f"^{named}.* trains no step") as refused:
        parse(*flags, "--output_dir", str(tmp_path / "out"))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_under_the_trainer_recipe_they_take_effect():
    _, _, args, _, _ = parse("--recipe", "trainer", "--optim", "adamw_torch", "--lr_scheduler_type", "cosine",
                          "--warmup_steps", "2", "--learning_rate", "1e-3")
    assert (args.optim, args.lr_scheduler_type, args.warmup_steps, args.learning_rate) == \
        ("adamw_torch", "cosine", 2, 1e-3)


def test_every_flag_the_paper_recipe_replaces_is_a_trainer_flag_and_says_so_in_help(capsys):
    from transformers import TrainingArguments

    installed = [name for name in PAPER_RECIPE_REPLACES if name in TrainingArguments.__dataclass_fields__]
    # warmup_ratio: a field of transformers 5.0 (the floor) that later releases removed.
    assert set(PAPER_RECIPE_REPLACES) - set(installed) <= {"warmup_ratio"}
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    for name in installed:
        assert f"--{name} " in text
    assert text.count("Only with --recipe trainer") >= len(installed)


@pytest.mark.parametrize("steps, strategy", [("logging_steps", "logging_strategy"), ("save_steps", "save_strategy"),
                                             ("eval_steps", "eval_strategy")])
def test_giving_an_intervals_steps_implies_its_steps_strategy(steps, strategy):
    _, _, args, _, _ = parse(f"--{steps}", "3")
    assert getattr(args, strategy) == "steps" and getattr(args, steps) == 3
    _, _, args, _, _ = parse(f"--{steps}", "3", f"--{strategy}", "epoch")  # an explicit strategy wins
    assert getattr(args, strategy) == "epoch"
    _, _, args, _, _ = parse()
    assert getattr(args, strategy) in ("epoch", "no")  # the recipe's per-epoch default stays without it
    _, _, args, _, _ = parse(f"--{steps}", "500")  # given at the Trainer's default, it still implies it
    assert getattr(args, strategy) == "steps" and getattr(args, steps) == 500


@pytest.mark.parametrize("flags, named", [(["-mn", "resnet18", "--model_name_or_path", "./vit"], "not both"),
                                          (["-pr", "True", "--model_name_or_path", "./vit"], "--pretrained (-pr)")])
def test_a_torchvision_flag_with_a_hugging_face_model_is_refused(flags, named):
    with pytest.raises(UsageError, match=re.escape(named)):
        parse(*flags)


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


# The flags of Hugging Face's examples/pytorch/image-classification/run_image_classification.py (transformers 5),
# besides TrainingArguments': each works here as there, or is refused with the reason.
HF_EXAMPLE_FLAGS = {
    "dataset_name": "works", "dataset_config_name": "works", "train_dir": "works", "validation_dir": "works",
    "train_val_split": "works", "max_train_samples": "works", "max_eval_samples": "works",
    "image_column_name": "works", "label_column_name": "works", "model_name_or_path": "works",
    "config_name": "works", "cache_dir": "works", "model_revision": "works", "image_processor_name": "works",
    "token": "works", "trust_remote_code": "works", "ignore_mismatched_sizes": "works",
    "model_type": "refused",
}
EXAMPLE_VALUES = {"train_val_split": "0.2", "max_train_samples": "5", "max_eval_samples": "5",
                  "trust_remote_code": "true", "ignore_mismatched_sizes": "true", "model_type": "vit"}


@pytest.mark.parametrize("name", sorted(HF_EXAMPLE_FLAGS))
def test_every_flag_of_hugging_faces_example_script_works_or_is_refused_with_the_reason(name):
    value = EXAMPLE_VALUES.get(name, "x")
    if HF_EXAMPLE_FLAGS[name] == "works":
        groups = parse(f"--{name}", value)
        parsed = next(getattr(group, name) for group in groups[:4] if hasattr(group, name))
        assert str(parsed).lower() == value.lower() or parsed == float(value)
    else:
        with pytest.raises(UsageError, match=rf"--{name} 'vit': training a Hugging Face architecture from scratch"):
            parse(f"--{name}", value)


@pytest.mark.parametrize("flags, named", [(["--fsdp", "full_shard"], "--fsdp"),
                                          (["--deepspeed", "ds_config.json"], "--deepspeed")])
def test_sharded_training_is_refused_up_front_with_the_reason(flags, named):
    with pytest.raises(UsageError) as refused:
        parse(*flags)
    assert str(refused.value).startswith(f"{named}: SynerMix runs two forward passes") and "DDP" in str(refused.value)


def test_an_accelerate_config_with_fsdp_is_refused_too(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UsageError, match=r"ACCELERATE_USE_FSDP=true \(an accelerate config with FSDP\)"):
        parse()


def test_sync_bn_replaces_every_batch_norm_layer_and_refuses_a_model_without_one():
    import torch
    from torchvision.models import resnet18

    from synermix_hf.cli.train import _synchronise_batch_norm

    class Names:
        model_name_or_path, model_name = None, "resnet18"

    model = resnet18(num_classes=3)
    before = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    synced = _synchronise_batch_norm(model, Names)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == before == 20
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert all(torch.equal(state[k], v) for k, v in synced.state_dict().items())  # same weights and statistics
    # On one process SyncBatchNorm is batch norm: the same output as the model before.
    x = torch.randn(4, 3, 32, 32)
    reference = resnet18(num_classes=3)
    reference.load_state_dict(state)
    torch.testing.assert_close(synced.train()(x), reference.train()(x))
    with pytest.raises(UsageError, match="--sync_bn: resnet18 has no batch-norm layers"):
        _synchronise_batch_norm(torch.nn.Sequential(torch.nn.Linear(2, 2)), Names)
