"""SynerMixTrainer: the loss recomputed by hand, what runs, evaluation, accumulation, reproducibility, end to end."""

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from synermix_hf import (
    SingleViewTransform,
    SynerMixTrainer,
    SynerMixTrainingArguments,
    TwoViewTransform,
    step_generators,
)
from synermix_hf.cli.methods import METHODS_BY_NAME

NUM_CLASSES = 4


def arguments(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no", seed=7,
        per_device_train_batch_size=8, learning_rate=0.05, logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    defaults.update(kwargs)
    return SynerMixTrainingArguments(**defaults)


def resnet(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=NUM_CLASSES)


def hf_resnet(seed=0):
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_labels=NUM_CLASSES)
    return ResNetForImageClassification(config)


def vit(seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        num_labels=NUM_CLASSES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return ViTForImageClassification(config)


def tensor_batch(n=8, size=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 1])[:n]
    return {
        "pixel_values": torch.randn(n, 3, size, size, generator=generator),
        "original_pixel_values": torch.randn(n, 3, size, size, generator=generator),
        "labels": labels,
    }


def resnet_features(model, x, mix_before=None, mix=None):
    """Independent torchvision ResNet forward to the penultimate feature, optionally mixing before a layer."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        if name == mix_before:
            x = mix(x)
        x = getattr(model, name)(x)
    return torch.flatten(model.avgpool(x), 1)


def hand_intra_loss(model, original, labels, generator, smoothing=0.0):
    weights = torch.rand(len(labels), generator=generator)
    return hand_intra_loss_of_features(model, resnet_features(model, original), labels, weights, smoothing)


def hand_intra_loss_of_features(model, features, labels, weights, smoothing=0.0):
    """SynerMix-Intra by hand: per class, the members' features weighted by their normalized weights, classified."""
    rows, classes = [], []
    for c in sorted(set(labels.tolist())):
        mask = labels == c
        w = weights[mask] / weights[mask].sum()
        rows.append((features[mask] * w[:, None]).sum(0))
        classes.append(c)
    return F.cross_entropy(model.fc(torch.stack(rows)), torch.tensor(classes), label_smoothing=smoothing)


def hand_mixed_ce(logits, labels, permutation, lam, smoothing=0.0):
    return lam * F.cross_entropy(logits, labels, label_smoothing=smoothing) + (1 - lam) * F.cross_entropy(
        logits, labels[permutation], label_smoothing=smoothing
    )


