"""The authors' recipe behind the script: SGD, StepLR per epoch (also across a resume), mixed precision."""

import logging

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from synermix_hf.recipe import RecipeTrainer, RecipeTrainingArguments, epoch_step_lr


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
    trainer = RecipeTrainer(model=_Tiny(), args=args, train_dataset=_data(), callbacks=[rates])
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.8, True, 1e-3)
    assert rates.rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])


def test_resuming_from_a_checkpoint_continues_the_schedule_and_the_weights(tmp_path):
    full = _LearningRates()
    torch.manual_seed(0)
    straight = RecipeTrainer(model=_Tiny(), args=_args(tmp_path / "a"), train_dataset=_data(), callbacks=[full])
    straight.train()

    torch.manual_seed(0)
    first = RecipeTrainer(model=_Tiny(), args=_args(tmp_path / "b", save_strategy="epoch", num_train_epochs=4,
                                                     max_steps=4), train_dataset=_data())
    first.train()  # stops after epoch 2 (4 steps), checkpoint-4 saved
    resumed_rates = _LearningRates()
    torch.manual_seed(1)  # a different init: everything must come from the checkpoint
    resumed = RecipeTrainer(model=_Tiny(), args=_args(tmp_path / "b", save_strategy="epoch"), train_dataset=_data(),
                            callbacks=[resumed_rates])
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    assert resumed_rates.rates == pytest.approx(full.rates[4:])
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_trainer_recipe_hands_optimizer_and_schedule_back(tmp_path):
    trainer = RecipeTrainer(model=_Tiny(), args=_args(tmp_path, recipe="trainer", learning_rate=1e-3,
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
    assert "--fp16 has no effect without a CUDA device" in caplog.text


def test_invalid_recipe_values_name_their_flags(tmp_path):
    with pytest.raises(ValueError, match="--nesterov"):
        _args(tmp_path, nesterov=True, momentum=0.0)
    with pytest.raises(ValueError, match="--lr_step_size"):
        _args(tmp_path, lr_step_size=0)
