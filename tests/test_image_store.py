"""The image store: the pixels are the per-image path's before its random steps (full resolution, resized to S x S,
or the evaluation view), the store is keyed, reused, written atomically, keeps its failures and pickles lean."""

import io
import json
import logging
import os
import pickle
import socket
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from synermix_hf.data.image_store import (
    ImageStore,
    estimated_store_nbytes,
    existing_store_nbytes,
    store_path,
    stored_images_and_failures,
)
from synermix_hf.data.transforms import ResizeIfNeeded
from synermix_hf.testing import tiny_images

FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})


def stored(dataset, *args, **kwargs):
    """The store of `dataset`, every image of which decodes."""
    store, failures = stored_images_and_failures(dataset, *args, **kwargs)
    assert failures == []
    return store


def encoded(image, image_format="JPEG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def picture(height, width, seed=0, mode="RGB"):
    """A smooth random image (JPEG-friendly) of `height` x `width`."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    return image.convert(mode) if mode != "RGB" else image


def rotated_jpeg():
    """A JPEG stored 40 wide x 30 high whose EXIF orientation 6 says: turn it, so it is 30 wide x 40 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(picture(30, 40, seed=9), exif=exif.tobytes())


def mixed_values():
    """Undecoded images of several sizes, formats and modes, as a dataset holds them."""
    return [
        {"bytes": encoded(picture(30, 40, seed=1)), "path": "wide.jpg"},  # 40 wide x 30 high
        {"bytes": encoded(picture(40, 30, seed=2), "PNG"), "path": "tall.png"},
        {"bytes": encoded(picture(32, 32, seed=3)), "path": None},
        {"bytes": encoded(picture(50, 20, seed=4)), "path": "narrow.jpg"},
        {"bytes": encoded(picture(24, 36, seed=5, mode="L"), "PNG"), "path": "gray.png"},
        {"bytes": encoded(picture(36, 24, seed=6, mode="RGBA"), "PNG"), "path": "rgba.png"},
        {"bytes": rotated_jpeg(), "path": "rotated.jpg"},
    ]


def saved_dataset(tmp_path, values, name="data"):
    dataset = datasets.Dataset.from_dict({"image": values, "label": [i % 4 for i in range(len(values))]},
                                         features=FEATURES)
    dataset.save_to_disk(str(tmp_path / name))
    return datasets.load_from_disk(str(tmp_path / name))


def per_image(image, short_side=0, interpolation="bilinear", square=False, centre_crop_of=None):
    """What the per-image path feeds to ToTensor: the RGB image (S = 0), resized to S x S where it is not (the square
    recipes), or Resize(R) + CenterCrop(S) (the evaluation view)."""
    image = image.convert("RGB")
    mode = T.InterpolationMode(interpolation)
    if centre_crop_of is not None:
        image = T.CenterCrop(short_side)(T.Resize(centre_crop_of, interpolation=mode)(image))
    elif square and image.size != (short_side, short_side):
        image = image.resize((short_side, short_side), Image.BILINEAR)
    return np.asarray(image)


@pytest.mark.parametrize("short_side, interpolation, square, centre_crop_of", [
    (0, "bilinear", False, None), (16, "bilinear", True, None), (32, "bilinear", True, None),
    (16, "bilinear", False, 20), (16, "bicubic", False, 18)])
def test_stored_pixels_are_exactly_the_per_image_paths(tmp_path, short_side, interpolation, square, centre_crop_of):
    dataset = saved_dataset(tmp_path, mixed_values())
    store = stored(dataset, "image", short_side, interpolation, num_threads=2, square=square,
                   centre_crop_of=centre_crop_of)
    assert len(store) == len(dataset) and store.pixels.dtype == np.uint8 and store.pixels.ndim == 1
    decoded = dataset["image"]  # `datasets` decodes (EXIF transpose included)
    for row, image in enumerate(decoded):
        expected = per_image(image, short_side, interpolation, square, centre_crop_of)
        assert np.array_equal(store.image(row), expected), row
        assert store.index[row, 1:3].tolist() == list(expected.shape[:2])
        assert store.index[row, 3:5].tolist() == [image.height, image.width]
    assert store.index[6, 3:5].tolist() == [40, 30]  # the rotated JPEG, as turned by its EXIF orientation
    assert store.nbytes == sum(per_image(image, short_side, interpolation, square, centre_crop_of).size
                               for image in decoded)


def test_a_square_store_resizes_only_the_images_not_already_s_by_s(tmp_path):
    dataset = saved_dataset(tmp_path, mixed_values())
    store = stored(dataset, "image", 32, square=True, use_cache=False)
    for row, image in enumerate(dataset["image"]):
        assert np.array_equal(store.image(row), np.asarray(ResizeIfNeeded(32)(image.convert("RGB"))))
    batch = store.square_batch([2, 0, 2])
    assert batch.dtype == torch.uint8 and batch.shape == (3, 32, 32, 3)
    assert np.array_equal(batch[0].numpy(), store.image(2)) and np.array_equal(batch[1].numpy(), store.image(0))
    with pytest.raises(ValueError, match="S x S"):
        stored(dataset, "image", 0, use_cache=False).square_batch([0])


def test_the_store_lives_next_to_the_dataset_is_reused_and_keyed(tmp_path):
    dataset = saved_dataset(tmp_path, mixed_values())
    store = stored(dataset, "image", 16, square=True)
    path = store_path(dataset, "image", 16, "bilinear", square=True)
    assert store.path == path and os.path.basename(path).startswith(f"synermix-store-{dataset._fingerprint}-sq16-")
    assert os.path.dirname(path) == os.path.dirname(dataset.cache_files[0]["filename"])
    assert isinstance(store.pixels, np.memmap) and os.path.samefile(store.pixels.filename, f"{path}/pixels.npy")
    assert sorted(os.listdir(path)) == ["bad.json", "checksums.npy", "index.npy", "pixels.npy", "store.json"]  # no build.lock
    assert json.loads((tmp_path / "data" / os.path.basename(path) / "bad.json").read_text()) == []  # always there
    stamp = os.stat(f"{path}/pixels.npy")
    again = stored(datasets.load_from_disk(str(tmp_path / "data")), "image", 16, square=True)  # a later run
    assert os.stat(f"{path}/pixels.npy").st_ino == stamp.st_ino
    assert os.stat(f"{path}/pixels.npy").st_mtime_ns == stamp.st_mtime_ns
    assert np.array_equal(again.pixels, store.pixels) and np.array_equal(again.index, store.index)
    assert not again.pixels.flags.writeable
    # Another S, interpolation or selection of rows is another store.
    others = {store_path(dataset, "image", 24, "bilinear", square=True),
              store_path(dataset, "image", 16, "bicubic", centre_crop_of=20),
              store_path(dataset, "image", 16, "bilinear", centre_crop_of=20), store_path(dataset, "image", 0, "bilinear"),
              store_path(dataset.select([3, 0]), "image", 16, "bilinear", square=True)}
    assert len(others) == 5 and path not in others
    subset = stored(dataset.select([3, 0]), "image", 16, square=True)
    assert subset.path != path and np.array_equal(subset.image(0), store.image(3))
    # Without the cache, the same store in memory and no folder.
    in_memory = stored(dataset, "image", 16, cache_dir=str(tmp_path / "unused"), use_cache=False, square=True)
    assert in_memory.path is None and not (tmp_path / "unused").exists()
    assert np.array_equal(in_memory.pixels, store.pixels) and np.array_equal(in_memory.index, store.index)


@pytest.mark.parametrize("store_kind", [dict(short_side=0), dict(short_side=16, square=True),
                                        dict(short_side=16, centre_crop_of=20)])
def test_a_split_with_no_rows_gets_an_empty_store_built_and_reused(tmp_path, store_kind):
    """A split left empty by a filter: a store of no images on disk, as in memory, and a later run reuses it."""
    dataset = saved_dataset(tmp_path, mixed_values()).filter(lambda example: False)
    store = stored(dataset, "image", **store_kind)
    assert store.path is not None and len(store) == 0 and store.nbytes == 0
    again = stored(dataset, "image", **store_kind)
    assert again.path == store.path and len(again) == 0 and again.index.shape == (0, 5)
    if store_kind.get("short_side"):
        assert again.square_batch([]).shape == (0, 16, 16, 3)


def test_abandoned_builds_are_removed(tmp_path):
    # (A build stopped by a full disk or SIGTERM leaves nothing: tests/test_store_failures.py.)
    values = [{"bytes": encoded(picture(12 + i % 5, 10 + i % 3, seed=i)), "path": f"{i}.jpg"} for i in range(150)]
    good = saved_dataset(tmp_path, values, "good")
    cache = tmp_path / "cache"
    cache.mkdir()
    # A build killed outright (no exception handler ran) leaves its temporary folder; the next build removes it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = store_path(good, "image", 8, "bilinear", cache_dir=str(cache), square=True)
    abandoned = cache / f".{os.path.basename(path)}.{socket.gethostname()}.{int(dead.stdout)}.x1y2.tmp"
    abandoned.mkdir()
    (abandoned / "pixels.npy").write_bytes(b"\0" * 100)
    store = stored(good, "image", 8, cache_dir=str(cache), num_threads=2, square=True)
    assert os.listdir(cache) == [os.path.basename(store.path)]
    assert np.array_equal(store.image(149), per_image(good[149]["image"], 8, square=True))


def test_a_broken_store_is_rebuilt(tmp_path, caplog):
    dataset = saved_dataset(tmp_path, mixed_values())
    store = stored(dataset, "image", 16, square=True)
    expected = np.array(store.pixels)
    pixels = np.load(f"{store.path}/pixels.npy")
    del store
    np.save(f"{store_path(dataset, 'image', 16, 'bilinear', square=True)}/pixels.npy", pixels[:-10])  # a short pixels file
    with caplog.at_level(logging.WARNING, logger="synermix_hf.data.image_store"):
        rebuilt = stored(dataset, "image", 16, square=True)
    assert [record.getMessage() for record in caplog.records] == [
        f"Image store: {rebuilt.path}/pixels.npy is damaged ({os.path.getsize(f'{rebuilt.path}/pixels.npy') - 10} "
        f"bytes, the store recorded {os.path.getsize(f'{rebuilt.path}/pixels.npy')}); removing the store "
        f"{rebuilt.path} and building it again."]
    assert np.array_equal(rebuilt.pixels, expected)
    os.remove(f"{rebuilt.path}/index.npy")  # a folder without its index
    assert existing_store_nbytes(rebuilt.path) is None
    assert np.array_equal(stored(dataset, "image", 16, square=True).pixels, expected)


def test_images_that_cannot_be_decoded_are_listed_stored_black_and_named(tmp_path):
    jpeg = encoded(picture(32, 40, seed=7), quality=95)
    scan = jpeg.index(b"\xff\xda")
    values = mixed_values()[:3] + [
        {"bytes": jpeg[: scan + 40], "path": "truncated.jpg"},  # its header reads, its pixels do not
        {"bytes": b"<html>404 Not Found</html>\n" * 8, "path": "not_an_image.jpg"},  # no header at all
        {"bytes": jpeg, "path": "fine.jpg"},
    ]
    dataset = saved_dataset(tmp_path, values)
    store, failures = stored_images_and_failures(dataset, "image", 0, num_threads=2)
    assert [(row, source) for row, source, _ in failures] == [(3, "file truncated.jpg"),
                                                              (4, "file not_an_image.jpg")]
    assert "OSError" in failures[0][2] and "UnidentifiedImageError" in failures[1][2]
    assert not store.image(3).any() and store.image(3).shape == (32, 40, 3)  # its size, from its header
    assert store.index[3, 3:5].tolist() == [32, 40]
    assert not store.image(4).any() and store.index[4, 3:5].tolist() == [1, 1]  # sized as a 1x1 image
    for row in (0, 1, 2, 5):
        assert np.array_equal(store.image(row), per_image(dataset[row]["image"]))
    again, failures_again = stored_images_and_failures(dataset, "image", 0)  # reused, failures included
    assert again.path == store.path and failures_again == failures


def test_images_kept_as_file_paths_are_read_from_their_files(tmp_path):
    # An image folder's dataset holds paths, not bytes.
    files = []
    for value in mixed_values()[:2] + mixed_values()[6:]:  # wide.jpg, tall.png, rotated.jpg
        files.append(tmp_path / value["path"])
        files[-1].write_bytes(value["bytes"])
    (tmp_path / "broken.jpg").write_bytes(b"GIF89a, or so it says")
    values = [{"path": str(file), "bytes": None} for file in [*files, tmp_path / "broken.jpg"]]
    dataset = datasets.Dataset.from_dict({"image": values, "label": [0] * 4}, features=FEATURES)  # as imagefolder's
    assert dataset.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"] is None
    store, failures = stored_images_and_failures(dataset, "image", 0, cache_dir=str(tmp_path / "cache"))
    assert [(row, source) for row, source, _ in failures] == [(3, f"file {tmp_path / 'broken.jpg'}")]
    for row, image in enumerate(dataset.select(range(3))["image"]):
        assert np.array_equal(store.image(row), per_image(image))
    assert store.index[:3, 3:5].tolist() == [[30, 40], [40, 30], [40, 30]]
    assert estimated_store_nbytes(dataset, "image") == existing_store_nbytes(store.path)
    assert np.array_equal(stored_images_and_failures(dataset, "image", 0, use_cache=False)[0].pixels, store.pixels)


def test_a_cached_store_pickles_without_its_arrays(tmp_path):
    dataset = saved_dataset(tmp_path, mixed_values())
    store = stored(dataset, "image", 64, square=True)
    payload = pickle.dumps(store)
    # Reopened from its folder, not copied (what travels: the path, the dataset's reference, which rows were checked)
    assert np.asarray(store.pixels).tobytes() not in payload and len(payload) < 4000 < store.nbytes
    restored = pickle.loads(payload)
    assert isinstance(restored.pixels, np.memmap) and restored.path == store.path
    assert np.array_equal(restored.pixels, store.pixels) and np.array_equal(restored.index, store.index)
    assert (restored.short_side, restored.interpolation) == (64, "bilinear")
    in_memory = stored(dataset, "image", 64, use_cache=False, square=True)
    assert len(pickle.dumps(in_memory)) > in_memory.nbytes  # no folder to reopen: the arrays travel
    assert np.array_equal(pickle.loads(pickle.dumps(in_memory)).image(6), store.image(6))


def test_estimated_size_is_exact_on_small_datasets_and_close_on_large_ones(tmp_path):
    dataset = saved_dataset(tmp_path, mixed_values())
    estimate = estimated_store_nbytes(dataset, "image")
    store = stored(dataset, "image", 0)
    assert estimate == existing_store_nbytes(store.path) == store.nbytes + store.index.nbytes
    assert existing_store_nbytes(store_path(dataset, "image", 0, "bicubic")) is None  # not built
    rng = np.random.default_rng(0)
    shapes = rng.integers(24, 64, size=(300, 2))
    values = [{"bytes": encoded(Image.new("RGB", (int(w), int(h)), (i % 256, 90, 40)), quality=50), "path": None}
              for i, (h, w) in enumerate(shapes)]
    many = saved_dataset(tmp_path, values, "many")
    estimate = estimated_store_nbytes(many, "image", sample=64)
    real = stored(many, "image", 0, num_threads=2)
    assert abs(estimate / existing_store_nbytes(real.path) - 1) < 0.1
    assert real.nbytes == int((shapes[:, 0] * shapes[:, 1] * 3).sum())


def test_bad_input_is_named(tmp_path):
    dataset = datasets.Dataset.from_dict({"image": tiny_images([0]), "label": [0]}, features=FEATURES)
    with pytest.raises(ValueError, match="`image_column` 'img'"):
        stored(dataset, "img", 0)
    with pytest.raises(ValueError, match="`image_column` 'label'.*not datasets.Image"):
        stored(dataset, "label", 0)
    with pytest.raises(ValueError, match="`short_side`"):
        stored(dataset, "image", -1)
    with pytest.raises(ValueError, match="`interpolation` 'cubic'.*bicubic"):
        stored(dataset, "image", 0, "cubic")
    with pytest.raises(TypeError, match="datasets.Dataset"):
        stored([np.zeros((8, 8, 3))], "image", 0)
    with pytest.raises(ValueError, match="`short_side` 16 needs"):
        stored(dataset, "image", 16)  # a store is full resolution, S x S or evaluation views
    with pytest.raises(ValueError, match="`sample`"):
        estimated_store_nbytes(dataset, "image", sample=0)
    assert isinstance(stored(dataset, "image", 16, use_cache=False, square=True), ImageStore)
