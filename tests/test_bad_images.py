"""Images that pass the load-time check but cannot be decoded (a truncated JPEG, a file with a JPEG header and text
after it): a run survives them, names each once, lists them in its log, replaces a training image by one of its class
(the same in every run), skips an evaluation image and counts it, and stops with one line when there are too many or
when asked to stop at the first. Both data paths.
"""

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from synermix_hf import SynerMixTrainer
from synermix_hf.data.bad_images import IGNORE_LABEL, TolerantImages
from synermix_hf.cli.train import main
from synermix_hf.data import TwoViewTransform
from synermix_hf.data.image_store import stored_images_and_failures
from synermix_hf.data.loading.checks import check_images_readable
from synermix_hf.testing import tiny_images, write_parquet_copy
from synermix_hf.data.transforms import TransformSpec, build_transforms

from test_trainer import arguments, resnet

FAST = ["-bs", "8", "--image_size", "8", "--num_train_epochs", "2", "--save_strategy", "no", "--disable_tqdm", "true",
        "--per_device_eval_batch_size", "4", "--seed", "3"]
CLASSES = ["apple", "bus", "cat"]


def _jpeg(label: int, seed: int) -> bytes:
    """A 32x32 JPEG whose colour tells its class (large enough that a cut after its header is a truncated file)."""
    out = io.BytesIO()
    tiny_images([label], size=32, seed=seed)[0].save(out, format="JPEG", quality=95)
    return out.getvalue()


def _truncated(data: bytes) -> bytes:
    return data[: data.index(b"\xff\xda") + 40]  # the header and the start of the scan: opens, fails to decode


def _not_an_image(data: bytes) -> bytes:
    # A JPEG header up to the start of the scan, then a web page: Pillow 10 to 13 all open it (older ones need the
    # scan's own header to identify a JPEG), and none can decode it.
    scan = data.index(b"\xff\xda")
    header_end = scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")
    return data[:header_end] + b"<html>404 Not Found</html>\n" * 8


