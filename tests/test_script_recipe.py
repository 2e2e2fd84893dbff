"""The authors' recipe behind the script: SGD, StepLR per epoch (also across a resume), mixed precision."""

import logging

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from synermix_hf.cli.arguments import ScriptArgumentParser
from synermix_hf.cli.methods import METHODS_BY_NAME
from synermix_hf.recipe import RecipeTrainingArguments, epoch_step_lr, updates_per_epoch
from synermix_hf.trainer import SynerMixTrainer


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.body(x))


class _LearningRates(TrainerCallback):
    """The learning rate each optimizer step used."""

    def __init__(self):
        self.rates = []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])


def _data():
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 2, 2, generator=generator), "labels": i % 2} for i in range(8)]


def _args(tmp_path, **overrides):
    values = {
        "output_dir": str(tmp_path), "per_device_train_batch_size": 4, "num_train_epochs": 4, "lr_step_size": 1,
        "lr_gamma": 0.5, "learning_rate": 0.1, "dataloader_num_workers": 0, "report_to": "none", "disable_tqdm": True,
        "save_strategy": "no", "do_train": True,
    }
    values.update(overrides)
    return RecipeTrainingArguments(**values)


def test_epoch_step_lr_decays_once_every_step_size_epochs():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = epoch_step_lr(optimizer, updates_per_epoch=3, step_size=2, gamma=0.1)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.0] * 6 + [0.1] * 6)


def test_trainer_uses_sgd_with_the_recipe_and_steps_lr_per_epoch(tmp_path):
    rates = _LearningRates()
    args = _args(tmp_path, momentum=0.8, nesterov=True, weight_decay=1e-3)
    trainer = SynerMixTrainer(model=_Tiny(), args=args, train_dataset=_data(), callbacks=[rates])
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.8, True, 1e-3)
    assert rates.rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])


def test_with_gradient_accumulation_the_lr_decays_once_per_epoch_of_updates(tmp_path):
    # 3 batches an epoch, accumulated 2 at a time: the Trainer updates after batches 2 and 3, so 2 updates an epoch.
    rates = _LearningRates()
    args = _args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=3,
                 balanced_sampler=False)
    trainer = SynerMixTrainer(model=_Tiny(), args=args, train_dataset=_data()[:6], callbacks=[rates])
    trainer.train()
    assert updates_per_epoch(3, 2) == 2 and trainer.state.global_step == 6
    assert rates.rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_resuming_from_a_checkpoint_continues_the_schedule_and_the_weights(tmp_path):
    full = _LearningRates()
    torch.manual_seed(0)
    straight = SynerMixTrainer(model=_Tiny(), args=_args(tmp_path / "a"), train_dataset=_data(), callbacks=[full])
    straight.train()

    torch.manual_seed(0)
    first = SynerMixTrainer(model=_Tiny(), args=_args(tmp_path / "b", save_strategy="epoch", num_train_epochs=4,
                                                     max_steps=4), train_dataset=_data())
    first.train()  # stops after epoch 2 (4 steps), checkpoint-4 saved
    resumed_rates = _LearningRates()
    torch.manual_seed(1)  # a different init: everything must come from the checkpoint
    resumed = SynerMixTrainer(model=_Tiny(), args=_args(tmp_path / "b", save_strategy="epoch"), train_dataset=_data(),
                            callbacks=[resumed_rates])
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    assert resumed_rates.rates == pytest.approx(full.rates[4:])
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_an_optimizer_and_schedule_given_in_optimizers_win_over_the_recipe(tmp_path):
    model = _Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    rates = _LearningRates()
    trainer = SynerMixTrainer(model=model, args=_args(tmp_path, num_train_epochs=2), train_dataset=_data(),
                              optimizers=(optimizer, schedule), callbacks=[rates])
    trainer.train()
    assert getattr(trainer.optimizer, "optimizer", trainer.optimizer) is optimizer and trainer.lr_scheduler is schedule
    assert rates.rates == pytest.approx([0.3 / (step + 1) for step in range(4)])


def test_without_the_recipes_arguments_the_trainer_keeps_its_own_optimizer(tmp_path):
    from synermix_hf import SynerMixTrainingArguments

    args = SynerMixTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                                     report_to="none", disable_tqdm=True, save_strategy="no")
    trainer = SynerMixTrainer(model=_Tiny(), args=args, train_dataset=_data())
    trainer.train()
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), torch.optim.AdamW)


def test_a_second_train_call_starts_the_recipes_schedule_again(tmp_path):
    # The Trainer builds the schedule anew in every `train()` (its own too); the recipe's must not carry its step over.
    rates = _LearningRates()
    trainer = SynerMixTrainer(model=_Tiny(), args=_args(tmp_path, num_train_epochs=2), train_dataset=_data(),
                              callbacks=[rates])
    trainer.train()
    trainer.train()
    assert rates.rates == pytest.approx([0.1, 0.1, 0.05, 0.05] * 2)


def test_trainer_recipe_hands_optimizer_and_schedule_back(tmp_path):
    trainer = SynerMixTrainer(model=_Tiny(), args=_args(tmp_path, recipe="trainer", learning_rate=1e-3,
                                                     num_train_epochs=1), train_dataset=_data())
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert not isinstance(optimizer, torch.optim.SGD)


