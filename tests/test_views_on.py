"""Views made on the device through SynerMixTrainer: where `auto` makes them, the batches it trains on, its
evaluation."""

import re

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision.transforms import functional as F

from synermix_hf import (
    ClassBalancedBatchSampler,
    DeviceViews,
    MadeOnDevice,
    PositionedBatchSampler,
    SeededAugmentation,
    StoredImageDataset,
    SynerMixTrainer,
    example_seeds,
    prepare_views,
    views_of,
)
from synermix_hf.data.bad_images import TolerantImages
from synermix_hf.data.pipeline import recipe_problem
from synermix_hf.data.transforms import TransformSpec, build_transforms

from test_trainer import arguments, color_dataset, resnet


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Decoded arrays of in-memory datasets go to HF_DATASETS_CACHE: keep them in the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def test_auto_takes_the_device_path_where_it_applies_and_says_why_not_elsewhere(caplog):
    train, evaluation = color_dataset(n=16), color_dataset(n=8, seed=1)
    for family in ("cifar", "miniimagenet", "digits"):
        views = prepare_views(train, evaluation, TransformSpec(family, 16), "image", "label", two_views=True)
        assert views.views_on == "device" and isinstance(views.train, StoredImageDataset)
        assert views.description.startswith("device: training set (16 images): decoded once at 16x16px")
        assert "evaluation set (8 images): decoded once at 16x16px" in views.description
    for interpolation in ("bilinear", "lanczos"):  # any resampling: torchvision itself cuts the crops
        views = prepare_views(train, evaluation, TransformSpec("imagenet", 16, interpolation=interpolation), "image",
                              "label", two_views=True)
        assert views.views_on == "device" and isinstance(views.train, StoredImageDataset)
        assert views.description.startswith("device: training set (16 images): decoded once at full resolution, "
                                            "with its original views made once")
        assert "evaluation set (8 images): its evaluation views made once" in views.description
        assert views.description.endswith("ToTensor and Normalize batched on the training device: the per-image "
                                          "path's pixels exactly")
    over_budget = prepare_views(train, None, TransformSpec("cifar", 16), "image", "label", two_views=True,
                                decode_budget_gib=1e-6)
    assert over_budget.views_on == "loader" and "budget" in over_budget.description
    assert [r.getMessage() for r in caplog.records if r.name == "synermix_hf.data.pipeline"] == []
    with caplog.at_level("INFO", logger="synermix_hf.data.pipeline"):
        over_budget = prepare_views(train, None, TransformSpec("imagenet", 16), "image", "label", two_views=True,
                                    decode_budget_gib=1e-6)
    # No store fits: the loader decodes every image, still exact; one line says so and why.
    assert over_budget.views_on == "loader"
    assert [r.getMessage() for r in caplog.records] == [f"Views: {over_budget.description}"]
    assert re.search(r"the stores need 0\.0+\d+ GiB, more than the budget of 1e-06 GiB \(`decode_budget_gib`\)",
                     over_budget.description), over_budget.description
    asked = prepare_views(train, None, TransformSpec("cifar", 16), "image", "label", two_views=True, views_on="loader")
    assert asked.views_on == "loader" and "as asked" in asked.description
    with pytest.raises(ValueError, match="`views_on` 'device' does not apply here: the data is a list"):
        prepare_views(list(train), None, TransformSpec("imagenet", 16), "image", "label", two_views=True,
                      views_on="device")
    with pytest.raises(ValueError, match="`views_on` 'gpu' is not valid"):
        prepare_views(train, None, TransformSpec("cifar", 16), "image", "label", two_views=True, views_on="gpu")


