"""Decode once: the cached pixels are the per-image path's, the cache is keyed, reused, written atomically."""

import io
import logging
import os
import pickle

import datasets
import numpy as np
import pytest
import torch
from synermix_hf.testing import tiny_images
from PIL import Image

from synermix_hf.data.batch_transforms import normalize, to_float
from synermix_hf.data.image_store import square_store_nbytes, store_path, stored_images_and_failures
from synermix_hf.data.transforms import TransformSpec, build_transforms

FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})


def square_pixels(dataset, image_column, image_size, **kwargs):
    """The square store's pixels as uint8 `[N, 3, S, S]` (a view of the store), every image of which decodes."""
    store, failures = stored_images_and_failures(dataset, image_column, image_size, square=True, **kwargs)
    assert failures == []
    return store.pixels.reshape(len(store), image_size, image_size, 3).transpose(0, 3, 1, 2)


def mixed_images():
    """Images as datasets meet them: RGB at the model size, larger, smaller, grayscale, RGBA, palette, JPEG."""
    images = tiny_images([0, 1, 2, 3], size=8) + tiny_images([1, 2], size=13) + tiny_images([3], size=5)
    images += tiny_images([0], size=8, mode="L") + tiny_images([2], size=11, mode="RGBA")
    images += tiny_images([1], size=9, mode="P")
    buffer = io.BytesIO()
    tiny_images([3], size=24)[0].save(buffer, format="JPEG", quality=80)
    images.append(Image.open(io.BytesIO(buffer.getvalue())))
    return images


def saved_dataset(tmp_path, images, name="data"):
    labels = [i % 4 for i in range(len(images))]
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=FEATURES)
    dataset.save_to_disk(str(tmp_path / name))
    return datasets.load_from_disk(str(tmp_path / name))


@pytest.mark.parametrize("family", ["cifar", "digits"])
def test_decoded_pixels_give_exactly_the_per_image_original_view(tmp_path, family):
    dataset = saved_dataset(tmp_path, mixed_images())
    spec = TransformSpec(family, 8)
    _, eval_tf = build_transforms(spec)
    images = square_pixels(dataset, "image", 8)
    assert images.dtype == np.uint8 and images.shape == (len(dataset), 3, 8, 8)
    expected = torch.stack([eval_tf(image.convert("RGB")) for image in dataset["image"]])
    assert torch.equal(normalize(to_float(torch.from_numpy(np.array(images))), spec.mean, spec.std), expected)


def test_the_cache_lives_next_to_the_dataset_is_reused_and_keyed_by_fingerprint_and_size(tmp_path):
    dataset = saved_dataset(tmp_path, mixed_images())
    first = square_pixels(dataset, "image", 8)
    path = store_path(dataset, "image", 8, "bilinear", square=True)
    pixels = os.path.join(path, "pixels.npy")
    assert isinstance(first, np.memmap) and os.path.samefile(first.filename, pixels)
    assert os.path.dirname(path) == os.path.dirname(dataset.cache_files[0]["filename"])
    stamp = os.stat(pixels).st_mtime_ns
    again = square_pixels(datasets.load_from_disk(str(tmp_path / "data")), "image", 8)  # a later run
    assert os.path.samefile(again.filename, pixels) and os.stat(pixels).st_mtime_ns == stamp
    assert np.array_equal(again, first)
    assert not again.flags.writeable
    # Another size or another selection of rows is another cache file.
    assert store_path(dataset, "image", 16, "bilinear", square=True) != path
    subset = dataset.select([5, 0, 2])
    assert store_path(subset, "image", 8, "bilinear", square=True) != path
    assert np.array_equal(square_pixels(subset, "image", 8), np.asarray(first)[[5, 0, 2]])


def test_in_memory_datasets_are_cached_in_the_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    dataset = datasets.Dataset.from_dict({"image": mixed_images(), "label": [0] * 11}, features=FEATURES)
    assert not dataset.cache_files
    images = square_pixels(dataset, "image", 8)
    assert images.filename.startswith(str(tmp_path / "hf_cache"))
    in_memory = square_pixels(dataset, "image", 8, use_cache=False)
    assert not isinstance(in_memory, np.memmap) and np.array_equal(in_memory, images)


def test_bad_input_is_named():
    dataset = datasets.Dataset.from_dict({"image": tiny_images([0]), "label": [0]}, features=FEATURES)
    with pytest.raises(ValueError, match="`image_column` 'img' is not a column"):
        square_pixels(dataset, "img", 8)
    with pytest.raises(ValueError, match="`image_column` 'label' holds ClassLabel"):
        square_pixels(dataset, "label", 8)
    with pytest.raises(TypeError, match="datasets.Dataset"):
        square_pixels([np.zeros((8, 8, 3))], "image", 8)
    assert square_store_nbytes(50_000, 32) == 50_000 * (3 * 32 * 32 + 40)  # CIFAR-100's training set: pixels and index


def test_decoded_dataset_pickles_by_reopening_its_cache_file(tmp_path):
    from synermix_hf.data.batch_transforms import BatchViews
    from synermix_hf.data.device_datasets import StoredImageDataset

    dataset = saved_dataset(tmp_path, mixed_images())
    store, _ = stored_images_and_failures(dataset, "image", 8, square=True)
    decoded = StoredImageDataset(store, dataset["label"], BatchViews.from_spec(TransformSpec("cifar", 8)))
    payload = pickle.dumps(decoded)
    assert np.asarray(store.pixels).tobytes() not in payload  # the array itself is not pickled (reopened)
    restored = pickle.loads(payload)
    batch = restored.__getitems__([3, 1])
    images = square_pixels(dataset, "image", 8)
    assert torch.equal(batch["images"], torch.from_numpy(np.asarray(images)[[3, 1]]).permute(0, 2, 3, 1))
    assert batch["labels"].tolist() == [3, 1] and "augment" not in batch
    seeded = restored.seeded_batch([3, 1], np.array([1, 2**63 + 5], dtype=np.uint64))
    assert seeded["augment"].shape == (2, 5) and seeded["augment"].dtype == torch.int32


def test_the_former_square_caches_temporary_files_are_removed_once_a_day_old(tmp_path, caplog):
    # The square cache used to be one `.npy` file, built as `<name>.npy.<random>.tmp` beside it: a build killed then
    # left that file, which nothing of the present format would ever remove.
    cache = tmp_path / "cache"
    cache.mkdir()
    old, fresh = (cache / f"synermix-decoded-0123abcd-8px-4567ef.npy.{tag}.tmp" for tag in ("x1y2z3", "a4b5c6"))
    for leftover in (old, fresh):
        leftover.write_bytes(b"\0" * 128)
    two_days_ago = os.stat(old).st_mtime - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    dataset = datasets.Dataset.from_dict({"image": mixed_images()[:3], "label": [0] * 3}, features=FEATURES)
    with caplog.at_level(logging.WARNING, logger="synermix_hf.data.image_store"):
        square_pixels(dataset, "image", 8, cache_dir=str(cache))
    assert not old.exists() and fresh.exists()  # a fresh one may be a build of the former version still running
    assert [record.getMessage() for record in caplog.records] == [
        f"Image store: removed {old}, a temporary file of the former square cache, left by a build interrupted over "
        "a day ago."]
    kept = os.path.basename(store_path(dataset, "image", 8, "bilinear", str(cache), square=True))
    assert sorted(os.listdir(cache)) == sorted([fresh.name, kept])