@pytest.mark.parametrize(
    "inter_mixup, points",
    [("none", None), ("mixup", None), ("manifold_mixup", ["layer2"]), ("manifold_mixup", ["input"]),
     ("cutmix", None)],
)  # fmt: skip
def test_total_loss_equals_beta_intra_plus_one_minus_beta_inter_by_hand(tmp_path, inter_mixup, points):
    beta, alpha, smoothing = 0.3, 0.7, 0.1
    model = resnet()
    trainer = SynerMixTrainer(
        model=model,
        args=arguments(
            tmp_path, beta=beta, alpha=alpha, inter_mixup=inter_mixup, manifold_mixup_modules=points,
            label_smoothing_factor=smoothing,
        ),
    )  # fmt: skip
    inputs = tensor_batch()
    model.train()
    loss = trainer.compute_loss(model, inputs)

    # The same draws, in the trainer's order: intra weights, then lambda, permutation, point / box.
    generator, rng = step_generators(seed=7, step=0, micro_step=0, process_index=0)
    labels, x = inputs["labels"], inputs["pixel_values"]
    intra = hand_intra_loss(model, inputs["original_pixel_values"], labels, generator, smoothing)
    if inter_mixup == "none":
        inter = F.cross_entropy(model(x), labels, label_smoothing=smoothing)
    else:
        lam = rng.beta(alpha, alpha)
        permutation = torch.randperm(len(labels), generator=generator)
        if inter_mixup == "cutmix":
            cut = np.sqrt(1 - lam)
            cy, cx = rng.integers(0, 16), rng.integers(0, 16)
            top, bottom = max(cy - int(16 * cut) // 2, 0), min(cy + int(16 * cut) // 2, 16)
            left, right = max(cx - int(16 * cut) // 2, 0), min(cx + int(16 * cut) // 2, 16)
            mixed = x.clone()
            mixed[:, :, top:bottom, left:right] = x[permutation][:, :, top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / 256
            logits = model(mixed)
        else:
            rng.integers(1)  # the point choice (only one point given)
            if points is None or points == ["input"]:
                logits = model(lam * x + (1 - lam) * x[permutation])
            else:
                mix = lambda h: lam * h + (1 - lam) * h[permutation]  # noqa: E731
                logits = model.fc(resnet_features(model, x, mix_before="layer2", mix=mix))
        inter = hand_mixed_ce(logits, labels, permutation, lam, smoothing)
    torch.testing.assert_close(loss, beta * intra + (1 - beta) * inter)


def count_forward_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("beta, expected_calls", [(0.0, 1), (0.4, 2), (1.0, 2)])
def test_beta_zero_runs_no_intra_pass_and_beta_one_runs_the_inter_pass_without_gradient(tmp_path, beta,
                                                                                          expected_calls):
    # As the reference: `if beta > 0` guards the intra pass; the augmented view's forward always runs (at beta 1
    # with loss weight 0, for BatchNorm's statistics), so it needs no gradient there.
    model = resnet()
    trainer = SynerMixTrainer(model=model, args=arguments(tmp_path, beta=beta, inter_mixup="mixup"))
    calls = count_forward_calls(model)
    head_rows = []
    model.fc.register_forward_hook(lambda module, args, output: head_rows.append((output.shape[0],
                                                                                output.requires_grad)))
    model.train()
    trainer.compute_loss(model, tensor_batch())
    assert len(calls) == expected_calls
    # The intra pass classifies one synthesized row per class of the head, the inter pass one row per example.
    expected_rows = {0.0: [(8, True)], 0.4: [(NUM_CLASSES, True), (8, True)],
                     1.0: [(NUM_CLASSES, True), (8, False)]}[beta]  # fmt: skip
    assert head_rows == expected_rows


def test_intra_pass_needs_the_original_view(tmp_path):
    model = resnet()
    trainer = SynerMixTrainer(model=model, args=arguments(tmp_path, beta=0.1))
    inputs = tensor_batch()
    del inputs["original_pixel_values"]
    with pytest.raises(ValueError, match="original_pixel_values.*TwoViewTransform"):
        trainer.compute_loss(model.train(), inputs)


def test_non_finite_loss_is_reported_with_step_and_components_and_not_trained_on(tmp_path):
    model = resnet()
    trainer = SynerMixTrainer(model=model, args=arguments(tmp_path, beta=0.5))
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop before each step
    before = {name: value.clone() for name, value in model.state_dict().items()}
    inputs = tensor_batch()
    inputs["pixel_values"][0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"global step 0: loss=nan \(loss_intra=[\d.]+, loss_inter=nan\)"):
        trainer.training_step(model, inputs)
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]), name


def test_on_cuda_the_finite_check_reads_the_loss_one_step_late_instead_of_waiting_for_the_gpu(tmp_path):
    from synermix_hf.finite_loss import FiniteLossCheck

    model = resnet()
    trainer = SynerMixTrainer(model=model, args=arguments(tmp_path, beta=0.5))
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    trainer.current_gradient_accumulation_steps = 1
    trainer._finite_check.deferred_devices = ("cpu",)  # what CUDA losses get, here on the CPU
    bad = tensor_batch()
    bad["pixel_values"][0] = float("nan")
    trainer.training_step(model, bad)  # read later: no error, no wait
    trainer.state.global_step = 1
    with pytest.raises(FloatingPointError, match=r"global step 0: loss=nan \(loss_intra=[\d.]+, loss_inter=nan\)\. "
                                                 r"Training stopped after that step's update"):  # fmt: skip
        trainer.training_step(model, tensor_batch())
    # A pending check is settled before anything is logged, evaluated or saved, and at the end of training.
    check = FiniteLossCheck(deferred_devices=("cpu",))
    check.submit(3, torch.tensor(float("inf")), {"inter": torch.tensor(float("inf"))})
    with pytest.raises(FloatingPointError, match="global step 3: loss=inf"):
        check.flush()
    nan_set = [{"pixel_values": torch.full((3, 16, 16), float("nan")), "labels": i % 4} for i in range(8)]
    trainer = SynerMixTrainer(model=resnet(), args=arguments(tmp_path, max_steps=1), train_dataset=nan_set)
    trainer._finite_check.deferred_devices = ("cpu",)
    with pytest.raises(FloatingPointError, match="global step 0: loss=nan"):
        trainer.train()


def test_plain_training_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="SynerMixTrainingArguments"):
        SynerMixTrainer(model=resnet(), args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))