BAD_TRAIN = {(1, 2): ("truncated.jpg", _truncated), (2, 4): ("not_an_image.jpg", _not_an_image)}
BAD_VAL = {(0, 1): ("truncated_val.jpg", _truncated)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Image folders: training 3 classes x 6 (two bad files), validation 3 x 2 (one bad file)."""
    root = tmp_path_factory.mktemp("bad_folders")
    for split, count, bad in (("train", 6, BAD_TRAIN), ("val", 2, BAD_VAL)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                data = _jpeg(label, seed=100 * label + i + (0 if split == "train" else 50))
                file_name, spoil = bad.get((label, i), (f"{i}.jpg", None))
                (root / split / name / file_name).write_bytes(spoil(data) if spoil else data)
    return root


@pytest.fixture(scope="module")
def parquet_copy(tmp_path_factory):
    """A CIFAR-100-like parquet copy (takes the device path) with two bad training images and one bad test image."""
    root = tmp_path_factory.mktemp("bad_parquet")

    def images(labels, bad):
        out = []
        for i, label in enumerate(labels):
            name, spoil = bad.get(i, (None, None))
            out.append({"bytes": spoil(_jpeg(label, i)) if spoil else _jpeg(label, i), "path": name})
        return out

    train, test = [y for y in range(3) for _ in range(6)], [y for y in range(3) for _ in range(2)]
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CLASSES)})
    return write_parquet_copy(root, {
        "train": {"img": images(train, {4: ("truncated.jpg", _truncated), 15: ("not_an_image.jpg", _not_an_image)}),
                  "fine_label": train},
        "test": {"img": images(test, {1: ("truncated_test.jpg", _truncated)}), "fine_label": test},
    }, features)


def _image_folder(path: Path) -> datasets.Dataset:
    return datasets.load_dataset("imagefolder", data_files={"train": str(path / "**")}, split="train")


def _run(argv):
    """`main(argv)`: its exit status and what it printed, `(status, stdout, stderr)`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return status, out.getvalue(), err.getvalue()


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def test_the_bad_files_pass_the_load_time_check(folders):
    # Otherwise the tests below would test the check, not decoding during training.
    for split in ("train", "val"):
        data = _image_folder(folders / split)
        check_images_readable(data, "image", split)
        failures = 0
        for value in data.cast_column("image", datasets.Image(decode=False))["image"]:
            try:
                Image.open(value["path"]).load()
            except OSError:
                failures += 1
        assert failures == (2 if split == "train" else 1)


def _per_image_argv(folders, out, workers, *extra):
    return ["--train_dir", str(folders / "train"), "--validation_dir", str(folders / "val"), *FAST, "--views_on",
            "loader", "--dataloader_num_workers", str(workers), *extra, "--output_dir", str(out)]


@pytest.fixture(scope="module")
def survived(folders, tmp_path_factory):
    """A per-image run with two loader workers over two epochs, evaluated and predicted."""
    out = tmp_path_factory.mktemp("survived") / "out"
    argv = _per_image_argv(folders, out, 2, "--max_bad_image_fraction", "0.2", "--do_train", "--do_eval",
                           "--do_predict")
    return out, *_run(argv)


def test_a_per_image_run_with_workers_survives_names_each_file_once_and_lists_it(folders, survived):
    out, status, stdout, err = survived
    assert status == 0, err
    log = (out / "training_log.txt").read_text()
    assert re.search(r"views +: loader", log)
    for name in ("truncated.jpg", "not_an_image.jpg", "truncated_val.jpg"):
        # Every epoch, each worker and the evaluation read these files again; the user is told once.
        assert stdout.count(name) == 1, (name, stdout)
        assert len(re.findall(rf"^bad image: cannot decode the image in file \S+/{re.escape(name)} ", log,
                              re.MULTILINE)) == 1, log
    assert re.search(r"truncated\.jpg of the training set \(OSError: image file is truncated.*\); training on row "
                     r"\d+ of the same class", log)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_skipped_images"] == results["predict_skipped_images"] == 1
    assert results["eval_samples"] == 6
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # The skipped image has no prediction; the accuracy is over the five that decode.
    assert sorted(row["id"] for row in rows) == sorted(p.name for p in (folders / "val").glob("*/*.jpg")
                                                       if p.name != "truncated_val.jpg")
    accuracy = np.mean([row["label"] == row["prediction_1"] for row in rows])
    assert results["predict_accuracy"] == pytest.approx(accuracy) == pytest.approx(results["eval_accuracy"])
    assert "eval_skipped_images 1" in log.splitlines()[-2]  # the final line


def test_the_replacement_is_the_same_with_or_without_workers(folders, survived, tmp_path):
    out, status, _, _ = survived
    assert status == 0
    again = tmp_path / "again"
    status, _, err = _run(_per_image_argv(folders, again, 0, "--max_bad_image_fraction", "0.2", "--do_train"))
    assert status == 0, err
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    replaced = lambda log: re.findall(r"bad image: .* training on row (\d+)", log)  # noqa: E731
    assert len(replaced((out / "training_log.txt").read_text())) == 2
    assert replaced((out / "training_log.txt").read_text()) == replaced((again / "training_log.txt").read_text())


def test_a_training_image_is_replaced_by_one_of_its_class_that_decodes_with_its_augmentation(folders):
    data = _image_folder(folders / "train")
    paths = data.cast_column("image", datasets.Image(decode=False))["image"]
    bad = [i for i, value in enumerate(paths) if Path(value["path"]).name in ("truncated.jpg", "not_an_image.jpg")]
    labels = np.asarray(data["label"])
    train_tf, eval_tf = build_transforms(TransformSpec("imagenet", 8))
    views = data.with_transform(TwoViewTransform(train_tf, eval_tf, "image", "label"))
    for seed in (0, 1):
        tolerant = TolerantImages(views, "image", "training set", labels=labels, seed=seed)
        for index in bad:
            torch.manual_seed(7)
            example = tolerant[index]
            (report,) = example["bad_images"]
            stand_in = report.replacement
            assert stand_in != index and stand_in not in bad and labels[stand_in] == labels[index]
            assert example["labels"] == labels[index]
            torch.manual_seed(7)  # the stand-in is augmented with the random state the bad example had
            expected = views[stand_in]
            assert torch.equal(example["pixel_values"], expected["pixel_values"])
            assert torch.equal(example["original_pixel_values"], expected["original_pixel_values"])
            fresh = TolerantImages(views, "image", "training set", labels=labels, seed=seed)  # another worker
            assert fresh[index]["bad_images"][0].replacement == stand_in
    assert all(tolerant[i]["labels"] == labels[i] and "bad_images" not in tolerant[i]
               for i in range(len(data)) if i not in bad)


def test_an_error_that_is_not_about_the_image_is_not_taken_for_a_bad_image(folders):
    data = _image_folder(folders / "train")

    def broken_transform(batch):
        raise KeyError("a bug in the transform")

    tolerant = TolerantImages(data.with_transform(broken_transform), "image", "training set")
    with pytest.raises(KeyError, match="a bug in the transform"):
        tolerant[0]


def test_a_class_whose_images_all_fail_stops_with_a_message_that_survives_a_loader_worker(folders):
    from torch._utils import ExceptionWrapper

    from synermix_hf.data.bad_images import BadImageError, bad_image_message

    data = _image_folder(folders / "train")
    paths = data.cast_column("image", datasets.Image(decode=False))["image"]
    bad = next(i for i, value in enumerate(paths) if Path(value["path"]).name == "truncated.jpg")
    labels = np.arange(len(data))  # every example its own class: no other image of its class
    tolerant = TolerantImages(data.with_transform(lambda batch: batch), "image", "training set", labels=labels)
    with pytest.raises(BadImageError, match=r"truncated\.jpg of the training set .*nor any of the 0 other images of "
                                            r"its class") as caught:
        tolerant[bad]
    try:  # as a DataLoader worker sends it to the main process, which raises it with the worker's traceback
        raise caught.value
    except BadImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadImageError) as reraised:
        wrapped.reraise()
    assert "Original Traceback" in str(reraised.value)
    assert bad_image_message(reraised.value) == str(caught.value)


