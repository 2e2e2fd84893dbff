"""Cohesion and separability (synermix_hf/metrics/feature_cohesion, feature_separability) against direct numpy
computations on constructed feature sets, and the penultimate-feature pass against a direct forward."""

import math

import numpy as np
import pytest
import torch

from synermix_hf.feature_metrics import collect_penultimate_features, feature_space_metrics
from synermix_hf.metrics import load_metric


@pytest.fixture(scope="module")
def cohesion():
    return load_metric("feature_cohesion")


@pytest.fixture(scope="module")
def separability():
    return load_metric("feature_separability")


def direct_cohesion(h, y):
    """(1/N) sum_i cos(h_i, mu_{y_i}), one example at a time; a class with one example counts 1."""
    h, y = np.asarray(h, dtype=np.float64), np.asarray(y)
    total = 0.0
    for i in range(len(y)):
        members = h[y == y[i]]
        if len(members) == 1:
            total += 1.0
            continue
        mu = members.mean(axis=0)
        denominator = np.linalg.norm(h[i]) * np.linalg.norm(mu)
        total += float(h[i] @ mu / denominator) if denominator > 0 else 0.0
    return total / len(y)


def direct_separability(h, y):
    """trace of the between-class over the within-class scatter matrix, built as matrices."""
    h, y = np.asarray(h, dtype=np.float64), np.asarray(y)
    mu = h.mean(axis=0)
    s_b = np.zeros((h.shape[1], h.shape[1]))
    s_w = np.zeros_like(s_b)
    for c in np.unique(y):
        members = h[y == c]
        mu_c = members.mean(axis=0)
        s_b += len(members) * np.outer(mu_c - mu, mu_c - mu)
        s_w += (members - mu_c).T @ (members - mu_c)
    return np.trace(s_b), np.trace(s_w)


def both(cohesion, separability, h, y):
    h = np.asarray(h, dtype=np.float32)
    return (cohesion.compute(features=h, references=y)["cohesion"],
            separability.compute(features=h, references=y)["separability"])


def test_constructed_set_with_known_values(cohesion, separability):
    # Two classes at x = -d and x = +d, each with members at y = +1 and -1: every member is at 45 degrees from its
    # centroid when d = 1 (cohesion 1/sqrt(2)); tr(S_B) = 4 d^2, tr(S_W) = 4, so separability = d^2.
    for d in (1.0, 3.0):
        h = [[d, 1.0], [d, -1.0], [-d, 1.0], [-d, -1.0]]
        y = [0, 0, 1, 1]
        c, s = both(cohesion, separability, h, y)
        assert c == pytest.approx(d / math.sqrt(d * d + 1), abs=1e-6)
        assert s == pytest.approx(d * d, rel=1e-6)
    # Perfectly collapsed classes: cohesion 1, separability infinite.
    c, s = both(cohesion, separability, [[1, 0], [1, 0], [0, 2], [0, 2]], [0, 0, 1, 1])
    assert c == pytest.approx(1.0) and s == math.inf


@pytest.mark.parametrize("seed", [0, 1])
def test_random_features_match_direct_computation(cohesion, separability, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, size=60)
    h = rng.normal(size=(60, 7)) + 2.0 * rng.normal(size=(5, 7))[y]
    c, s = both(cohesion, separability, h, y)
    between, within = direct_separability(h.astype(np.float32), y)
    assert c == pytest.approx(direct_cohesion(h.astype(np.float32), y), abs=1e-6)
    assert s == pytest.approx(between / within, rel=1e-6)
    # Scale-free: multiplying every feature by a constant changes neither.
    c2, s2 = both(cohesion, separability, 10.0 * h, y)
    assert (c2, s2) == (pytest.approx(c, abs=1e-6), pytest.approx(s, rel=1e-5))


def test_one_class(cohesion, separability):
    rng = np.random.default_rng(2)
    h = rng.normal(size=(12, 4)) + 3.0
    y = np.zeros(12, dtype=np.int64)
    c, s = both(cohesion, separability, h, y)
    assert c == pytest.approx(direct_cohesion(h.astype(np.float32), y), abs=1e-6)
    assert s == 0.0  # tr(S_B) = 0: nothing separated
    between, within = direct_separability(h, y)
    assert between == pytest.approx(0.0, abs=1e-9) and within > 0