@pytest.mark.parametrize("family, largest", [("cifar", 427), ("miniimagenet", 402)])
def test_a_square_recipe_too_large_to_draw_batched_takes_the_loader_and_says_why(family, largest):
    """The device path draws each example's crop offsets, flip and Cutout centre from one seed (`uniform_digits`),
    which covers them up to a size: above it, `auto` takes the loader before training and says why, `device` stops."""
    train = color_dataset(n=8)
    assert recipe_problem(TransformSpec(family, largest)) is None
    spec = TransformSpec(family, largest + 1)
    views = prepare_views(train, None, spec, "image", "label", two_views=True)
    assert views.views_on == "loader" and f"at {largest + 1}px" in views.description, views.description
    with pytest.raises(ValueError, match="`views_on` 'device' does not apply here"):
        prepare_views(train, None, spec, "image", "label", two_views=True, views_on="device")


def test_an_evaluation_set_without_labels_is_predicted_on_the_loader_path_which_says_why(tmp_path):
    """A set to predict, with no label column: the device path's batches carry labels, so `auto` takes the loader
    (which predicts it as given) and says why, and `device` stops before anything is decoded."""
    train, evaluation = color_dataset(n=8), color_dataset(n=6, seed=2).remove_columns("label")
    spec = TransformSpec("cifar", 16)
    views = prepare_views(train, evaluation, spec, "image", "label", two_views=True)
    assert views.views_on == "loader" and "no label column" in views.description, views.description
    trainer = SynerMixTrainer(model=resnet(), args=arguments(tmp_path, per_device_eval_batch_size=4))
    prediction = trainer.predict(views.eval)
    assert prediction.predictions.shape == (6, 4) and prediction.label_ids is None
    with pytest.raises(ValueError, match="`views_on` 'device' does not apply here: .*no label column"):
        prepare_views(train, evaluation, spec, "image", None, two_views=True, views_on="device")


def test_a_dataset_declares_its_device_views_and_every_wrapper_forwards_them(tmp_path):
    """`device_views` is read from the dataset, through the package's wrappers and a `Subset`: a Subset evaluates as
    the same rows selected before `prepare_views` do, and training on one (no `seeded_batch`) is refused up front."""
    spec = TransformSpec("cifar", 16)
    evaluation = color_dataset(n=8, seed=1)
    device = prepare_views(color_dataset(n=8), evaluation, spec, "image", "label", two_views=True)
    made = device.train.device_views
    assert isinstance(device.train, MadeOnDevice) and isinstance(made, DeviceViews)
    assert views_of(device.train) is made and SeededAugmentation(device.train, seed=0).device_views is made
    assert views_of(Subset(device.eval, [0, 2, 3])) is device.eval.device_views
    loader = prepare_views(color_dataset(n=8), None, spec, "image", "label", two_views=True, views_on="loader")
    assert views_of(loader.train) is None and views_of([{"pixel_values": torch.zeros(3, 16, 16)}]) is None
    assert SeededAugmentation(loader.train, seed=0).device_views is None
    assert TolerantImages(loader.train, "image", "training set").device_views is None

    trainer = SynerMixTrainer(model=resnet(), args=arguments(tmp_path, per_device_eval_batch_size=2))
    selected = prepare_views(None, evaluation.select([0, 2, 3]), spec, "image", "label", two_views=True)
    assert selected.views_on == "device"
    assert trainer.evaluate(Subset(device.eval, [0, 2, 3]))["eval_loss"] == trainer.evaluate(selected.eval)["eval_loss"]
    trainer = SynerMixTrainer(model=resnet(), args=arguments(tmp_path), train_dataset=Subset(device.train, [0, 1]))
    with pytest.raises(ValueError, match="seeded_batch"):
        trainer.get_train_dataloader()


@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_a_training_example_asked_for_alone_is_its_batch_of_one(recipe):
    """`SeededAugmentation(...)[i]` over a device-path training set: the batch of one its loader reads, as
    `StoredImageDataset[i]` is one (there is no per-example item to pick out of it)."""
    train = color_dataset(n=8) if recipe == "cifar" else shaped_dataset(n=8)
    views = prepare_views(train, None, TransformSpec(recipe, 16), "image", "label", two_views=True)
    seeded = SeededAugmentation(views.train, seed=3)
    for item in (5, (5, 2)):
        alone, batch = seeded[item], seeded.__getitems__([item])
        assert alone.keys() == batch.keys() and len(alone["labels"]) == 1
        assert all(torch.equal(alone[key], batch[key]) for key in batch)