def test_more_bad_images_than_max_bad_image_fraction_stop_with_one_line(folders, tmp_path):
    out = tmp_path / "out"
    status, _, err = _run(_per_image_argv(folders, out, 0, "--max_bad_image_fraction", "0.1"))
    assert status == 2
    message = _one_line_error(err)
    assert "2 of the 18 images of the training set cannot be decoded" in message
    assert "truncated.jpg" in message and "not_an_image.jpg" in message
    assert "--max_bad_image_fraction 0.1" in message and "raise --max_bad_image_fraction" in message
    assert not (out / "all_results.json").exists() and not (out / "model.safetensors").exists()
    assert (out / "training_log.txt").read_text().strip().splitlines()[-1] == f"stopped: {message[len('error: '):]}"


def test_stop_on_bad_image_stops_at_the_first(folders, tmp_path):
    out = tmp_path / "out"
    status, stdout, err = _run(_per_image_argv(folders, out, 0, "--max_bad_image_fraction", "0.5",
                                               "--stop_on_bad_image"))
    assert status == 2
    message = _one_line_error(err)
    assert "--stop_on_bad_image stops at the first bad image" in message
    assert ("truncated.jpg" in message) != ("not_an_image.jpg" in message)  # the first one read, only
    assert "Bad image" not in stdout  # not announced as replaced
    assert not (out / "all_results.json").exists()


def test_the_device_path_finds_them_up_front_replaces_skips_and_counts(parquet_copy, tmp_path):
    out = tmp_path / "out"
    argv = ["-ds", "cifar100", "--dataset_path", str(parquet_copy), "--cache_dir", str(tmp_path / "cache"), *FAST,
            "--max_bad_image_fraction", "0.2", "--output_dir", str(out)]
    status, stdout, err = _run(argv)
    assert status == 0, err
    log = (out / "training_log.txt").read_text()
    assert re.search(r"views +: device", log)
    for name, split in (("truncated.jpg", "training"), ("not_an_image.jpg", "training"),
                        ("truncated_test.jpg", "evaluation")):
        assert stdout.count(name) == 1, (name, stdout)
        assert log.count(f"bad image: cannot decode the image in file {name} of the {split} set") == 1, log
    # Both found before the first step: listed above the training lines.
    assert log.index("not_an_image.jpg") < log.index("training: 2 epochs")
    for row in re.findall(r"training on row (\d+) of the same class", log):
        assert int(row) not in (4, 15)
    assert sorted(int(r) // 6 for r in re.findall(r"training on row (\d+)", log)) == [0, 2]  # rows 4 and 15's classes
    assert json.loads((out / "all_results.json").read_text())["eval_skipped_images"] == 1


def test_the_device_path_stops_before_training(parquet_copy, tmp_path):
    base = ["-ds", "cifar100", "--dataset_path", str(parquet_copy), "--cache_dir", str(tmp_path / "cache"), *FAST,
            "--views_on", "device"]
    status, _, err = _run([*base, "--output_dir", str(tmp_path / "a")])  # the default: at most 1%
    assert status == 2
    message = _one_line_error(err)
    assert "2 of the 18 images of the training set cannot be decoded, more than --max_bad_image_fraction 0.01" in message
    assert "truncated.jpg" in message and "not_an_image.jpg" in message
    status, _, err = _run([*base, "--stop_on_bad_image", "--max_bad_image_fraction", "1", "--output_dir",
                           str(tmp_path / "b")])
    assert status == 2
    message = _one_line_error(err)
    assert "Cannot decode 2 images of the training set" in message and "--stop_on_bad_image" in message
    assert not (tmp_path / "a" / "all_results.json").exists() and not (tmp_path / "b" / "all_results.json").exists()


def test_the_decoded_cache_keeps_its_failures_for_the_next_run(parquet_copy, tmp_path):
    data = datasets.load_dataset("parquet", data_files=str(parquet_copy / "data" / "train-*.parquet"),
                                 split="train", cache_dir=str(tmp_path / "hf"))
    store, failures = stored_images_and_failures(data, "img", 8, square=True, cache_dir=str(tmp_path / "cache"))
    assert [(row, source) for row, source, _ in failures] == [(4, "file truncated.jpg"),
                                                              (15, "file not_an_image.jpg")]
    assert not store.image(4).any() and not store.image(15).any() and store.image(0).any()  # bad rows are black
    again, failures_again = stored_images_and_failures(data, "img", 8, square=True, cache_dir=str(tmp_path / "cache"))
    assert again.path == store.path and failures_again == failures  # reused, failures included


def test_max_bad_image_fraction_is_checked_before_anything_runs(tmp_path):
    status, _, err = _run(["--max_bad_image_fraction", "1.5", "--output_dir", str(tmp_path / "o")])
    assert status == 2
    assert _one_line_error(err) == "error: --max_bad_image_fraction must be between 0 and 1, got 1.5."


def test_skipped_evaluation_images_are_left_out_of_the_loss_and_the_metrics():
    from transformers import EvalPrediction

    from synermix_hf.metrics import ClassificationMetrics

    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 2, IGNORE_LABEL, 0])
    metrics = ClassificationMetrics(3)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == {"accuracy": pytest.approx(2 / 3), "skipped_images": 1}


