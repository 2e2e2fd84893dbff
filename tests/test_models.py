"""The paper's torchvision models as Hugging Face models: built, found by the adapter, saved and reloaded."""

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from synermix_hf.testing import tiny_images
from synermix_hf.adapters import ModelAdapter
from synermix_hf.models import (
    MODEL_NAMES,
    TorchvisionForImageClassification,
    build_torchvision_classifier,
    normalize_model_name,
    uses_cifar_stem,
)
from synermix_hf.data.transforms import TransformSpec, build_transforms, image_processor_for

HEADS = {"resnet18": "network.fc", "resnet50": "network.fc", "mobilenet": "network.classifier.3",
         "tiny-swin": "network.head"}


def test_names_follow_the_reference_and_accept_its_readme_spelling():
    assert MODEL_NAMES == ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet", "tiny-swin")
    assert normalize_model_name("resnet-18") == "resnet18"  # the authors' README writes `-mn resnet-18`
    assert normalize_model_name("Swin_T") == "tiny-swin"
    valid = "resnet18, resnet34, resnet50, resnet101, mobilenet, tiny-swin"
    with pytest.raises(ValueError, match=f"{valid}. Did you mean 'resnet18'"):
        normalize_model_name("resnet19")


def test_cifar_stem_only_for_resnets_on_small_images():
    assert uses_cifar_stem("resnet18", 32) and uses_cifar_stem("resnet50", 84)
    assert not uses_cifar_stem("resnet18", 224) and not uses_cifar_stem("mobilenet", 32)
    small = build_torchvision_classifier("resnet18", 10, image_size=32)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    large = build_torchvision_classifier("resnet18", 10, image_size=224)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", list(HEADS))
def test_wrapped_models_classify_and_expose_head_and_mixing_points(name):
    model = TorchvisionForImageClassification.from_architecture(name, {0: "a", 1: "b", 2: "c"}, image_size=16)
    out = model(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0
    adapter = ModelAdapter.from_model(model)
    assert adapter.head_name == HEADS[name] and adapter.num_classes == 3
    assert adapter.mixing_points[0] == "input" and all(p.startswith("network.") for p in adapter.mixing_points[1:])


def test_saved_model_reloads_through_auto_classes_and_pipeline_with_the_same_predictions(tmp_path):
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        pipeline,
    )

    labels = {0: "apple", 1: "bus", 2: "cat"}
    spec = TransformSpec("cifar", 16)
    torch.manual_seed(0)
    model = TorchvisionForImageClassification.from_architecture("resnet18", labels, image_size=16).eval()
    images = tiny_images([0, 1, 2, 0, 1, 2], size=16, seed=7)
    _, evaluation = build_transforms(spec)
    pixels = torch.stack([evaluation(image) for image in images])
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    model.save_pretrained(tmp_path)
    image_processor_for(spec).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "models.py").is_file()

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, TorchvisionForImageClassification) and reloaded.config.id2label == labels
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=pixels).logits, before, atol=1e-5)
    assert torch.allclose(AutoImageProcessor.from_pretrained(tmp_path)(images, return_tensors="pt")["pixel_values"],
                          pixels, atol=1e-5)

    classify = pipeline("image-classification", model=str(tmp_path), device="cpu")
    predicted = [result[0]["label"] for result in classify(images)]
    assert predicted == [labels[i] for i in before.argmax(-1).tolist()]


def test_saved_directory_carries_its_code_for_trust_remote_code(tmp_path):
    """Without `import synermix_hf`, from_pretrained(trust_remote_code=True) imports the models.py saved with it."""
    import json

    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model = TorchvisionForImageClassification.from_architecture("mobilenet", {0: "a", 1: "b"}, image_size=16).eval()
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "models.TorchvisionForImageClassification"
    remote_class = get_class_from_dynamic_module(auto_map["AutoModelForImageClassification"], str(tmp_path))
    assert remote_class.__module__.startswith("transformers_modules")  # the copied file, not this package
    remote = remote_class.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(remote(pixel_values=x).logits, model(pixel_values=x).logits, atol=1e-5)


def test_pretrained_weights_that_cannot_be_downloaded_raise_a_clear_error(monkeypatch):
    import torchvision.models._api as api

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", unreachable)
    with pytest.raises(OSError, match=r"Could not download the ImageNet weights of resnet18 .*without `pretrained`"):
        build_torchvision_classifier("resnet18", 10, pretrained=True)


def test_cifar_stem_keeps_pytorchs_default_conv_init_as_the_reference():
    # The reference assigns a new nn.Conv2d(3, 64, 3, 1, 1, bias=False) after building the model, so the stem keeps
    # PyTorch's default init: Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 3*3*3, std = 1/sqrt(3 * 27).
    from scipy import stats

    torch.manual_seed(0)
    weights = torch.cat([build_torchvision_classifier("resnet18", 10, image_size=32).conv1.weight.detach().flatten()
                         for _ in range(3)]).numpy()
    bound = 1 / 27**0.5
    assert weights.min() >= -bound and weights.max() <= bound
    assert weights.std() == pytest.approx(bound / 3**0.5, rel=0.03)
    assert stats.kstest(weights, stats.uniform(loc=-bound, scale=2 * bound).cdf).pvalue > 1e-3
    reference = nn.Conv2d(3, 64, 3, 1, 1, bias=False).weight.detach().flatten().numpy()
    assert stats.ks_2samp(weights, reference).pvalue > 1e-3
    # torchvision's own kaiming-normal (fan_out) init would have std sqrt(2 / 576) = 0.059 and fail the checks above.
    kaiming = nn.init.kaiming_normal_(torch.empty(64, 3, 3, 3), mode="fan_out", nonlinearity="relu").flatten().numpy()
    assert stats.ks_2samp(kaiming, reference).pvalue < 1e-6


@pytest.mark.parametrize(
    "in_size, kernel, stride, padding",
    [(1, 3, 1, 1), (2, 3, 2, 1), (1, 1, 1, 0), (2, 1, 2, 0), (4, 3, 1, 1), (3, 3, 2, 1)],
)
def test_single_pixel_convolution_equals_the_convolution_with_its_gradients(in_size, kernel, stride, padding):
    from synermix_hf.models import SinglePixelConv2d

    torch.manual_seed(0)
    conv = SinglePixelConv2d(6, 5, kernel, stride=stride, padding=padding, bias=True)
    x = torch.randn(4, 6, in_size, in_size, requires_grad=True)
    out = conv(x)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (x, conv.weight, conv.bias))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, conv.weight, conv.bias))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_built_networks_use_the_single_pixel_convolution_with_torchvision_state_dicts():
    from synermix_hf.models import SinglePixelConv2d, build_torchvision_classifier

    network = build_torchvision_classifier("resnet18", 10, image_size=8)
    convolutions = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(type(m) is SinglePixelConv2d for m in convolutions)
    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.maxpool = torch.nn.Identity()
    reference.load_state_dict(network.state_dict())
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(network.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)