def test_a_batch_gets_the_views_of_the_loader_it_came_from_not_of_the_loader_made_last(tmp_path):
    spec = TransformSpec("cifar", 16)
    evaluation = color_dataset(n=6, seed=3)
    device = prepare_views(None, evaluation, spec, "image", "label", two_views=True)
    per_image = prepare_views(None, evaluation, spec, "image", "label", two_views=True, views_on="loader")
    trainer = SynerMixTrainer(model=resnet(), args=arguments(tmp_path, per_device_eval_batch_size=6))
    device_loader = trainer.get_eval_dataloader(device.eval)
    per_image_loader = trainer.get_eval_dataloader(per_image.eval)  # made last: its dataset has no device views
    made = trainer.batch_on_device(next(iter(device_loader)), loader=device_loader)
    expected = trainer.batch_on_device(next(iter(per_image_loader)), loader=per_image_loader)
    assert torch.equal(made["pixel_values"], expected["pixel_values"])


@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_evaluation_on_the_device_path_equals_the_per_image_path(tmp_path, recipe):
    """`evaluate` and `predict` on the device path: the same loss and logits as on the per-image path, bit for bit
    (the square store; the RandomResizedCrop recipe's stored evaluation views)."""
    spec = TransformSpec(recipe, 16)
    evaluation = color_dataset(n=20, seed=2) if recipe == "cifar" else shaped_dataset(n=20, seed=2)
    device = prepare_views(None, evaluation, spec, "image", "label", two_views=True)
    assert device.views_on == "device"
    per_image = prepare_views(None, evaluation, spec, "image", "label", two_views=True, views_on="loader")
    model = resnet()
    results = []
    for views in (device, per_image):
        trainer = SynerMixTrainer(model=model, args=arguments(tmp_path, per_device_eval_batch_size=6))
        results.append(trainer.evaluate(views.eval))
        predictions = trainer.predict(views.eval)
        results[-1]["logits"] = predictions.predictions
    assert results[0]["eval_loss"] == results[1]["eval_loss"]
    assert np.array_equal(results[0]["logits"], results[1]["logits"])


def test_each_evaluation_set_is_evaluated_over_its_own_loader_and_views_with_persistent_workers_too(tmp_path):
    """Several evaluation sets (one on the device path, one per-image): a dict given to the trainer (evaluated by
    name), a dict or a set passed to `evaluate`; with persistent loader workers each set's metrics are its own, as
    evaluated alone (the Trainer kept a set passed in as the trainer's own set's loader and evaluated it again)."""
    spec = TransformSpec("cifar", 16)
    device = prepare_views(None, color_dataset(n=6, seed=1), spec, "image", "label", two_views=True).eval
    per_image = prepare_views(None, color_dataset(n=5, seed=2), spec, "image", "label", two_views=True,
                              views_on="loader").eval
    model = resnet()
    alone = {name: SynerMixTrainer(model=model, args=arguments(tmp_path)).evaluate(dataset)["eval_loss"]
             for name, dataset in (("a", device), ("b", per_image))}
    assert alone["a"] != alone["b"]
    args = arguments(tmp_path, per_device_eval_batch_size=4, dataloader_num_workers=1,
                     dataloader_persistent_workers=True)
    trainer = SynerMixTrainer(model=model, args=args, eval_dataset={"a": device, "b": per_image})
    for metrics in (trainer.evaluate(), trainer.evaluate(), trainer.evaluate({"a": device, "b": per_image})):
        assert {name: metrics[f"eval_{name}_loss"] for name in alone} == alone
    trainer = SynerMixTrainer(model=model, args=args, eval_dataset=device)
    losses = [trainer.evaluate(), trainer.evaluate(per_image), trainer.evaluate()]
    assert [metrics["eval_loss"] for metrics in losses] == [alone["a"], alone["b"], alone["a"]]