def test_evaluation_is_plain_cross_entropy_and_predict_returns_plain_logits(tmp_path):
    model = resnet()
    batch = tensor_batch()
    eval_set = [
        {"pixel_values": batch["pixel_values"][i], "original_pixel_values": batch["original_pixel_values"][i],
         "labels": int(batch["labels"][i])}
        for i in range(8)
    ]  # fmt: skip
    trainer = SynerMixTrainer(
        model=model, args=arguments(tmp_path, beta=0.5, inter_mixup="mixup", per_device_eval_batch_size=8)
    )
    metrics = trainer.evaluate(eval_set)
    prediction = trainer.predict(eval_set)
    model.eval()
    with torch.no_grad():
        expected_logits = model(batch["original_pixel_values"])
    expected_loss = F.cross_entropy(expected_logits, batch["labels"]).item()
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(prediction.predictions, expected_logits.numpy(), rtol=1e-5, atol=1e-6)
    assert prediction.label_ids.tolist() == batch["labels"].tolist()


def color_dataset(n=48, size=16, seed=0):
    """Images whose class is their dominant colour channel (4 classes: R, G, B, gray), as PIL images."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % NUM_CLASSES
        pixels = rng.integers(0, 90, (size, size, 3))
        if label < 3:
            pixels[..., label] += 150
        else:
            pixels += 100
        images.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
        labels.append(label)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "green", "blue", "gray"])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def device_view_set(size=16):
    """`color_dataset` on the device data path with the cifar recipe (decoded once, views made by the trainer)."""
    from synermix_hf import prepare_views
    from synermix_hf.data.transforms import TransformSpec

    views = prepare_views(color_dataset(size=size), None, TransformSpec("cifar", size), "image", "label",
                          two_views=True, views_on="device")  # fmt: skip
    return views.train


def two_view_sets(size=16):
    normalize = transforms.Normalize([0.5] * 3, [0.25] * 3)
    original = transforms.Compose([transforms.ToTensor(), normalize])
    augment = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    train = color_dataset(size=size).with_transform(TwoViewTransform(augment, original))
    val = color_dataset(n=24, size=size, seed=1).with_transform(SingleViewTransform(original))
    return train, val


@pytest.mark.parametrize("build", [resnet, hf_resnet], ids=["torchvision-resnet18", "hf-resnet"])
@pytest.mark.parametrize("configuration", list(METHODS_BY_NAME))  # the paper's six
def test_six_configurations_train_end_to_end_and_the_loss_goes_down(tmp_path, build, configuration):
    train, val = two_view_sets()
    epochs = 6
    method = METHODS_BY_NAME[configuration]
    args = arguments(
        tmp_path, num_train_epochs=epochs, learning_rate=0.02, per_device_train_batch_size=16,
        beta=method.beta, inter_mixup=method.inter_mixup, alpha=1.0,
    )  # fmt: skip
    trainer = SynerMixTrainer(model=build(), args=args, train_dataset=train, eval_dataset=val)
    trainer.train()
    assert np.isfinite(trainer.evaluate()["eval_loss"])
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    losses = [entry["loss"] for entry in logged]
    per_epoch = len(losses) // epochs
    assert np.mean(losses[-per_epoch:]) < 0.75 * np.mean(losses[:per_epoch])
    assert all("loss_inter" in entry for entry in logged)
    assert all(("loss_intra" in entry) == (args.beta > 0) for entry in logged)
    for entry in logged:  # the logged total is the weighted sum of the logged components
        intra = entry.get("loss_intra", 0.0)
        assert entry["loss"] == pytest.approx(args.beta * intra + (1 - args.beta) * entry["loss_inter"], rel=1e-4)


def test_balanced_batches_reach_the_loss(tmp_path):
    train, _ = two_view_sets()
    trainer = SynerMixTrainer(
        model=resnet(), args=arguments(tmp_path, beta=0.2, per_device_train_batch_size=6), train_dataset=train
    )
    for batch in trainer.get_train_dataloader():
        counts = torch.bincount(batch["labels"])
        assert counts[counts > 0].min() >= 2 and len(batch["labels"]) >= 6
    assert len(trainer.get_train_dataloader()) == 48 // 6


def final_parameters(trainer):
    trainer.train()
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def in_memory(n=16, size=16, seed=3):
    batch = tensor_batch(n=8, size=size, seed=seed)
    more = tensor_batch(n=8, size=size, seed=seed + 1)
    return [
        {key: (b[key][i] if key != "labels" else int(b[key][i])) for key in b} for b in (batch, more) for i in range(8)
    ][:n]


def test_gradient_accumulation_matches_the_plain_trainer_on_a_torchvision_model(tmp_path):
    data = in_memory()
    # SGD without clipping: the update is proportional to the gradient, so a wrong accumulation scale shows.
    common = dict(report_to=[], use_cpu=True, save_strategy="no", seed=5, max_steps=2, learning_rate=0.1,
                  optim="sgd", max_grad_norm=0.0, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                  disable_tqdm=True)  # fmt: skip

    class PlainTrainer(Trainer):  # the plain Trainer's own loss path needs a forward that takes labels
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return F.cross_entropy(model(inputs["pixel_values"]), inputs["labels"])

    plain_args = TrainingArguments(output_dir=str(tmp_path / "p"), remove_unused_columns=False, **common)
    plain = PlainTrainer(model=resnet(), args=plain_args,
                         train_dataset=data, data_collator=lambda ex: {
                             "pixel_values": torch.stack([e["pixel_values"] for e in ex]),
                             "labels": torch.tensor([e["labels"] for e in ex])})  # fmt: skip
    synermix = SynerMixTrainer(
        model=resnet(), args=SynerMixTrainingArguments(output_dir=str(tmp_path / "s"), **common), train_dataset=data
    )
    torch.testing.assert_close(final_parameters(synermix), final_parameters(plain))


def test_gradient_accumulation_gives_the_update_of_one_big_batch(tmp_path):
    data = in_memory()
    # One step over all 16 examples either way, in whichever order the sampler gives them.
    common = dict(report_to=[], use_cpu=True, save_strategy="no", seed=5, max_steps=1, learning_rate=0.5,
                  optim="sgd", max_grad_norm=0.0, disable_tqdm=True)  # fmt: skip
    one_batch = SynerMixTrainer(
        model=vit(),
        args=SynerMixTrainingArguments(output_dir=str(tmp_path / "a"), per_device_train_batch_size=16, **common),
        train_dataset=data,
    )
    accumulated = SynerMixTrainer(
        model=vit(),
        args=SynerMixTrainingArguments(
            output_dir=str(tmp_path / "b"), per_device_train_batch_size=4, gradient_accumulation_steps=4, **common
        ),
        train_dataset=data,
    )
    reference = final_parameters(one_batch)
    assert not torch.allclose(reference, torch.cat([p.flatten() for p in vit().parameters()]))
    torch.testing.assert_close(final_parameters(accumulated), reference, rtol=1e-5, atol=1e-6)


def test_same_seed_reproduces_a_run_and_another_seed_does_not(tmp_path):
    train, _ = two_view_sets()

    def run(seed, name):
        args = arguments(tmp_path / name, beta=0.3, inter_mixup="manifold_mixup", seed=seed, max_steps=3)
        return final_parameters(SynerMixTrainer(model=resnet(), args=args, train_dataset=train))

    first = run(11, "a")
    torch.testing.assert_close(run(11, "b"), first, rtol=0, atol=0)
    assert not torch.allclose(run(12, "c"), first)


def test_remove_unused_columns_is_off_and_turning_it_on_is_refused_with_the_reason(tmp_path):
    # The Trainer would drop the columns the model's forward does not take, original_pixel_values among them.
    train, val = two_view_sets()
    args = arguments(tmp_path, beta=0.2, max_steps=1)
    assert args.remove_unused_columns is False
    trainer = SynerMixTrainer(model=hf_resnet(), args=args, train_dataset=train, eval_dataset=val)
    trainer.train()
    assert "eval_loss" in trainer.evaluate()
    with pytest.raises(ValueError, match="`remove_unused_columns`"):
        arguments(tmp_path, beta=0.2, remove_unused_columns=True)


def test_bf16_autocast_trains(tmp_path):
    train, _ = two_view_sets()
    args = arguments(tmp_path, beta=0.3, inter_mixup="mixup", bf16=True, max_steps=3)
    trainer = SynerMixTrainer(model=hf_resnet(), args=args, train_dataset=train)
    result = trainer.train()
    assert np.isfinite(result.training_loss)


def test_resuming_a_hugging_face_model_saved_under_legacy_weight_names_restores_every_weight(tmp_path):
    # transformers 5 saves ViT under its legacy names (encoder.layer.*.attention.attention.query...), which the
    # Trainer's own resume does not convert back (huggingface/transformers#43701).
    train, _ = two_view_sets()
    args = arguments(tmp_path, beta=0.3, max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=8)
    uninterrupted = SynerMixTrainer(model=vit(), args=args, train_dataset=train)
    uninterrupted.train()
    expected = {name: tensor.clone() for name, tensor in uninterrupted.model.state_dict().items()}
    resumed = SynerMixTrainer(model=vit(seed=9), args=args, train_dataset=train)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], msg=name)


def test_torch_compile_trains_exactly_like_eager_with_the_synermix_hooks(tmp_path):
    """`--torch_compile` with intra-class mixup and Manifold MixUp (hooks on the head and on the mixing points).

    The aot_eager backend runs Dynamo and AOTAutograd, where hooks are traced, without Inductor's C++ code generation,
    which takes minutes on a 2-core CPU; the losses must then equal eager mode's.
    """
    train, _ = two_view_sets()

    def tiny_resnet():
        torch.manual_seed(0)
        return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)

    losses = {}
    for compiled in (False, True):
        compile_args = dict(torch_compile=True, torch_compile_backend="aot_eager") if compiled else {}
        args = arguments(tmp_path / str(compiled), beta=0.5, inter_mixup="manifold_mixup", max_steps=4, **compile_args)
        trainer = SynerMixTrainer(model=tiny_resnet(), args=args, train_dataset=train)
        trainer.train()
        losses[compiled] = [(e["loss_intra"], e["loss_inter"]) for e in trainer.state.log_history if "loss" in e]
    assert len(losses[True]) == 4
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_a_collator_that_drops_the_original_view_is_named_in_the_error(tmp_path):
    # Hugging Face's example script's collate_fn stacks pixel_values and labels only.
    def collate_fn(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["labels"] for e in examples])}

    batch = tensor_batch()
    dataset = [{name: batch[name][i] for name in ("pixel_values", "original_pixel_values", "labels")}
               for i in range(len(batch["labels"]))]
    model = resnet()
    trainer = SynerMixTrainer(model=model, args=arguments(tmp_path, beta=0.1), train_dataset=dataset,
                              data_collator=collate_fn)
    with pytest.raises(ValueError, match=r"The training set has it: the data collator \(.*collate_fn\) dropped it"):
        trainer.compute_loss(model.train(), collate_fn(dataset))