def test_mixed_precision_flag_picks_bf16_without_cuda(tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")
    args = _args(tmp_path, amp=True)
    assert args.bf16 and not args.fp16
    with caplog.at_level(logging.WARNING, logger="synermix_hf.recipe"):
        _args(tmp_path, fp16=True, use_cpu=True)
    assert "`fp16` has no effect without a CUDA device" in caplog.text


def test_invalid_recipe_values_name_their_parameters(tmp_path):
    with pytest.raises(ValueError, match="`nesterov`"):
        _args(tmp_path, nesterov=True, momentum=0.0)
    with pytest.raises(ValueError, match="`lr_step_size`"):
        _args(tmp_path, lr_step_size=0)


# ---- the authors' six README commands, setting by setting, against the reference recipe ----

from test_script_cli import README_COMMANDS as AUTHORS_COMMANDS  # noqa: E402 - exactly as the authors' README writes them

# The reference loop's recipe, shared by all six: SGD, no Nesterov, StepLR(10, 0.5) per epoch, 120 epochs, batch 128,
# test batch 48, seed 123, no gradient clipping, the class-balanced sampler for every configuration.
REFERENCE_RECIPE = {
    "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "lr_step_size": 10,
    "lr_gamma": 0.5, "num_train_epochs": 120, "per_device_train_batch_size": 128, "per_device_eval_batch_size": 48,
    "seed": 123, "max_grad_norm": 0.0, "balanced_sampler": True,
}  # fmt: skip


def _labelled_examples():
    """256 examples: class 0 is large, classes 1-20 have two members each, so random batches hold singletons."""
    labels = [0] * 216 + [c for c in range(1, 21) for _ in range(2)]
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 2, 2, generator=generator), "labels": y} for y in labels]


@pytest.mark.parametrize("name", list(AUTHORS_COMMANDS))
def test_each_authors_command_runs_the_reference_recipe(tmp_path, name):
    model_args, data_args, args, _, _ = ScriptArgumentParser().parse(AUTHORS_COMMANDS[name].split())
    assert (model_args.model_name, data_args.dataset_name, data_args.phase) == ("resnet18", "cifar100", "test")
    assert {key: getattr(args, key) for key in REFERENCE_RECIPE} == REFERENCE_RECIPE
    method = METHODS_BY_NAME[name]  # the configuration as the command line's table declares it, alpha 1 (the paper's)
    assert (args.beta, args.inter_mixup, args.alpha) == (method.beta, method.inter_mixup, 1.0)
    assert args.recipe == "paper" and not (args.fp16 or args.bf16)  # -mp not given

    # What the Trainer builds from these arguments: the optimizer, the schedule and the batches.
    args.output_dir = str(tmp_path)
    trainer = SynerMixTrainer(model=_Tiny(), args=args, train_dataset=_labelled_examples(),
                            eval_dataset=_labelled_examples()[:4])
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0.9, 5e-4, False)
    trainer._updates_per_epoch = 390  # CIFAR-100: 50,000 // 128 batches an epoch
    factor = trainer.create_scheduler(390 * 120, optimizer).lr_lambdas[0]
    assert [factor(390 * epoch) for epoch in (0, 9, 10, 19, 20, 119)] == [1, 1, 0.5, 0.5, 0.25, 0.5**11]
    assert factor(390 * 10 - 1) == 1
    batches = [batch["labels"] for batch in trainer.get_train_dataloader()]
    assert len(batches) == 2  # 256 // 128, the remainder dropped
    assert all(len(labels) >= 128 for labels in batches) and any(len(labels) > 128 for labels in batches)
    for labels in batches:
        counts = torch.bincount(labels)
        assert counts[counts > 0].min() >= 2  # every class of a batch has a partner


def test_the_recipe_does_not_clip_gradients(tmp_path):
    # Inputs scaled so that the gradient norm is far above TrainingArguments' default clipping norm of 1 (seeded: the
    # norm depends on the initial weights).
    torch.manual_seed(0)
    model = _Tiny()
    data = [{"pixel_values": example["pixel_values"] * 100, "labels": example["labels"]} for example in _data()]
    before = [p.detach().clone() for p in model.parameters()]
    batch = torch.stack([e["pixel_values"] for e in data[:4]]), torch.tensor([e["labels"] for e in data[:4]])
    loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.sqrt(sum((g**2).sum() for g in gradients)) > 10

    args = _args(tmp_path, max_steps=1, balanced_sampler=False, weight_decay=5e-4, momentum=0.9)
    assert args.max_grad_norm == 0
    trainer = SynerMixTrainer(model=model, args=args, train_dataset=data[:4])  # one batch: these four, in any order
    trainer.train()
    for start, gradient, after in zip(before, gradients, model.parameters(), strict=True):
        # SGD's first step with momentum: the buffer is the gradient (plus weight decay), unclipped.
        torch.testing.assert_close(after.detach(), start - 0.1 * (gradient + 5e-4 * start), rtol=1e-4, atol=1e-6)