def expected_views(images_uint8, seeds, spec):
    """The augmented view computed image by image with torchvision's functional ops, parameters read from the seed
    as `uniform_digits` defines them (crop offsets, flip, then the Cutout centre)."""
    padding, size, length = 2, spec.image_size, spec.image_size // 2  # cifar at 16 px: pad 2, Cutout 8
    out = []
    for image, seed in zip(images_uint8, seeds.tolist(), strict=True):
        top, seed = seed % 5, seed // 5
        left, seed = seed % 5, seed // 5
        flip, seed = seed % 2, seed // 2
        centre_y, seed = seed % size, seed // size
        centre_x = seed % size
        view = F.crop(F.pad(image, padding), top, left, size, size)
        view = F.hflip(view) if flip else view
        view = F.to_tensor(view.permute(1, 2, 0).numpy())
        y0, x0 = max(centre_y - length // 2, 0), max(centre_x - length // 2, 0)
        view = F.erase(view, y0, x0, min(centre_y + length // 2, size) - y0, min(centre_x + length // 2, size) - x0, 0)
        out.append(F.normalize(view, spec.mean, spec.std))
    return torch.stack(out)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_are_the_rows_augmented_by_their_appearance_seeds(tmp_path, workers):
    spec = TransformSpec("cifar", 16)
    train = color_dataset(n=40)
    views = prepare_views(train, None, spec, "image", "label", two_views=True)
    args = arguments(tmp_path, beta=0.3, balanced_sampler=True, per_device_train_batch_size=6, seed=11,
                     dataloader_num_workers=workers)  # fmt: skip
    trainer = SynerMixTrainer(model=resnet(), args=args, train_dataset=views.train)
    batches = [trainer.batch_on_device(batch, training=True) for batch in trainer.get_train_dataloader()]

    _, eval_tf = build_transforms(spec)
    rows = views.train.store.pixels.reshape(-1, 16, 16, 3).transpose(0, 3, 1, 2)  # the store's rows, CHW
    sampler = PositionedBatchSampler(ClassBalancedBatchSampler(train["label"], batch_size=6, seed=11))
    seen = {}
    for batch, pairs in zip(batches, sampler, strict=True):
        indices = [index for index, _ in pairs]
        seeds = example_seeds(11, 0, [position for _, position in pairs])
        images = torch.from_numpy(rows[indices])
        assert torch.equal(batch["labels"], torch.tensor(train["label"])[indices])
        assert torch.equal(batch["pixel_values"], expected_views(images, seeds, spec))
        assert torch.equal(batch["original_pixel_values"], torch.stack([eval_tf(train[i]["image"]) for i in indices]))
        for index, view in zip(indices, batch["pixel_values"]):
            seen.setdefault(index, []).append(view)
    # A partner loaded twice in the epoch is augmented twice, independently (keyed by its appearance).
    twice = [views_ for views_ in seen.values() if len(views_) > 1]
    assert twice and all(not torch.equal(a, b) for a, b in twice)


def test_synermix_trains_on_the_device_path(tmp_path):
    views = prepare_views(color_dataset(n=32), color_dataset(n=8, seed=1), TransformSpec("cifar", 16), "image",
                          "label", two_views=True)  # fmt: skip
    args = arguments(tmp_path, beta=0.3, inter_mixup="manifold_mixup", num_train_epochs=2, eval_strategy="epoch")
    trainer = SynerMixTrainer(model=resnet(), args=args, train_dataset=views.train, eval_dataset=views.eval)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(np.isfinite(entry["loss_intra"]) and np.isfinite(entry["loss_inter"]) for entry in logged)
    assert [entry["epoch"] for entry in trainer.state.log_history if "eval_loss" in entry] == [1.0, 2.0]


def shaped_dataset(n=24, seed=0):
    """`color_dataset`'s classes in images of several shapes (landscape, portrait, square), as Food-101 has."""
    rng = np.random.default_rng(seed)
    shapes = [(24, 32), (32, 24), (28, 28), (20, 36)]
    images, labels = [], []
    for i in range(n):
        label = i % 4
        height, width = shapes[i % len(shapes)]
        small = rng.integers(0, 90, (height // 4, width // 4, 3))
        if label < 3:
            small[..., label] += 150
        else:
            small += 100
        big = np.asarray(Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))
        images.append(Image.fromarray(big))
        labels.append(label)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "green", "blue", "gray"])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.mark.parametrize("workers", [0, 2])
def test_random_resized_crop_batches_through_the_trainer_are_the_per_image_paths(tmp_path, workers):
    """The same examples in the same batches, and the per-image path's views bit for bit, for the recipe of the paper
    and for timm's (bicubic, its own crop fraction), in the main process and in loader workers."""
    spec = TransformSpec("imagenet", 16)
    train = shaped_dataset()
    args = arguments(tmp_path, beta=0.3, balanced_sampler=True, per_device_train_batch_size=8, seed=3,
                     dataloader_num_workers=workers)  # fmt: skip
    for spec in (spec, TransformSpec("imagenet", 16, interpolation="bicubic", crop_pct=0.875)):
        batches = {}
        for views_on in ("loader", "auto"):
            views = prepare_views(train, None, spec, "image", "label", two_views=True, views_on=views_on)
            assert views.views_on == ("loader" if views_on == "loader" else "device")
            trainer = SynerMixTrainer(model=resnet(), args=args, train_dataset=views.train)
            batches[views_on] = [trainer.batch_on_device(batch, training=True)
                                 for batch in trainer.get_train_dataloader()]
        for loader, device in zip(*batches.values(), strict=True):
            for key in ("labels", "pixel_values", "original_pixel_values"):
                assert torch.equal(device[key], loader[key]), key


def test_a_step_added_to_a_recipe_is_made_on_the_device_or_refused_there_never_skipped(tmp_path, monkeypatch):
    """The recipe is `build_transforms`'s; the device path compares its steps with those it makes. A step added to the
    RandomResizedCrop recipe before `ToTensor` is run by torchvision in the loader (the views stay the per-image
    path's); one added to a square recipe, which the batched views do not make, sends `auto` to the loader, naming
    the step, and `device` is refused."""
    import torchvision.transforms as T

    from synermix_hf.data import pipeline
    from synermix_hf.data.transforms import build_transforms as recipe_of

    def with_extra_steps(spec):
        train, evaluation = recipe_of(spec)
        steps = list(train.transforms)
        steps.insert(len(steps) - 2 if spec.family == "imagenet" else 1, T.RandomGrayscale(p=0.5))
        return T.Compose(steps), evaluation

    monkeypatch.setattr(pipeline, "build_transforms", with_extra_steps)
    spec = TransformSpec("imagenet", 16)
    train = shaped_dataset(n=16)
    args = arguments(tmp_path, beta=0.3, balanced_sampler=True, per_device_train_batch_size=8, seed=5)
    made = {}
    for views_on in ("loader", "device"):
        views = prepare_views(train, None, spec, "image", "label", two_views=True, views_on=views_on)
        trainer = SynerMixTrainer(model=resnet(), args=args, train_dataset=views.train)
        made[views_on] = [trainer.batch_on_device(batch, training=True)["pixel_values"]
                          for batch in trainer.get_train_dataloader()]
    std, mean = torch.tensor(spec.std).view(1, 3, 1, 1), torch.tensor(spec.mean).view(1, 3, 1, 1)
    gray = [((views * std + mean).diff(dim=1).abs() < 1e-5).flatten(1).all(1) for views in made["device"]]
    assert 0 < int(torch.cat(gray).sum()) < 16  # the added step took effect, on some examples
    assert all(torch.equal(a, b) for a, b in zip(made["loader"], made["device"], strict=True))

    square = TransformSpec("cifar", 16)
    views = prepare_views(color_dataset(n=8), None, square, "image", "label", two_views=True)
    assert views.views_on == "loader" and "RandomGrayscale(p=0.5)" in views.description
    with pytest.raises(ValueError, match="does not make the step RandomGrayscale"):
        prepare_views(color_dataset(n=8), None, square, "image", "label", two_views=True, views_on="device")


def test_the_default_budget_is_the_free_disk_space_and_a_built_store_needs_none(monkeypatch):
    """Without `decode_budget_gib`, what is still to be stored must fit in four fifths of the free space of the disk
    the store goes to; a store already built costs nothing more; what does not fit is decoded in the loader."""
    import shutil
    from collections import namedtuple

    train = shaped_dataset(n=8)
    spec = TransformSpec("imagenet", 16)
    built = prepare_views(train, None, spec, "image", "label", two_views=True)  # plenty of disk: built
    assert "decoded once at full resolution" in built.description
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 1000, 1000))  # a full disk
    again = prepare_views(train, None, spec, "image", "label", two_views=True)
    assert "decoded once at full resolution" in again.description  # reused: nothing new to write
    other = prepare_views(shaped_dataset(n=8, seed=1), None, spec, "image", "label", two_views=True)
    assert other.views_on == "loader"
    assert re.search(r"the stores need [\d.]+ GiB, more than four fifths of the free disk space of \S+ \(0\.00 GiB; "
                     r"set `decode_budget_gib` to allow more\)", other.description), other.description
    square = prepare_views(color_dataset(n=8, seed=3), None, TransformSpec("cifar", 16), "image", "label",
                           two_views=True)
    assert square.views_on == "loader"  # the square recipes take the loader when their store does not fit
    assert re.search(r"the stores need [\d.]+ GiB, more than four fifths of the free disk space of \S+ "
                     r"\(0\.00 GiB; set `decode_budget_gib` to allow more\)", square.description), square.description


