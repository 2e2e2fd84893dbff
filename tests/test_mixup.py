"""The mixing math, checked against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog

from synermix_hf import (
    SynerMixTrainer,
    SynerMixTrainingArguments,
    cutmix_batch,
    cutmix_box,
    intra_class_loss,
    intra_class_mixup_all_classes,
    mixup_batch,
    mixup_cross_entropy,
    sample_mixup_lambda,
)
from synermix_hf.cli.methods import describe_method
from synermix_hf.mixup import INTER_MIXUPS


def reference_intra_mixup(features, labels, weights):
    """The reference code's per-class loop, fed with the same batch-order weight draw."""
    rows, classes = [], []
    for c in sorted(set(labels.tolist())):
        mask = labels == c
        w = weights[mask] / weights[mask].sum()
        rows.append((features[mask] * w.view(-1, *[1] * (features.dim() - 1))).sum(0))
        classes.append(c)
    return torch.stack(rows), torch.tensor(classes)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def intra_mixup_of_present_classes(features, labels, generator):
    """The trainer's `intra_class_mixup_all_classes`, its rows of the classes present, with those classes."""
    synthesized, present = intra_class_mixup_all_classes(features, labels, int(labels.max()) + 1, generator=generator)
    classes = present.nonzero().flatten()
    return synthesized[classes], classes


@pytest.fixture
def batch():
    features = torch.randn(12, 5, generator=seeded(1))
    labels = torch.tensor([3, 0, 3, 1, 1, 3, 0, 7, 1, 0, 3, 1])
    return features, labels


def test_intra_matches_reference_loop_on_same_draw(batch):
    features, labels = batch
    synthesized, classes = intra_mixup_of_present_classes(features, labels, generator=seeded(5))
    weights = torch.rand(len(labels), generator=seeded(5))
    expected, expected_classes = reference_intra_mixup(features, labels, weights)
    assert classes.tolist() == expected_classes.tolist() == [0, 1, 3, 7]
    torch.testing.assert_close(synthesized, expected)


