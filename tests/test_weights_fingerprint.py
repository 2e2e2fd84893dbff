"""The same seeds give the same weights: a few short runs of the script against the weights recorded before the
package was reorganised (tests/data/weights_fingerprint.json), and the exact device path against the per-image path.

A fingerprint is, per weight tensor, its sum and its sum of squares after training. A change of behaviour (another
augmentation draw, another batch, another mixing point) moves them by far more than the tolerance. The runs are made
in a child process on torch's and oneDNN's AVX2 kernels (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`):
AVX-512 kernels sum in another order, which moves a sum of squares by up to 2 % after three steps, so without them the
recording would hold on one kind of CPU only. To record new fingerprints after an intended change of behaviour:

    python tests/test_weights_fingerprint.py --write
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FINGERPRINTS = Path(__file__).resolve().parent / "data" / "weights_fingerprint.json"
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
COMMON = ["--max_steps", "3", "--dataloader_num_workers", "0", "--save_strategy", "no", "--disable_tqdm", "true",
          "-seed", "11", "--do_train"]
RUNS = {
    # the square recipe on the device data path: decoded once, both views made batched by the trainer
    "cifar100 device, SynerMix + Manifold MixUp": ["-ds", "cifar100", "--image_size", "8", "-bs", "8", "-beta", "0.3",
                                                    "-itrm", "Manifold_Mixup"],
    # the RandomResizedCrop recipe on the per-image path
    "food101 per-image, SynerMix + MixUp": ["-ds", "food101", "--image_size", "16", "-bs", "8", "-beta", "0.3",
                                           "-itrm", "Mixup", "--views_on", "loader"],
    # the RandomResizedCrop recipe on the device path: full resolution, both views made by the trainer with Pillow's
    # resampling, so the very pixels of the per-image path
    "food101 device, SynerMix + MixUp": ["-ds", "food101", "--image_size", "16", "-bs", "8", "-beta", "0.3",
                                        "-itrm", "Mixup", "--views_on", "device"],
    # CutMix, without the intra-class term
    "cifar100 per-image, CutMix": ["-ds", "cifar100", "--image_size", "8", "-bs", "8", "-itrm", "cutmix",
                                   "--views_on", "loader"],
}


def fingerprint(weights: dict) -> dict[str, list[float]]:
    return {name: [float(t.double().sum()), float(t.double().square().sum())]
            for name, t in sorted(weights.items()) if t.is_floating_point()}


def train_and_fingerprint(name: str, copies: dict, out: Path) -> dict[str, list[float]]:
    from safetensors.torch import load_file

    from synermix_hf.cli.train import main

    argv = RUNS[name]
    dataset = argv[argv.index("-ds") + 1]
    assert main([*argv, "--dataset_path", str(copies[dataset]), *COMMON, "--output_dir", str(out)]) == 0
    return fingerprint(load_file(out / "model.safetensors"))


def fingerprints_on_avx2(copies: dict, folder: Path) -> dict[str, dict[str, list[float]]]:
    """Every run's fingerprint, made by this file in a child process on the AVX2 kernels."""
    result = folder / "fingerprints.json"
    command = [sys.executable, __file__, "--child", json.dumps({k: str(v) for k, v in copies.items()}), str(folder),
               str(result)]
    done = subprocess.run(command, env={**os.environ, **AVX2, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def fingerprints(hub_copies, tmp_path_factory):
    return fingerprints_on_avx2(hub_copies, tmp_path_factory.mktemp("fingerprints"))


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    # Thread counts move the sums of squares by up to 2e-4 (relative) after three steps; another seed moves them by
    # about 1. A sum can be near zero, so it is held to a fraction of the tensor's norm instead.
    for tensor, (total, squares) in expected.items():
        assert actual[tensor][1] == pytest.approx(squares, rel=2e-3, abs=1e-9), tensor
        assert actual[tensor][0] == pytest.approx(total, abs=1e-2 * squares**0.5 + 1e-9), tensor


@pytest.mark.parametrize("name", list(RUNS))
def test_the_same_seeds_give_the_weights_recorded(name, fingerprints):
    assert_same_weights(fingerprints[name], json.loads(FINGERPRINTS.read_text())[name])


def test_the_default_device_path_trains_the_weights_of_the_per_image_path(fingerprints):
    """The RandomResizedCrop recipe's device path feeds the model the per-image path's pixels, batches and draws: the
    same weights, to the last bit of the fingerprint."""
    assert fingerprints["food101 device, SynerMix + MixUp"] == fingerprints["food101 per-image, SynerMix + MixUp"]


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    copies, folder, result = json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    made = {name: train_and_fingerprint(name, copies, folder / str(i)) for i, name in enumerate(RUNS)}
    result.write_text(json.dumps(made))
elif __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from synermix_hf.testing import build_hub_copies

    with tempfile.TemporaryDirectory() as folder:
        copies = build_hub_copies(Path(folder) / "copies")
        recorded = fingerprints_on_avx2(copies, Path(folder))
    FINGERPRINTS.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {FINGERPRINTS} (AVX2 kernels)")