def test_a_collator_of_example_lists_is_refused_on_the_device_path_and_collates_on_the_loader_path(tmp_path):
    # On the device path the dataset builds each batch itself; transformers' default_data_collator expects a list of
    # examples and would fail inside the loader with a bare KeyError.
    from transformers import default_data_collator

    train, evaluation = color_dataset(n=16), color_dataset(n=8, seed=1)
    spec = TransformSpec("cifar", 16)
    args = arguments(tmp_path, beta=0.0, max_steps=1)
    device = prepare_views(train, evaluation, spec, "image", "label", two_views=False, views_on="device")
    trainer = SynerMixTrainer(model=resnet(), args=args, train_dataset=device.train, eval_dataset=device.eval,
                              data_collator=default_data_collator)
    for run in (trainer.train, trainer.evaluate, lambda: trainer.predict(device.eval)):
        with pytest.raises(ValueError, match="`data_collator`"):
            run()
    loader = prepare_views(train, evaluation, spec, "image", "label", two_views=False, views_on="loader")
    trainer = SynerMixTrainer(model=resnet(), args=args, train_dataset=loader.train, eval_dataset=loader.eval,
                              data_collator=default_data_collator)
    trainer.train()
    assert np.isfinite(trainer.evaluate()["eval_loss"])


def test_a_training_set_without_its_original_views_is_refused_for_evaluation_naming_two_views(tmp_path):
    # The 224 px recipe's training store holds full-resolution images; its evaluation views exist only with two_views.
    views = prepare_views(shaped_dataset(n=8), None, TransformSpec("imagenet", 16), "image", "label",
                          two_views=False, views_on="device")  # fmt: skip
    trainer = SynerMixTrainer(model=resnet(), args=arguments(tmp_path, beta=0.0), train_dataset=views.train)
    with pytest.raises(ValueError, match="two_views"):
        trainer.evaluate(views.train)
