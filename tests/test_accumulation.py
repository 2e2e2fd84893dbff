"""One update of the reference however the step is split: k accumulation steps (and processes, tests/
test_distributed.py) give the update of the one balanced batch the sampler drew for the step, computed by hand."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from transformers import ViTConfig, ViTForImageClassification

from synermix_hf import ClassBalancedBatchSampler, SynerMixTrainer, SynerMixTrainingArguments, step_generators

CLASSES = 6
SEED = 5


def vit(seed=0):
    """A ViT without BatchNorm and without dropout: the update is a function of the step's batch alone."""
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        num_labels=CLASSES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return ViTForImageClassification(config)


def examples(n, seed=0):
    """`n` examples of `CLASSES` classes with fixed views (no augmentation): the loss is a function of the rows."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return [{"pixel_values": torch.randn(3, 8, 8, generator=generator),
             "original_pixel_values": torch.randn(3, 8, 8, generator=generator), "labels": int(label)}
            for label in labels]  # fmt: skip


def arguments(tmp_path, **kwargs):
    values = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no", seed=SEED,
                  learning_rate=0.5, lr_scheduler_type="constant", optim="sgd", max_grad_norm=0.0, disable_tqdm=True,
                  balanced_sampler=True, dataloader_num_workers=0)  # fmt: skip
    values.update(kwargs)
    return SynerMixTrainingArguments(**values)


def hand_step_loss(model, rows, step, beta):
    """The reference's loss on one balanced batch: the intra-class term over the batch's classes with the weights one
    process draws for the step (one Uniform(0, 1) per row, in batch order, normalized per class), and the mean
    cross-entropy of the augmented view."""
    labels = torch.tensor([row["labels"] for row in rows])
    original = torch.stack([row["original_pixel_values"] for row in rows])
    augmented = torch.stack([row["pixel_values"] for row in rows])
    weights = torch.rand(len(rows), generator=step_generators(SEED, step, 0, 0)[0])
    features = model.vit(original).last_hidden_state[:, 0]
    synthesized, classes = [], []
    for c in sorted(set(labels.tolist())):
        members = labels == c
        synthesized.append((features[members] * (weights[members] / weights[members].sum())[:, None]).sum(0))
        classes.append(c)
    intra = F.cross_entropy(model.classifier(torch.stack(synthesized)), torch.tensor(classes))
    inter = F.cross_entropy(model(augmented).logits, labels)
    return beta * intra + (1 - beta) * inter


def hand_updates(data, steps, batch, beta, lr=0.5, batches=None):
    """`steps` SGD updates of the reference: each on the balanced sampler's batch of `batch` for the step (or, with
    `batches`, on the batch `(epoch, number)` given for each step)."""
    model = vit()
    sampler = ClassBalancedBatchSampler([row["labels"] for row in data], batch_size=batch, seed=SEED)
    for step in range(steps):
        epoch, number = divmod(step, len(sampler)) if batches is None else batches[step]
        sampler.set_epoch(epoch)
        rows = [data[index] for index in list(sampler)[number]]
        gradients = torch.autograd.grad(hand_step_loss(model, rows, step, beta), list(model.parameters()))
        with torch.no_grad():
            for parameter, gradient in zip(model.parameters(), gradients, strict=True):
                parameter -= lr * gradient
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_accumulated_micro_batches_give_the_update_of_the_steps_one_balanced_batch(tmp_path, beta):
    # 40 examples, a step of 16: 2 steps an epoch, so the third update is the first of epoch 1. The balanced batches
    # hold partners (classes seen once get one more member), so they are longer than 16 and their classes are split
    # into two micro-batches of unequal sizes.
    data = examples(40)
    args = arguments(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=3, beta=beta)
    trainer = SynerMixTrainer(model=vit(), args=args, train_dataset=data)
    trainer.train()
    trained = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    expected = hand_updates(data, steps=3, batch=16, beta=beta)
    assert not torch.allclose(expected, torch.cat([p.flatten() for p in vit().parameters()]), atol=1e-3)
    torch.testing.assert_close(trained, expected, rtol=1e-5, atol=2e-6)


class RecordingTrainer(SynerMixTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen.setdefault(self.state.global_step, []).append(inputs["labels"].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_an_epoch_has_the_reference_samplers_updates_each_of_its_batch(tmp_path):
    # 30 examples, a step of 8 (4 a micro-batch, 2 accumulation steps): the reference's sampler cuts 3 batches of 8
    # (plus partners) and drops 6 examples; cutting micro-batches of 4 instead gave 4 updates, the last of 4 examples.
    data = examples(30, seed=1)
    args = arguments(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=1,
                     beta=0.5)
    trainer = RecordingTrainer(model=vit(), args=args, train_dataset=data)
    trainer.seen = {}
    trainer.train()
    sampler = ClassBalancedBatchSampler([row["labels"] for row in data], batch_size=8, seed=SEED)
    assert trainer.state.global_step == len(sampler) == 3
    for step, batch in enumerate(sampler):
        micro_batches = trainer.seen[step]
        assert len(micro_batches) == 2
        assert sorted(sum(micro_batches, [])) == sorted(data[i]["labels"] for i in batch)
        assert not set(micro_batches[0]) & set(micro_batches[1])  # whole classes in each micro-batch


def tiny_resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)


def test_at_beta_one_batch_norm_sees_the_augmented_view_as_in_the_reference(tmp_path):
    # The reference runs the augmented view's forward pass at beta 1 too (its loss weight is 0): after one step the
    # running statistics are those of beta 0.5 (the same two forward passes on the same weights, with the same draws),
    # and the step counts two batches.
    data = examples(16)
    buffers = {}
    for beta in (0.5, 1.0):
        args = arguments(tmp_path / str(beta), per_device_train_batch_size=8, max_steps=1, beta=beta,
                         inter_mixup="mixup")
        trainer = SynerMixTrainer(model=tiny_resnet(), args=args, train_dataset=data)
        trainer.train()
        buffers[beta] = {name: b.clone() for name, b in trainer.model.named_buffers()}
    assert buffers[1.0]["bn1.num_batches_tracked"].item() == 2
    for name, value in buffers[0.5].items():
        torch.testing.assert_close(buffers[1.0][name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("ignore_data_skip", [False, True])
def test_a_run_resumed_within_an_epoch_goes_on_with_the_steps_batches(tmp_path, ignore_data_skip):
    # Resumed after update 1 of epoch 0 (2 updates an epoch), the run trains the update an uninterrupted run trains.
    # With ignore_data_skip the Trainer starts the epoch's batches again from the first: the split follows them.
    data = examples(40)
    common = dict(per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=2, beta=0.5,
                  save_strategy="steps", save_steps=1)
    args = arguments(tmp_path, **common, ignore_data_skip=ignore_data_skip)
    SynerMixTrainer(model=vit(), args=args, train_dataset=data).train()
    resumed = SynerMixTrainer(model=vit(seed=1), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    weights = torch.cat([p.detach().flatten() for p in resumed.model.parameters()])
    batches = [(0, 0), (0, 0)] if ignore_data_skip else None  # epoch 0 again from its first batch
    expected = hand_updates(data, steps=2, batch=16, beta=0.5, batches=batches)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=2e-6)


def test_a_step_with_fewer_classes_than_micro_batches_trains_and_says_how(tmp_path, caplog):
    # Two classes cannot fill three micro-batches of whole classes: the step is cut in order instead, each micro-batch
    # mixing its own members of a class, and the run says so once.
    data = [dict(row, labels=row["labels"] % 2) for row in examples(24)]
    args = arguments(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=3, max_steps=2, beta=0.5)
    with caplog.at_level("WARNING", logger="synermix_hf.trainer"):
        SynerMixTrainer(model=vit(), args=args, train_dataset=data).train()
    warnings = [r.getMessage() for r in caplog.records if "fewer classes than the 3 micro-batches" in r.getMessage()]
    assert len(warnings) == 1 and "cut into consecutive micro-batches" in warnings[0]
