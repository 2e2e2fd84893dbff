"""Finding the head and the Manifold MixUp points, and reaching them with hooks."""

import pytest
import torch
import torchvision
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    ViTConfig,
    ViTForImageClassification,
)
from transformers.models.vit.modeling_vit import ViTLayer

from synermix_hf import INPUT_POINT, ModelAdapter, find_head, find_mixing_points, mixup_batch


def tiny_hf_resnet(num_labels=3):
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_labels=num_labels)
    return ResNetForImageClassification(config)


def tiny_vit(num_labels=3):
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=16, num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return ViTForImageClassification(config)


def vit_layer_names(model):
    """The names of ViT's encoder layers, read from the model (transformers releases name them differently)."""
    return [name for name, module in model.named_modules() if isinstance(module, ViTLayer)]


def resnet_features(model, x):
    """Independent forward of torchvision's ResNet up to the penultimate feature."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def captured_head_input(adapter, model, x):
    seen = []

    def keep(features):
        seen.append(features)
        return features

    with adapter.head_input_replaced(keep):
        adapter.logits(model, x)
    return seen[0]


@pytest.mark.parametrize(
    "build, head, points",
    [
        (lambda: torchvision.models.resnet18(num_classes=3), "fc", (INPUT_POINT, "layer2", "layer3")),
        (
            lambda: torchvision.models.mobilenet_v3_large(num_classes=3),
            "classifier.3",
            (INPUT_POINT, "features.0", "features.1", "features.2"),
        ),
        (
            lambda: torchvision.models.swin_t(num_classes=3),
            "head",
            (INPUT_POINT, "features.0", "features.1", "features.3"),
        ),
        (tiny_hf_resnet, "classifier.1", (INPUT_POINT, "resnet.encoder.stages.1", "resnet.encoder.stages.2")),
        (tiny_vit, "classifier", lambda model: (INPUT_POINT, *vit_layer_names(model)[1:3])),
        (
            lambda: ConvNextForImageClassification(
                ConvNextConfig(hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_labels=3)
            ),
            "classifier",
            (INPUT_POINT, "convnext.encoder.stages.1", "convnext.encoder.stages.2"),
        ),
        (
            lambda: AutoModelForImageClassification.from_config(
                SwinConfig(
                    image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 1], num_labels=3
                )
            ),
            "classifier",
            (INPUT_POINT, "swin.encoder.layers.1", "swin.encoder.layers.2"),
        ),
    ],
    ids=["resnet18", "mobilenet_v3", "swin_t", "hf-resnet", "hf-vit", "hf-convnext", "auto-swin"],
)
def test_detects_head_and_mixing_points(build, head, points):
    model = build()
    assert find_head(model) == head
    assert find_mixing_points(model) == (points(model) if callable(points) else points)
    assert ModelAdapter.from_model(model).num_classes == 3


def test_head_input_is_the_penultimate_feature_of_resnet():
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(3, 3, 32, 32)
    adapter = ModelAdapter.from_model(model)
    torch.testing.assert_close(captured_head_input(adapter, model, x), resnet_features(model, x))


def test_head_input_is_the_1280d_vector_of_mobilenet_v3():
    model = torchvision.models.mobilenet_v3_large(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model.classifier[:3](torch.flatten(model.avgpool(model.features(x)), 1))
    features = captured_head_input(ModelAdapter.from_model(model), model, x)
    assert features.shape == (2, 1280)
    torch.testing.assert_close(features, expected)


def test_replacing_the_head_input_classifies_the_replacement_rows():
    model = tiny_hf_resnet(num_labels=4).eval()
    adapter = ModelAdapter.from_model(model)
    replacement = torch.randn(5, 16)
    with adapter.head_input_replaced(lambda features: replacement):
        logits = adapter.logits(model, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(logits, model.classifier[1](replacement))
    # The hook is gone after the block.
    assert adapter.logits(model, torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_manifold_mixup_mixes_exactly_at_the_chosen_point_of_a_resnet():
    model = torchvision.models.resnet18(num_classes=4).eval()
    adapter = ModelAdapter.from_model(model)
    x = torch.randn(4, 3, 32, 32)
    permutation = torch.tensor([2, 0, 3, 1])
    with adapter.mixing_at("layer3", lambda hidden: mixup_batch(hidden, 0.3, permutation)):
        logits = adapter.logits(model, x)
    # By hand: run to the end of layer2, mix, run the rest.
    hidden = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
    hidden = 0.3 * hidden + 0.7 * hidden[permutation]
    expected = model.fc(torch.flatten(model.avgpool(model.layer4(model.layer3(hidden))), 1))
    torch.testing.assert_close(logits, expected)
    # Mixing at another point gives another result, and the hook is removed after the block.
    with adapter.mixing_at("layer2", lambda hidden: mixup_batch(hidden, 0.3, permutation)):
        assert not torch.allclose(adapter.logits(model, x), expected)
    torch.testing.assert_close(adapter.logits(model, x), model(x))


def test_manifold_mixup_hook_handles_hf_layers_called_with_keywords():
    model = tiny_vit().eval()
    adapter = ModelAdapter.from_model(model)
    x = torch.randn(2, 3, 16, 16)
    permutation = torch.tensor([1, 0])
    with adapter.mixing_at(vit_layer_names(model)[1], lambda hidden: mixup_batch(hidden, 0.5, permutation)):
        mixed = adapter.logits(model, x)
    # With lambda 0.5 and a swap, both rows see the same hidden state from there on.
    torch.testing.assert_close(mixed[0], mixed[1])
    assert not torch.allclose(adapter.logits(model, x)[0], adapter.logits(model, x)[1])


def test_finds_the_layout_of_a_wrapped_torchvision_model():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=3)

        def forward(self, x):
            return self.net(x)

    wrapper = Wrapper()
    assert find_head(wrapper) == "net.fc"
    assert find_mixing_points(wrapper) == (INPUT_POINT, "net.layer2", "net.layer3")


def test_overrides_win_and_bad_names_say_which_argument_to_set():
    model = torchvision.models.resnet18(num_classes=3)
    adapter = ModelAdapter.from_model(model, head_module="fc", manifold_mixup_modules=["layer4"])
    assert adapter.head_name == "fc" and adapter.mixing_points == ("layer4",)
    with pytest.raises(ValueError, match="`head_module` 'fcc'"):
        find_head(model, "fcc")
    with pytest.raises(ValueError, match="manifold_mixup_modules"):
        find_mixing_points(model, ["layer9"])


def test_a_list_of_stages_wins_over_a_stem_that_comes_first():
    """timm's ConvNeXt, NFNet, ... start with a `stem` Sequential (a convolution, a norm): mixing between those two is
    not the output of a stage."""

    class StemThenStages(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.BatchNorm2d(4))
            self.stages = nn.Sequential(*(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.stages(self.stem(x)).mean((2, 3)))

    assert find_mixing_points(StemThenStages()) == (INPUT_POINT, "stages.1", "stages.2")


def test_undetectable_models_get_errors_naming_the_argument():
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="head_module"):
        find_head(no_linear)

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    assert find_head(Flat()) == "fc"
    with pytest.raises(ValueError, match="manifold_mixup_modules"):
        find_mixing_points(Flat())


def test_a_compiled_model_applies_the_replacement_armed_in_each_call():
    """torch.compile does not guard on module hooks, so hooks added per call would be ignored once compiled."""
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)
    model = model.eval()
    adapter = ModelAdapter.from_model(model)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(4, 3, 16, 16)
    permutation = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(compiled(x), model(x))  # compiled first without any replacement
    for point, lam in (("layer3", 0.3), ("layer2", 0.6), ("layer3", 0.8)):
        with adapter.mixing_at(point, lambda hidden: mixup_batch(hidden, lam, permutation)):
            expected = adapter.logits(model, x)
        with adapter.mixing_at(point, lambda hidden: mixup_batch(hidden, lam, permutation)):
            torch.testing.assert_close(adapter.logits(compiled, x), expected)
        assert not torch.allclose(expected, model(x))
    replacement = torch.randn(3, 512)
    with adapter.head_input_replaced(lambda features: replacement):
        torch.testing.assert_close(adapter.logits(compiled, x), model.fc(replacement))
    torch.testing.assert_close(compiled(x), model(x))  # nothing armed after the blocks


def test_a_model_without_manifold_mixup_points_is_told_its_top_level_blocks():
    from torch import nn

    from synermix_hf.adapters import find_mixing_points

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3))  # one block only: no list of stages
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

    with pytest.raises(ValueError, match=r"its top-level blocks are \['encoder'\]"):
        find_mixing_points(Plain())