def test_the_random_resized_crop_device_path_finds_them_up_front_too(folders, tmp_path):
    """An image folder (files on disk, the imagenet recipe) on the device path: the store's one decode finds the bad
    files before training, as the square path's does."""
    out = tmp_path / "out"
    argv = ["--train_dir", str(folders / "train"), "--validation_dir", str(folders / "val"), *FAST, "--views_on",
            "device", "--max_bad_image_fraction", "0.2", "--do_train", "--do_eval", "--output_dir", str(out)]
    status, stdout, err = _run(argv)
    assert status == 0, err
    log = (out / "training_log.txt").read_text()
    assert re.search(r"views +: device: training set \(\d+ images\): decoded once at full resolution", log), log
    for name, split in (("truncated.jpg", "training"), ("not_an_image.jpg", "training"),
                        ("truncated_val.jpg", "evaluation")):
        assert stdout.count(name) == 1, (name, stdout)
        assert len(re.findall(rf"^bad image: cannot decode the image in file \S+/{re.escape(name)} of the {split} set",
                              log, re.MULTILINE)) == 1, log
    assert log.index("not_an_image.jpg") < log.index("training: ")
    assert json.loads((out / "all_results.json").read_text())["eval_skipped_images"] == 1


def test_an_image_past_pillows_size_limit_is_named_in_one_sentence(monkeypatch):
    # Pillow refuses an image of more than twice MAX_IMAGE_PIXELS as a decompression bomb, in a message of its own that
    # ends with a full stop: the refusal reads "... DOS attack. Remove ...", not "attack.. Remove".
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, format="PNG")
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": png.getvalue(), "path": None}]}).cast_column(
        "image", datasets.Image())
    with pytest.raises(ValueError) as raised:
        check_images_readable(dataset, "image", "training set")
    message = str(raised.value)
    assert "decompression bomb DOS attack. Remove or replace the file" in message and ".." not in message, message


def test_a_bad_image_is_skipped_in_a_set_evaluated_by_name_too(folders, tmp_path):
    """Evaluation sets given as a dict are evaluated by name (`evaluate()`, and during training): each skips its bad
    image as a set evaluated alone does, instead of stopping at it."""
    _, eval_tf = build_transforms(TransformSpec("cifar", 16))
    val = _image_folder(folders / "val").with_transform(TwoViewTransform(eval_tf, eval_tf, image_column="image",
                                                                         label_column="label"))
    args = arguments(tmp_path, per_device_eval_batch_size=4, max_bad_image_fraction=0.5)
    model = resnet()
    alone = SynerMixTrainer(model=model, args=args).evaluate(val)["eval_loss"]
    metrics = SynerMixTrainer(model=model, args=args, eval_dataset={"a": val, "b": val}).evaluate()
    assert metrics["eval_a_loss"] == metrics["eval_b_loss"] == alone
