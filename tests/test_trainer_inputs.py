"""Every input of the Trainer that SynerMixTrainer takes has its effect, or is refused with the reason: none is
accepted and dropped (the loss function, the optimizer's class, the recipe's replaced fields, the loader's arguments,
the card's and hparams' optimizer, hyperparameter search trials, string label columns)."""

import inspect

import datasets
import numpy as np
import pytest
import torch
import torchvision
import transformers
from torch.utils.data import DataLoader
from torchvision import transforms

from synermix_hf import RecipeTrainingArguments, SynerMixTrainer, SynerMixTrainingArguments, TwoViewTransform
from synermix_hf.recipe import PAPER_RECIPE_REPLACES
from synermix_hf.testing import tiny_images

NUM_CLASSES = 3


def arguments(tmp_path, cls=SynerMixTrainingArguments, **kwargs):
    values = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no", seed=7,
                  per_device_train_batch_size=6, learning_rate=0.05, logging_steps=1, disable_tqdm=True)
    values.update(kwargs)
    return cls(**values)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=NUM_CLASSES)


def hf_model(seed=0):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                                                     num_labels=NUM_CLASSES))


def image_set(n=12, size=8, **extra_columns):
    labels = [i % NUM_CLASSES for i in range(n)]
    to_tensor = transforms.ToTensor()
    columns = {"image": tiny_images(labels, size=size), "label": labels, **{k: v(labels) for k, v in
                                                                            extra_columns.items()}}
    dataset = datasets.Dataset.from_dict(columns)
    label_column = "labels" if "labels" in columns else "label"
    return dataset.with_transform(TwoViewTransform(to_tensor, to_tensor, label_column=label_column))


def test_compute_loss_func_is_refused_naming_why(tmp_path):
    with pytest.raises(ValueError, match="compute_loss_func"):
        SynerMixTrainer(model=tiny_model(), args=arguments(tmp_path), compute_loss_func=lambda *a, **k: 0.0)


def test_trainer_without_args_names_what_it_needs():
    with pytest.raises(TypeError, match=r"args=SynerMixTrainingArguments") as error:
        SynerMixTrainer(model=tiny_model())
    assert "got TrainingArguments" not in str(error.value)


def test_positional_trainer_arguments_after_the_collator_still_arrive(tmp_path):
    train = image_set()
    trainer = SynerMixTrainer(tiny_model(), arguments(tmp_path), None, train)
    assert trainer.train_dataset is train and trainer.data_collator is not None


def test_optimizer_cls_and_kwargs_wins_over_the_paper_recipe(tmp_path):
    args = arguments(tmp_path, cls=RecipeTrainingArguments, max_steps=1, per_device_train_batch_size=6)
    trainer = SynerMixTrainer(model=tiny_model(), args=args, train_dataset=image_set(),
                              optimizer_cls_and_kwargs=(torch.optim.Adam, {"lr": 0.003}))
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["initial_lr"] == 0.003


@pytest.mark.parametrize("values", [{"optim": "adamw_torch"}, {"lr_scheduler_type": "cosine", "warmup_steps": 2},
                                    {"adam_beta1": 0.8}, {"optim_args": "foo=1"}])
def test_recipe_arguments_refuse_the_optimizer_and_schedule_fields_under_the_paper_recipe(tmp_path, values):
    with pytest.raises(ValueError) as error:
        arguments(tmp_path, cls=RecipeTrainingArguments, **values)
    assert all(f"`{name}`" in str(error.value) for name in values)
    assert "`recipe` 'trainer'" in str(error.value)
    # The Trainer's recipe takes them; the Trainer's defaults given explicitly are not a change.
    arguments(tmp_path, cls=RecipeTrainingArguments, recipe="trainer", **values)
    arguments(tmp_path, cls=RecipeTrainingArguments, optim="adamw_torch_fused", warmup_steps=0)
    assert set(values) <= set(PAPER_RECIPE_REPLACES)


