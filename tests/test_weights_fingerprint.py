"""The same seeds give the same weights: a few short runs of the script against the weights recorded before the
package was reorganised (tests/data/weights_fingerprint.json).

A fingerprint is, per weight tensor, its sum and its sum of squares after training. A change of behaviour (another
augmentation draw, another batch, another mixing point) moves them by far more than the tolerance; a change of CPU
(AVX2 / AVX-512 kernels) does not. To record new fingerprints after an intended change of behaviour:

    python tests/test_weights_fingerprint.py --write
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synermix_hf.cli.train import main
from synermix_hf.testing import build_hub_copies

FINGERPRINTS = Path(__file__).resolve().parent / "data" / "weights_fingerprint.json"
COMMON = ["--max_steps", "3", "--dataloader_num_workers", "0", "--save_strategy", "no", "--disable_tqdm", "true",
          "-seed", "11", "--do_train"]
RUNS = {
    # the square recipe on the device data path: decoded once, both views made batched by the trainer
    "cifar100 device, SynerMix + Manifold MixUp": ["-ds", "cifar100", "--image_size", "8", "-bs", "8", "-beta", "0.3",
                                                    "-itrm", "Manifold_Mixup"],
    # the RandomResizedCrop recipe on the per-image path
    "food101 per-image, SynerMix + MixUp": ["-ds", "food101", "--image_size", "16", "-bs", "8", "-beta", "0.3",
                                           "-itrm", "Mixup", "--views_on", "loader"],
    # the RandomResizedCrop recipe on the device path: stored once at the evaluation resize, crops made by the trainer
    "food101 device, SynerMix + MixUp": ["-ds", "food101", "--image_size", "16", "-bs", "8", "-beta", "0.3",
                                        "-itrm", "Mixup", "--views_on", "device"],
    # CutMix, without the intra-class term
    "cifar100 per-image, CutMix": ["-ds", "cifar100", "--image_size", "8", "-bs", "8", "-itrm", "cutmix",
                                   "--views_on", "loader"],
}


def fingerprint(weights: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {name: [float(t.double().sum()), float(t.double().square().sum())]
            for name, t in sorted(weights.items()) if t.is_floating_point()}


def train_and_fingerprint(name: str, copies: dict, out: Path) -> dict[str, list[float]]:
    argv = RUNS[name]
    dataset = argv[argv.index("-ds") + 1]
    assert main([*argv, "--dataset_path", str(copies[dataset]), *COMMON, "--output_dir", str(out)]) == 0
    return fingerprint(load_file(out / "model.safetensors"))


@pytest.mark.parametrize("name", list(RUNS))
def test_the_same_seeds_give_the_weights_recorded(name, hub_copies, tmp_path):
    recorded = json.loads(FINGERPRINTS.read_text())[name]
    actual = train_and_fingerprint(name, hub_copies, tmp_path / "out")
    assert actual.keys() == recorded.keys()
    # Kernels and thread counts move the sums of squares by up to 2e-4 (relative) after three steps; another seed moves
    # them by about 1. A sum can be near zero, so it is held to a fraction of the tensor's norm instead.
    for tensor, (total, squares) in recorded.items():
        assert actual[tensor][1] == pytest.approx(squares, rel=2e-3, abs=1e-9), tensor
        assert actual[tensor][0] == pytest.approx(total, abs=1e-2 * squares**0.5 + 1e-9), tensor


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        copies = build_hub_copies(Path(folder) / "copies")
        recorded = {name: train_and_fingerprint(name, copies, Path(folder) / str(i)) for i, name in enumerate(RUNS)}
    FINGERPRINTS.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {FINGERPRINTS}")
