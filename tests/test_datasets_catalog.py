"""The dataset catalog: short names, the paper's splits, column detection and the errors a user sees."""

import re

import datasets
import numpy as np
import pytest

from synermix_hf.data.catalog import CATALOG, load_digits_dataset, load_image_classification_data
from synermix_hf.data.loading.checks import check_images_readable
from synermix_hf.data.loading.columns import detect_column, ensure_class_label
from synermix_hf.data.loading.splits import split_per_class, stratified_holdout
from synermix_hf.testing import build_image_folder, tiny_images, write_parquet_copy


def _counts(dataset, column="label"):
    values, counts = np.unique(np.asarray(list(dataset.with_format(None)[column])), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_catalog_names_the_papers_datasets_with_their_sizes_and_families():
    assert set(CATALOG) >= {"cifar100", "food101", "miniimagenet", "oxfordiiipet", "caltech256"}
    assert (CATALOG["cifar100"].image_size, CATALOG["cifar100"].family) == (32, "cifar")
    assert (CATALOG["miniimagenet"].image_size, CATALOG["miniimagenet"].family) == (84, "miniimagenet")
    for name in ("food101", "oxfordiiipet", "caltech256"):
        assert (CATALOG[name].image_size, CATALOG[name].family) == (224, "imagenet")
    assert (CATALOG["cifar100"].image_column, CATALOG["cifar100"].label_column) == ("img", "fine_label")


def test_builtin_digits_is_a_real_offline_dataset_with_class_labels():
    digits = load_digits_dataset()
    assert len(digits["train"]) + len(digits["test"]) == 1797
    assert digits["train"].features["label"].names == [str(d) for d in range(10)]
    image = digits["test"][0]["image"]
    assert image.size == (8, 8) and image.mode == "L"
    # Stratified: every digit is in both splits in about the same proportion.
    assert len(_counts(digits["test"])) == 10 and min(_counts(digits["test"]).values()) >= 30


def test_digits_read_from_scikit_learns_file_equal_load_digits():
    from sklearn.datasets import load_digits

    from synermix_hf.data.loading.sources import digits_arrays

    images, targets = digits_arrays()
    bunch = load_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(targets, bunch.target)


def test_cifar100_copy_uses_official_splits_and_its_columns(hub_copies):
    data = load_image_classification_data("cifar100", dataset_path=str(hub_copies["cifar100"]))
    assert (data.image_column, data.label_column) == ("img", "fine_label")
    assert (len(data.train), len(data.eval)) == (18, 9)
    assert data.class_names == ["apple", "bus", "cat"]


def test_food101_evaluates_on_the_hubs_validation_split(hub_copies):
    data = load_image_classification_data("food101", dataset_path=str(hub_copies["food101"]))
    assert (len(data.train), len(data.eval)) == (18, 9)
    assert "validation" in data.eval_description


def test_caltech256_takes_the_first_60_then_next_20_of_every_class(hub_copies):
    data = load_image_classification_data("caltech256", dataset_path=str(hub_copies["caltech256"]))
    assert _counts(data.train) == {0: 60, 1: 60}
    assert _counts(data.eval) == {0: 10, 1: 10}  # 70 images per class in the copy: images 61-70 test


def test_split_per_class_keeps_dataset_order():
    labels = [0, 1, 0, 1, 0, 1, 0]
    ds = datasets.Dataset.from_dict({"label": labels, "order": list(range(7))})
    train, test = split_per_class(ds, "label", n_train=2, n_test=1)
    assert train["order"] == [0, 1, 2, 3] and test["order"] == [4, 5]


def test_miniimagenet_pools_train_and_validation_and_splits_80_20_with_seed_100(hub_copies):
    first = load_image_classification_data("miniimagenet", dataset_path=str(hub_copies["miniimagenet"]))
    again = load_image_classification_data("miniimagenet", dataset_path=str(hub_copies["miniimagenet"]))
    # 36 pooled images (test = ceil of 20%); the copy's 3 test images are not used.
    assert (len(first.train), len(first.eval)) == (28, 8)
    expected = datasets.concatenate_datasets(
        [datasets.load_dataset(str(hub_copies["miniimagenet"]), split=s) for s in ("train", "validation")]
    ).train_test_split(test_size=0.2, seed=100)
    assert first.eval.with_format(None)["label"][:] == expected["test"]["label"][:]
    assert first.eval.with_format(None)["label"][:] == again.eval.with_format(None)["label"][:]


def test_phase_val_holds_out_a_stratified_fraction(hub_copies):
    data = load_image_classification_data(
        "cifar100", dataset_path=str(hub_copies["cifar100"]), phase="val", val_ratio=0.5
    )
    assert _counts(data.eval, "fine_label") == {0: 3, 1: 3, 2: 3}
    assert _counts(data.train, "fine_label") == {0: 3, 1: 3, 2: 3}


def test_phase_val_with_too_few_examples_per_class_is_refused():
    ds = datasets.Dataset.from_dict({"label": [0, 0, 0, 1, 2, 2]}).class_encode_column("label")
    with pytest.raises(ValueError, match=r"at least 2 .* class '1' has 1"):
        stratified_holdout(ds, "label", 0.5, class_names=["0", "1", "2"])
    with pytest.raises(ValueError, match="one example of each of the 3 classes"):
        stratified_holdout(datasets.Dataset.from_dict({"label": [0, 0, 1, 1, 2, 2] * 3}), "label", 0.1)


def test_columns_are_detected_and_ambiguity_lists_the_columns():
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["a"])})
    assert detect_column(features, None, ("img", "image"), "images", "image_column") == "img"
    labels = ("label", "labels", "fine_label")
    assert detect_column(features, None, labels, "labels", "label_column") == "fine_label"
    both = datasets.Features({"label": datasets.Value("int64"), "labels": datasets.Value("int64")})
    with pytest.raises(ValueError, match=r"label, labels all could.*`label_column`.*columns are: label, labels"):
        detect_column(both, None, ("label", "labels", "fine_label"), "labels", "label_column")
    none = datasets.Features({"picture": datasets.Value("string"), "y": datasets.Value("float32")})
    with pytest.raises(ValueError, match="columns are: picture, y"):
        detect_column(none, None, ("label", "labels"), "labels", "label_column", datasets.ClassLabel)
    with pytest.raises(ValueError, match="'target' is not a column.*picture, y"):
        detect_column(none, "target", ("label",), "labels", "label_column")