@pytest.mark.parametrize("balanced", [True, False])
def test_the_training_loader_gets_every_loader_argument_of_the_trainer(tmp_path, balanced):
    fields = SynerMixTrainingArguments.__dataclass_fields__
    newer = {"dataloader_multiprocessing_context": "fork", "dataloader_in_order": False}  # not in transformers 5.0
    args = arguments(tmp_path, beta=0.5, balanced_sampler=balanced, dataloader_num_workers=1,
                     dataloader_prefetch_factor=3, dataloader_persistent_workers=True,
                     dataloader_drop_last=True, dataloader_pin_memory=False,
                     **{name: value for name, value in newer.items() if name in fields})
    trainer = SynerMixTrainer(model=tiny_model(), args=args, train_dataset=image_set(n=14))
    loader = trainer.get_train_dataloader()
    assert loader.num_workers == 1 and loader.prefetch_factor == 3 and loader.persistent_workers
    assert loader.pin_memory is False
    if "dataloader_multiprocessing_context" in fields:
        assert loader.multiprocessing_context.get_start_method() == "fork"
    if "dataloader_in_order" in fields:
        assert loader.in_order is False
    # Every other DataLoader argument is as in the installed transformers' own training loader (a loader argument a
    # later release adds is covered too), the batching aside: balanced pieces, or batches of the per-process size.
    plain = transformers.Trainer(model=tiny_model(), args=args, train_dataset=image_set(n=14)).get_train_dataloader()
    batching = {"self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last",
                "generator", "worker_init_fn"}
    for name in inspect.signature(DataLoader.__init__).parameters.keys() - batching:
        assert getattr(loader, name) == getattr(plain, name), name
    # Workers are seeded as the Trainer seeds them.
    assert loader.worker_init_fn.func is plain.worker_init_fn.func
    assert loader.worker_init_fn.keywords == plain.worker_init_fn.keywords
    if not balanced:  # the balanced sampler draws whole batches only
        assert len(loader) == 14 // 6
    batches = list(loader)  # the worker process loads them
    assert len(batches) == len(loader) and all(len(b["labels"]) >= 6 for b in batches)
    # The same batches as the main process loads without workers: the same examples, in the same order.
    in_process = SynerMixTrainer(model=tiny_model(), args=arguments(tmp_path, beta=0.5, balanced_sampler=balanced,
                                                                    dataloader_drop_last=True),
                                 train_dataset=image_set(n=14)).get_train_dataloader()
    assert in_process.num_workers == 0
    expected = list(in_process)
    assert len(batches) == len(expected)
    for batch, same in zip(batches, expected, strict=True):
        assert torch.equal(batch["labels"], same["labels"]) and torch.equal(batch["pixel_values"], same["pixel_values"])


def test_the_model_card_and_hparams_state_the_recipes_optimizer_and_schedule(tmp_path):
    args = arguments(tmp_path, cls=RecipeTrainingArguments, max_steps=1, momentum=0.8, weight_decay=1e-3,
                     lr_step_size=3, lr_gamma=0.25)
    trainer = SynerMixTrainer(model=hf_model(), args=args, train_dataset=image_set())
    trainer.train()
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- optimizer: SGD (momentum 0.8, nesterov False, weight decay 0.001)" in card
    assert "- lr_scheduler_type: StepLR per epoch (step size 3 epochs, gamma 0.25)" in card
    assert "ADAMW" not in card.upper() and "lr_scheduler_type: linear" not in card
    assert "fine-tuned version of []" not in card and "trained from scratch" in card
    hparams = args.to_sanitized_dict()  # what TensorBoard's and W&B's callbacks log
    assert hparams["optim"].startswith("SGD (momentum 0.8") and hparams["lr_scheduler_type"].startswith("StepLR")
    # With the Trainer's recipe, the Trainer's own description stays.
    trainer_args = arguments(tmp_path, cls=RecipeTrainingArguments, recipe="trainer", optim="adamw_torch")
    assert trainer_args.to_dict()["optim"] == "adamw_torch"


def test_a_hyperparameter_search_trial_is_normalised_and_rederived_as_constructed_arguments(tmp_path):
    seen = []

    class Record(SynerMixTrainer):
        def get_train_dataloader(self):
            seen.append((self.args.beta, self.args.inter_mixup, self.args.balanced_sampler))
            return super().get_train_dataloader()

    def space(trial):
        beta = trial.suggest_categorical("beta", [0.0, 0.5])
        return {"beta": 0.5, "inter_mixup": "Manifold_Mixup"} if len(seen) else {"beta": beta}

    args = arguments(tmp_path, max_steps=1, beta=0.0, eval_strategy="no")
    assert args.balanced_sampler is False
    trainer = Record(model_init=lambda: tiny_model(), args=args, train_dataset=image_set(), eval_dataset=image_set(n=6))
    trainer.hyperparameter_search(hp_space=space, backend="optuna", n_trials=2, direction="minimize",
                                  compute_objective=lambda metrics: 0.0)
    assert seen[1] == (0.5, "manifold_mixup", True)  # as SynerMixTrainingArguments(beta=0.5, ...) would be
    constructed = arguments(tmp_path, beta=0.5, inter_mixup="Manifold_Mixup")
    assert (constructed.beta, constructed.inter_mixup, constructed.balanced_sampler) == seen[1]