def test_a_class_with_one_sample(cohesion, separability):
    rng = np.random.default_rng(3)
    h = rng.normal(size=(9, 3))
    h[8] = [5.0, -4.0, 2.0]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])  # class 2 has a single example
    c, s = both(cohesion, separability, h, y)
    assert c == pytest.approx(direct_cohesion(h.astype(np.float32), y), abs=1e-6)
    # Its cosine is 1 and counts as one of the N terms.
    without = direct_cohesion(h[:8].astype(np.float32), y[:8])
    assert c == pytest.approx((8 * without + 1.0) / 9, abs=1e-6)
    between, within = direct_separability(h.astype(np.float32), y)
    assert s == pytest.approx(between / within, rel=1e-6)
    # It adds nothing to the within-class scatter.
    assert within == pytest.approx(direct_separability(h[:8].astype(np.float32), y[:8])[1], rel=1e-6)


def test_other_degenerate_cases(cohesion, separability):
    # Every class has one example: cohesion 1, tr(S_W) = 0 < tr(S_B): infinite separability.
    assert both(cohesion, separability, [[1, 2], [3, -1], [0, 5]], [0, 1, 2]) == (1.0, math.inf)
    # All features identical: tr(S_B) = tr(S_W) = 0 gives separability 0.
    assert both(cohesion, separability, [[1, 1]] * 4, [0, 0, 1, 1]) == (pytest.approx(1.0), 0.0)
    # A zero vector in a class of two has cosine 0; the other member has cosine 1 with the centroid.
    c, _ = both(cohesion, separability, [[0, 0], [2, 0], [0, 1], [0, 3]], [0, 0, 1, 1])
    assert c == pytest.approx((0.0 + 1.0 + 1.0 + 1.0) / 4)
    # No examples: undefined.
    empty = np.zeros((0, 3), dtype=np.float32)
    assert math.isnan(cohesion.compute(features=empty, references=[])["cohesion"])
    assert math.isnan(separability.compute(features=empty, references=[])["separability"])


def test_batches_and_helper_agree_with_one_call(cohesion, separability):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=30)
    h = rng.normal(size=(30, 5)).astype(np.float32) + y[:, None]
    for start in range(0, 30, 8):
        cohesion.add_batch(features=h[start:start + 8], references=y[start:start + 8])
    batched = cohesion.compute()["cohesion"]
    helper = feature_space_metrics(h, y, prefix="eval_")
    assert set(helper) == {"eval_cohesion", "eval_separability"}
    assert batched == pytest.approx(helper["eval_cohesion"], abs=1e-9)
    assert helper["eval_separability"] == pytest.approx(
        separability.compute(features=h, references=y)["separability"], rel=1e-9)


def test_collected_features_are_the_head_input_in_eval_mode(tmp_path):
    import copy

    from synermix_hf.models import TorchvisionForImageClassification
    from synermix_hf.recipe import RecipeTrainingArguments
    from synermix_hf.trainer import SynerMixTrainer

    class Images(torch.utils.data.Dataset):
        def __init__(self):
            generator = torch.Generator().manual_seed(0)
            self.pixels = torch.randn(10, 3, 8, 8, generator=generator)
            self.labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            return {"pixel_values": self.pixels[index], "labels": int(self.labels[index])}

    torch.manual_seed(0)
    model = TorchvisionForImageClassification.from_architecture("resnet18", {0: "a", 1: "b", 2: "c"}, image_size=8)
    model.train()
    data = Images()
    args = RecipeTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, use_cpu=True,
                                   dataloader_num_workers=0, report_to="none", disable_tqdm=True)
    trainer = SynerMixTrainer(model=model, args=args, eval_dataset=data)
    features, labels = collect_penultimate_features(trainer)
    assert model.training  # the mode is restored
    reference = copy.deepcopy(model).eval()
    reference.network.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = reference.network(data.pixels)
    assert features.shape == (10, 512)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, data.labels.numpy())