def test_string_labels_become_class_labels_but_floats_and_ids_are_refused():
    strings = datasets.DatasetDict(train=datasets.Dataset.from_dict({"breed": ["pug", "cat", "pug"]}))
    encoded = ensure_class_label(strings, "breed")
    assert encoded["train"].features["breed"].names == ["cat", "pug"]
    floats = datasets.DatasetDict(train=datasets.Dataset.from_dict({"score": [0.5, 1.5]}))
    with pytest.raises(ValueError, match=r"'score' is not a class label: its type is Value\(float"):
        ensure_class_label(floats, "score")
    ids = datasets.DatasetDict(train=datasets.Dataset.from_dict({"image_id": [f"img{i}" for i in range(40)]}))
    with pytest.raises(ValueError, match="looks like an id"):
        ensure_class_label(ids, "image_id")


def test_local_image_folders_with_a_bad_file_name_that_file(tmp_path):
    folder = build_image_folder(tmp_path / "train", [3, 3])
    (folder / "class_1" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        load_image_classification_data(train_dir=str(folder), train_val_split=0.3)
    features = datasets.Features({"image": datasets.Image()})
    ds = datasets.Dataset.from_dict({"image": tiny_images([0, 1])}, features=features)
    check_images_readable(ds, "image", "training set")  # good images pass


def test_unknown_names_missing_directories_and_unreachable_hub_are_refused_in_parameter_names(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'cifar100'.*caltech256"):
        load_image_classification_data("cifar1000")
    with pytest.raises(ValueError, match="`train_dir` .* does not exist"):
        load_image_classification_data(train_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="`dataset_path` .* does not exist"):
        load_image_classification_data("cifar100", dataset_path=str(tmp_path / "nowhere"))
    # A `dataset_path` that looks like a short name is not reported as a mistyped `dataset_name`.
    with pytest.raises(ValueError) as refused:
        load_image_classification_data("cifar100", dataset_path="cifar10")
    assert "Unknown `dataset_name`" not in str(refused.value) and "`dataset_path` cifar10" in str(refused.value)
    # The tests run with HF_HUB_OFFLINE=1: the Hub copy of a short name cannot be reached.
    with pytest.raises(ValueError, match="cannot reach the Hugging Face Hub to load 'uoft-cs/cifar100'"):
        load_image_classification_data("cifar100")


def test_generic_datasets_use_validation_then_test_then_a_split_of_train(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    labels = [0, 1] * 5
    only_train = write_parquet_copy(tmp_path / "only_train", {"train": {"image": tiny_images(labels), "label": labels}},
                                    features)
    data = load_image_classification_data(str(only_train), train_val_split=0.2)
    assert (len(data.train), len(data.eval)) == (8, 2)
    folder = build_image_folder(tmp_path / "folder", [4, 4])
    data = load_image_classification_data(train_dir=str(folder), validation_dir=str(folder))
    assert (len(data.train), len(data.eval)) == (8, 8) and data.class_names == ["class_0", "class_1"]


def test_caltech256_orders_each_class_by_file_name_when_the_copy_keeps_them(tmp_path):
    # The reference trains on each class's files 0001-0060 and tests on 0061-0080, by file name. A copy that keeps the
    # file names (here scrambled in row order, and numbered past 0080 as the real folders are) is split by them.
    import io

    rng = np.random.default_rng(0)
    rows = [(label, number) for label in (0, 1) for number in range(1, 91)]
    rng.shuffle(rows)
    images = []
    for label, number in rows:
        buffer = io.BytesIO()
        tiny_images([label], seed=number)[0].save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": f"{label + 1:03d}_{number:04d}.jpg"})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["ak47", "clutter"])})
    labels = [label for label, _ in rows]
    root = write_parquet_copy(tmp_path / "caltech", {"train": {"image": images, "label": labels}}, features)
    data = load_image_classification_data("caltech256", dataset_path=str(root))

    def numbers(part):
        paths = part.cast_column("image", datasets.Image(decode=False))["image"]
        return {label: sorted(int(p["path"][4:8]) for p, y in zip(paths, part["label"]) if y == label)
                for label in (0, 1)}

    assert numbers(data.train) == {0: list(range(1, 61)), 1: list(range(1, 61))}
    assert numbers(data.eval) == {0: list(range(61, 81)), 1: list(range(61, 81))}
    assert "by file name" in data.eval_description


def test_caltech256_without_file_names_uses_the_copys_row_order(hub_copies):
    data = load_image_classification_data("caltech256", dataset_path=str(hub_copies["caltech256"]))
    assert "row order" in data.eval_description


# ---- CSV and JSON: image paths and string labels, as `datasets` 5 reads them (large_string) ----


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_csv_and_json_with_image_paths_and_string_labels(tmp_path, fmt):
    import json

    folder = build_image_folder(tmp_path / "images", [4, 4])
    rows = [{"file": str(path), "breed": path.parent.name.replace("class_", "breed")}
            for path in sorted(folder.glob("*/*.png"))]
    data_dir = tmp_path / "table"
    data_dir.mkdir()
    if fmt == "csv":
        lines = ["file,breed"] + [f"{r['file']},{r['breed']}" for r in rows]
        (data_dir / "train.csv").write_text("\n".join(lines) + "\n")
    else:
        (data_dir / "train.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_image_classification_data(str(data_dir), image_column="file", label_column="breed",
                                          train_val_split=0.25)
    assert data.class_names == ["breed0", "breed1"]
    assert (len(data.train), len(data.eval)) == (6, 2)
    assert data.train[0]["file"].size == (8, 8)  # decoded from the path


def test_a_single_class_is_refused(tmp_path):
    folder = build_image_folder(tmp_path / "one", [6])
    with pytest.raises(ValueError, match=r"`train_dir` .* has 1 class subfolder \(class_0\); .* at least 2"):
        load_image_classification_data(train_dir=str(folder))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat"])})
    copy = write_parquet_copy(tmp_path / "parquet", {"train": {"image": tiny_images([0] * 6), "label": [0] * 6}},
                              features)
    with pytest.raises(ValueError, match=r"1 class \('cat'\) in `label_column` 'label'; classification needs at least 2"):
        load_image_classification_data(str(copy))
    # Two class names, but the training data holds only one of them.
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    copy = write_parquet_copy(tmp_path / "parquet2", {"train": {"image": tiny_images([0] * 6), "label": [0] * 6},
                                                      "test": {"image": tiny_images([1] * 2), "label": [1] * 2}},
                              features)
    with pytest.raises(ValueError, match=r"training set .* holds 1 class \('cat'\)"):
        load_image_classification_data(str(copy))


def test_a_column_of_text_named_as_the_image_column_is_refused_naming_image_column(tmp_path):
    # Class names read as file paths: the error says the column may not hold images, and names the parameter.
    ds = datasets.Dataset.from_dict({"name": ["cat", "dog"], "label": [0, 1]}).cast_column("name", datasets.Image())
    with pytest.raises(ValueError, match=r"no such file.*column 'name'.*`image_column`"):
        check_images_readable(ds, "name", "training set")


def test_a_class_without_training_examples_is_warned_of_by_name(tmp_path, caplog):
    # A validation folder with a class the training folder lacks: the head has it, training never sees it.
    train = build_image_folder(tmp_path / "train", [3, 3])
    validation = build_image_folder(tmp_path / "validation", [1, 1, 2])
    with caplog.at_level("WARNING", logger="synermix_hf.data.loading.checks"):
        load_image_classification_data(train_dir=str(train), validation_dir=str(validation))
    assert re.search(r"no example of 1 of its 3 classes \('class_2'\)", caplog.text)