def test_string_label_columns_work_in_the_python_api(tmp_path):
    """A `label` column of class names beside the integer `labels` the batches are made of: the balanced sampler
    reads the trained column."""
    names = ["cat", "dog", "eel"]
    train = image_set(labels=lambda labels: labels)
    train = datasets.Dataset.from_dict({**train.with_format(None).to_dict(),
                                        "label": [names[i] for i in train.with_format(None)["labels"]]})
    train = train.cast_column("image", datasets.Image()).with_transform(
        TwoViewTransform(transforms.ToTensor(), transforms.ToTensor(), label_column="labels"))
    trainer = SynerMixTrainer(model=tiny_model(), args=arguments(tmp_path, beta=0.5, max_steps=2),
                              train_dataset=train)
    trainer.train()
    batch = next(iter(trainer.get_train_dataloader()))
    assert np.min(np.bincount(batch["labels"].numpy())[np.bincount(batch["labels"].numpy()) > 0]) >= 2
    # A column of class names that the batches would be made of is refused up front, with the fix.
    only_names = datasets.Dataset.from_dict({"image": tiny_images([0, 1]), "label": ["cat", "dog"]})
    with pytest.raises(ValueError, match="class_encode_column"):
        SynerMixTrainer(model=tiny_model(), args=arguments(tmp_path, beta=0.5),
                        train_dataset=only_names.with_transform(TwoViewTransform(transforms.ToTensor(),
                                                                                 transforms.ToTensor()))
                        ).get_train_dataloader()


def test_include_for_metrics_inputs_is_refused_where_the_views_are_made_on_the_device(tmp_path):
    from synermix_hf import prepare_views
    from synermix_hf.data.transforms import TransformSpec

    plain = datasets.Dataset.from_dict({"image": tiny_images([0, 1, 2] * 4), "label": [0, 1, 2] * 4})
    views = prepare_views(plain, plain, TransformSpec("cifar", 8), "image", "label", two_views=True,
                          views_on="device")
    with pytest.raises(ValueError, match="include_for_metrics"):  # at construction, before any training
        SynerMixTrainer(model=tiny_model(), args=arguments(tmp_path, include_for_metrics=["inputs"]),
                        train_dataset=views.train, eval_dataset=views.eval)
    # 'loss' has no such need, and the loader's views have their inputs.
    SynerMixTrainer(model=tiny_model(), args=arguments(tmp_path, include_for_metrics=["loss"]),
                    train_dataset=views.train, eval_dataset=views.eval)
    SynerMixTrainer(model=tiny_model(), args=arguments(tmp_path, include_for_metrics=["inputs"]),
                    eval_dataset=image_set())


def test_sampling_strategies_for_text_are_refused_and_sequential_needs_the_plain_sampler(tmp_path):
    fields = SynerMixTrainingArguments.__dataclass_fields__
    if "train_sampling_strategy" in fields:  # transformers 5.25; 5.0 has group_by_length instead
        for strategy in ("group_by_length", "batch_rebalance"):
            with pytest.raises(ValueError, match="train_sampling_strategy"):
                arguments(tmp_path, train_sampling_strategy=strategy)
        with pytest.raises(ValueError, match="balanced_sampler=False"):
            arguments(tmp_path, beta=0.5, train_sampling_strategy="sequential")
        args = arguments(tmp_path, beta=0.5, balanced_sampler=False, train_sampling_strategy="sequential", max_steps=1)
        trainer = SynerMixTrainer(model=tiny_model(), args=args, train_dataset=image_set())
        batch = next(iter(trainer.get_train_dataloader()))
        assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2]  # the dataset's order
    else:
        with pytest.raises(ValueError, match="group_by_length"):
            arguments(tmp_path, group_by_length=True)


def test_an_interval_in_steps_implies_its_steps_strategy_in_the_recipe(tmp_path):
    recipe = arguments(tmp_path, cls=RecipeTrainingArguments, logging_steps=3, save_steps=4, eval_steps=5,
                       save_strategy=None)
    assert (recipe.logging_strategy, recipe.save_strategy, recipe.eval_strategy) == ("steps", "steps", "steps")
    default = arguments(tmp_path, cls=RecipeTrainingArguments, do_eval=True, logging_steps=None, save_strategy=None)
    assert (default.logging_strategy, default.save_strategy, default.eval_strategy) == ("epoch", "epoch", "epoch")
    assert (default.logging_steps, default.save_steps) == (500, 500)  # the Trainer's intervals
    # Given at the Trainer's default value, an interval still implies its strategy.
    at_default = arguments(tmp_path, cls=RecipeTrainingArguments, logging_steps=500, save_steps=500, eval_steps=500,
                           save_strategy=None)
    assert (at_default.logging_strategy, at_default.save_strategy, at_default.eval_strategy) == ("steps",) * 3
    given = arguments(tmp_path, cls=RecipeTrainingArguments, logging_steps=3, logging_strategy="epoch")
    assert given.logging_strategy == "epoch"  # a strategy given is kept


def test_split_batches_is_refused_with_the_balanced_sampler(tmp_path):
    # The balanced sampler hands each process its own whole classes of the step's batch, a piece at a time: there is
    # nothing for accelerate to split (it failed inside `prepare` on two processes).
    with pytest.raises(ValueError, match="split_batches"):
        SynerMixTrainingArguments(output_dir=str(tmp_path), beta=0.5, accelerator_config={"split_batches": True},
                                  report_to=[], use_cpu=True)
    args = SynerMixTrainingArguments(output_dir=str(tmp_path), beta=0.5, balanced_sampler=False, report_to=[],
                                     use_cpu=True, accelerator_config={"split_batches": True})
    assert args.accelerator_config.split_batches