def test_intra_seeded_generator_reproduces_and_unseeded_varies(batch):
    features, labels = batch
    first, _ = intra_mixup_of_present_classes(features, labels, generator=seeded(9))
    again, _ = intra_mixup_of_present_classes(features, labels, generator=seeded(9))
    other, _ = intra_mixup_of_present_classes(features, labels, generator=seeded(10))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def in_convex_hull(members: torch.Tensor, target: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Feasibility LP: weights >= 0 summing to 1 that reproduce `target` up to fp32 rounding."""
    points, point = members.double().numpy(), target.double().numpy()
    result = linprog(
        np.zeros(len(points)),
        A_ub=np.vstack([points.T, -points.T]),
        b_ub=np.concatenate([point + tolerance, -point + tolerance]),
        A_eq=np.ones((1, len(points))),
        b_eq=[1.0],
        bounds=(0, None),
        method="highs",
    )
    return result.status == 0


def test_intra_rows_lie_in_their_class_convex_hull(batch):
    features, labels = batch
    synthesized, classes = intra_mixup_of_present_classes(features, labels, generator=seeded(3))
    for row, c in zip(synthesized, classes):
        assert in_convex_hull(features[labels == c], row), f"class {int(c)} row is outside its convex hull"
    assert not in_convex_hull(features[labels == 0], features[labels == 0].mean(0) + 5.0)


def test_intra_single_member_class_returns_its_own_row(batch):
    features, labels = batch
    synthesized, classes = intra_mixup_of_present_classes(features, labels, generator=seeded(0))
    only_seven = (labels == 7).nonzero().item()
    torch.testing.assert_close(synthesized[classes.tolist().index(7)], features[only_seven])


def test_intra_gradient_reaches_every_row_with_its_normalized_weight(batch):
    features, labels = batch
    features = features.clone().requires_grad_(True)
    synthesized, _ = intra_mixup_of_present_classes(features, labels, generator=seeded(2))
    synthesized.sum().backward()
    weights = torch.rand(len(labels), generator=seeded(2))
    totals = {c: weights[labels == c].sum() for c in set(labels.tolist())}
    expected = torch.stack([weights[i] / totals[int(labels[i])] for i in range(len(labels))])
    assert (features.grad.abs().sum(1) > 0).all()
    torch.testing.assert_close(features.grad, expected.view(-1, 1).expand_as(features))


def test_intra_accepts_any_feature_shape():
    features = torch.randn(6, 3, 4, 2, generator=seeded(4))
    labels = torch.tensor([1, 1, 0, 2, 0, 2])
    synthesized, classes = intra_mixup_of_present_classes(features, labels, generator=seeded(8))
    expected, _ = reference_intra_mixup(features, labels, torch.rand(6, generator=seeded(8)))
    assert synthesized.shape == (3, 3, 4, 2)
    torch.testing.assert_close(synthesized, expected)


def test_intra_rows_of_absent_classes_are_zero(batch):
    features, labels = batch
    dense, present = intra_class_mixup_all_classes(features, labels, num_classes=9, generator=seeded(6))
    expected, classes = reference_intra_mixup(features, labels, torch.rand(len(labels), generator=seeded(6)))
    assert present.nonzero().flatten().tolist() == classes.tolist()
    torch.testing.assert_close(dense[classes], expected)
    assert torch.count_nonzero(dense[~present]) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_intra_half_precision_is_close_to_fp32_and_finite_at_large_magnitudes(dtype):
    labels = torch.arange(256) % 3
    features = torch.rand(256, 64, generator=seeded(11)) * 60000.0  # near fp16's max
    half, _ = intra_mixup_of_present_classes(features.to(dtype), labels, generator=seeded(12))
    full, _ = intra_mixup_of_present_classes(features.to(dtype).float(), labels, generator=seeded(12))
    assert half.dtype == dtype
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full, rtol=1e-2, atol=0.0)


def test_intra_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="features must be"):
        intra_class_mixup_all_classes(torch.randn(4, 2), torch.tensor([0, 1, 0]), 2)


def test_intra_loss_is_mean_over_present_classes_only():
    logits = torch.randn(4, 4, generator=seeded(13))
    classes = torch.arange(4)
    present = torch.tensor([True, False, True, True])
    expected = F.cross_entropy(logits[present], classes[present])
    torch.testing.assert_close(intra_class_loss(logits, classes, present), expected)
    smoothed = F.cross_entropy(logits[present], classes[present], label_smoothing=0.2)
    torch.testing.assert_close(intra_class_loss(logits, classes, present, label_smoothing=0.2), smoothed)


def test_mixup_lambda_is_reproducible_and_beta_distributed():
    draws = [sample_mixup_lambda(1.0, np.random.default_rng(i)) for i in range(4000)]
    assert sample_mixup_lambda(0.4, np.random.default_rng(3)) == sample_mixup_lambda(0.4, np.random.default_rng(3))
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert abs(np.mean(draws) - 0.5) < 0.02 and abs(np.var(draws) - 1 / 12) < 0.01  # Beta(1,1) = Uniform
    with pytest.raises(ValueError, match="alpha"):
        sample_mixup_lambda(0.0)


def test_mixup_batch_mixes_with_the_permuted_batch():
    x = torch.randn(5, 3, 2, 2, generator=seeded(14))
    permutation = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(mixup_batch(x, 0.3, permutation), 0.3 * x + 0.7 * x[permutation])
    torch.testing.assert_close(mixup_batch(x, 1.0, permutation), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixup_batch_is_the_references_expression_bit_for_bit_with_its_gradient(dtype):
    # The reference mixes with `lam * x + (1 - lam) * x[index]`: the same bits, the same gradient, `x` unchanged.
    x = torch.randn(16, 3, 8, 8, generator=seeded(16)).to(dtype).requires_grad_()
    permutation = torch.randperm(16, generator=seeded(17))
    lam = 0.6180339887
    before = x.detach().clone()
    expected = lam * x + (1 - lam) * x[permutation]
    mixed = mixup_batch(x, lam, permutation)
    assert torch.equal(mixed, expected)
    assert torch.equal(x.detach(), before)
    weights = torch.randn(x.shape, generator=seeded(18)).to(dtype)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    (grad,) = torch.autograd.grad((mixed * weights).sum(), x)
    assert torch.equal(grad, expected_grad)


def test_mixup_loss_with_lambda_one_equals_plain_loss_and_mixes_otherwise():
    logits = torch.randn(6, 4, generator=seeded(15))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    permutation = torch.tensor([1, 0, 3, 2, 5, 4])
    torch.testing.assert_close(mixup_cross_entropy(logits, labels, permutation, 1.0), F.cross_entropy(logits, labels))
    expected = 0.25 * F.cross_entropy(logits, labels, label_smoothing=0.1) + 0.75 * F.cross_entropy(
        logits, labels[permutation], label_smoothing=0.1
    )
    torch.testing.assert_close(mixup_cross_entropy(logits, labels, permutation, 0.25, label_smoothing=0.1), expected)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.75, 1.0])
def test_cutmix_box_area_is_about_one_minus_lambda_and_inside_the_image(lam):
    areas = []
    for seed in range(200):
        top, bottom, left, right = cutmix_box(32, 32, lam, np.random.default_rng(seed))
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
        areas.append((bottom - top) * (right - left) / 1024)
    # Unclipped boxes have the requested area (up to rounding); clipping only makes them smaller.
    assert max(areas) <= (1 - lam) + 0.07
    assert np.median(areas) > (1 - lam) * 0.4 - 1e-9


def test_cutmix_corrected_lambda_is_the_fraction_of_pixels_kept():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()
    permutation = torch.tensor([1, 2, 3, 0])
    for seed in range(20):
        mixed, lam = cutmix_batch(x, 0.6, permutation, np.random.default_rng(seed))
        for i in range(4):
            kept = (mixed[i] == i).float().mean().item()
            pasted = (mixed[i] == int(permutation[i])).float().mean().item()
            assert kept == pytest.approx(lam)
            assert kept + pasted == pytest.approx(1.0)


def test_padding_rows_marked_invalid_leave_the_intra_class_mixup_unchanged():
    # Batches of several processes are gathered padded to one size: the valid rows must mix exactly as alone.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(7, 5, generator=generator)
    labels = torch.tensor([0, 2, 2, 0, 1, 1, 2])
    alone, present_alone = intra_class_mixup_all_classes(features, labels, 4, torch.Generator().manual_seed(3))
    order = [0, 1, 2, None, None, 3, 4, 5, 6, None]  # two shards of 3 and 4 rows, each padded to 5
    padded = torch.stack([features[i] if i is not None else torch.full((5,), 9.0) for i in order])
    padded_labels = torch.tensor([labels[i] if i is not None else 0 for i in order])
    valid = torch.tensor([i is not None for i in order])
    mixed, present = intra_class_mixup_all_classes(padded, padded_labels, 4, torch.Generator().manual_seed(3), valid)
    torch.testing.assert_close(mixed, alone)
    assert present.tolist() == present_alone.tolist() == [True, True, True, False]


@pytest.mark.parametrize("name", list(INTER_MIXUPS))
def test_every_inter_mixup_of_the_table_is_accepted_labelled_and_trains_a_step(tmp_path, name):
    """A new variant is one entry of `INTER_MIXUPS`: this walks the table, so it checks the new entry too."""
    from test_trainer import arguments, resnet, tensor_batch  # the tiny model and batch of the trainer's tests

    entry = INTER_MIXUPS[name]
    assert entry.name == name and entry.label
    assert SynerMixTrainingArguments(output_dir=str(tmp_path / "a"), report_to=[], inter_mixup=name.upper()
                                     ).inter_mixup == name  # fmt: skip
    for beta in (0.0, 0.1):
        sentence = describe_method(beta, name, 1.0)
        assert (entry.label if entry.mixes_batch else "cross-entropy of the augmented view") in sentence, sentence

    model = resnet()
    trainer = SynerMixTrainer(model=model, args=arguments(tmp_path, beta=0.1, inter_mixup=name))
    assert (trainer.adapter.mixing_points != ("input",)) == entry.needs_mixing_points  # resnet: input, layer2, layer3
    model.train()
    loss = trainer.compute_loss(model, tensor_batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()

