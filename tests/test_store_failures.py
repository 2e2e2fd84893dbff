"""Image stores when things go wrong: a full disk falls back with one line and leaves nothing behind, stores are
shared between users as the umask says, a damaged store is rebuilt with one warning naming the damaged file, and the
leftovers of builds whose process is gone are removed, whichever host built them.

The children are forked (the test process's imports come with them: no start-up cost) and report back through a pipe.
"""

import errno
import fcntl
import io
import json
import logging
import os
import pickle
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from synermix_hf.data import image_store
from synermix_hf.data.image_store import stored_images_and_failures
from synermix_hf.data.pipeline import prepare_views
from synermix_hf.data.transforms import TransformSpec
from synermix_hf.testing import tiny_images

FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
BAD_ROW = 4
LOGGER = "synermix_hf"


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def _rows(count: int = 6, bad_row: int | None = None) -> dict:
    """`count` 48 x 40 JPEGs (three classes); `bad_row` cut after its header (it opens, it does not decode)."""
    images = [_jpeg(image.resize((40, 48))) for image in tiny_images([i % 3 for i in range(count)], size=8, seed=5)]
    if bad_row is not None:
        images[bad_row] = images[bad_row][: images[bad_row].index(b"\xff\xda") + 40]
    return {"image": [{"bytes": data, "path": f"{row}.jpg"} for row, data in enumerate(images)],
            "label": [i % 3 for i in range(count)]}


@pytest.fixture(scope="module")
def small():
    """Six good images, in memory (their stores go where `cache_dir` says)."""
    return datasets.Dataset.from_dict(_rows(), features=FEATURES)


@pytest.fixture(scope="module")
def with_bad_image():
    """Six images, row 4 of which cannot be decoded."""
    return datasets.Dataset.from_dict(_rows(bad_row=BAD_ROW), features=FEATURES)


class _Lines(logging.Handler):
    """The warnings (and worse) of synermix_hf's loggers, as lines (in a child: it keeps them)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []
        logging.getLogger(LOGGER).addHandler(self)
        logging.getLogger(LOGGER).setLevel(logging.WARNING)  # whatever an earlier test left

    def emit(self, record):
        self.lines.append(record.getMessage())


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name.startswith(LOGGER)]


def _in_child(work):
    """`work()` in a forked child; its JSON result, after checking that the child ended normally (not killed by a
    signal: SIGBUS is what a write through a memory map on a full disk gets)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            signal.alarm(120)  # a child stuck (a lock another thread held at the fork) ends, and the test fails
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)  # pytest's capture files would count against a file-size limit
            os.dup2(quiet, 2)
            try:
                payload = json.dumps(work())
            except BaseException as error:  # noqa: BLE001 - reported to the test, which fails on it
                payload = json.dumps({"crashed": f"{type(error).__name__}: {error}"})
            with os.fdopen(write, "w") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as source:
        payload = source.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        pytest.fail(f"the child was killed by {signal.Signals(os.WTERMSIG(status)).name}")
    assert os.WEXITSTATUS(status) == 0
    result = json.loads(payload)
    assert "crashed" not in result, result["crashed"]
    return result


# ----------------------------------------------------------------------------------------------------- a full disk


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("limit", ["file-size limit", "full tmpfs"])
def test_a_full_disk_falls_back_with_one_line_and_leaves_nothing_behind(tmp_path, small, limit):
    """The file-size limit (RLIMIT_FSIZE, EFBIG) needs no privilege; the full tmpfs (ENOSPC) is the real thing, where
    a write through a memory map into a sparse file kills the process with SIGBUS (root only)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if limit == "full tmpfs" and not _mount_tmpfs(cache, "16k"):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    evaluation = small.select([0, 1, 2])
    try:

        def work():
            lines = _Lines()
            if limit == "file-size limit":  # 8 KiB: the full-resolution and square stores do not fit, an index does
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
                resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
            result = {}
            try:
                stored_images_and_failures(small, "image", 0, cache_dir=str(cache / "store"))
            except OSError as error:
                result["error"] = [type(error).__name__, str(error), error.errno]
            result["left"] = os.listdir(cache / "store")
            square = prepare_views(small, None, TransformSpec("cifar", 32), "image", "label", two_views=True,
                                   cache_dir=str(cache / "square"), decode_budget_gib=1)
            result["square"] = [square.views_on, square.description, os.listdir(cache / "square")]
            try:
                prepare_views(small, None, TransformSpec("cifar", 32), "image", "label", two_views=True,
                              cache_dir=str(cache / "square"), decode_budget_gib=1, views_on="device")
            except ValueError as error:
                result["device"] = str(error)
            if limit == "file-size limit":  # the evaluation views fit, the training set's full resolution does not
                views = prepare_views(small, evaluation, TransformSpec("imagenet", 16), "image", "label",
                                      two_views=True, cache_dir=str(cache / "imagenet"), decode_budget_gib=1)
                result["imagenet"] = [views.views_on, views.description, os.listdir(cache / "imagenet")]
            result["warnings"] = lines.lines
            return result

        result = _in_child(work)
    finally:
        if limit == "full tmpfs":
            subprocess.run(["umount", "-l", str(cache)], check=False)
    name, message, code = result["error"]
    assert name == "StoreSpaceError" and code == (27 if limit == "file-size limit" else 28)  # EFBIG, ENOSPC
    assert message.startswith(f"No room for the image store {cache / 'store'}/synermix-store-")
    assert re.search(r": it needs 34,800 bytes and [\d,]+ bytes( \([\d.]+ GiB\))? are free there \(E", message)
    assert message.endswith("the partial build was removed") and "\n" not in message
    assert result["left"] == []  # no temporary folder keeps the disk full
    views_on, description, left = result["square"]
    assert views_on == "loader" and left == []
    assert description.startswith("loader: each image decoded and transformed in the DataLoader (the device path "
                                  f"does not apply: No room for the image store {cache / 'square'}/synermix-store-")
    square_line = description.split("does not apply: ", 1)[1][:-1]
    assert square_line in result["warnings"][0] and "in the DataLoader instead" in result["warnings"][0]
    assert result["device"].startswith("`views_on` 'device' does not apply here: No room for the image store ")
    if limit == "file-size limit":  # the same fallback: the per-image path, the same pixels
        views_on, description, left = result["imagenet"]
        assert views_on == "loader" and f"does not apply: No room for the image store {cache / 'imagenet'}/" in description
        assert not [name for name in left if name.startswith(".")]
    assert len(result["warnings"]) == (2 if limit == "file-size limit" else 1)  # one line a fallback, nothing else


# ---------------------------------------------------------------------------------------------- shared between users


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)],
                         ids=["umask 022", "umask 002"])
def test_a_store_takes_the_modes_the_umask_gives(tmp_path, small, umask, folder_mode, file_mode):
    previous = os.umask(umask)
    try:
        stores = [stored_images_and_failures(small, "image", 16, centre_crop_of=16, cache_dir=str(tmp_path))[0],
                  stored_images_and_failures(small, "image", 8, square=True, cache_dir=str(tmp_path))[0]]
    finally:
        os.umask(previous)
    for store in stores:
        assert stat.S_IMODE(os.stat(store.path).st_mode) == folder_mode, store.path
        modes = {name: stat.S_IMODE(os.stat(os.path.join(store.path, name)).st_mode) for name in os.listdir(store.path)}
        assert modes == dict.fromkeys(["bad.json", "checksums.npy", "index.npy", "pixels.npy", "store.json"],
                                      file_mode)


def _another_group() -> int | None:
    """A group this process may give its files other than its own primary group (root: any), or None."""
    if os.geteuid() == 0:
        return next((gid for gid in (65534, 100, 1) if gid != os.getegid()), None)
    return next((gid for gid in os.getgroups() if gid != os.getegid()), None)


@pytest.mark.skipif(_another_group() is None, reason="needs a group other than this user's primary group")
def test_a_store_in_a_setgid_group_cache_keeps_the_folders_group_and_setgid(tmp_path, small):
    # A cache shared by a group: the folder belongs to the group, setgid so that what is made in it does too, and a
    # umask of 007 keeps everyone else out. The group's other members must be able to read the stores.
    group = _another_group()
    cache = tmp_path / "group-cache"
    cache.mkdir()
    os.chown(cache, -1, group)
    os.chmod(cache, 0o2770)
    previous = os.umask(0o007)
    try:
        stores = [stored_images_and_failures(small, "image", 16, centre_crop_of=16, cache_dir=str(cache))[0],
                  stored_images_and_failures(small, "image", 8, square=True, cache_dir=str(cache / "nested"))[0]]
    finally:
        os.umask(previous)
    for store in stores:
        folder = os.stat(store.path)
        assert folder.st_gid == group and stat.S_IMODE(folder.st_mode) == 0o2770, (store.path, oct(folder.st_mode))
        for name in os.listdir(store.path):
            info = os.stat(os.path.join(store.path, name))
            assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (group, 0o660), (name, info.st_gid, oct(info.st_mode))


@pytest.fixture
def shared_folder():
    """A folder every user can reach and write (tmp_path's parents may be 0700)."""
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="synermix-shared-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _abandoned(folder: Path, host: str = "node-7.cluster.example", pid: int = 4242) -> Path:
    """The temporary folder of a build killed on `host`: its lock file, unlocked."""
    leftover = folder / f".synermix-store-0123456789abcdef-s16-bilinear-0a1b2c3d4e5f.{host}.{pid}.k3j4h5g6.tmp"
    leftover.mkdir()
    (leftover / "build.lock").touch()
    (leftover / "pixels.npy").write_bytes(b"\0" * 64)
    return leftover


def _snapshot(folder: Path) -> dict:
    return {str(path): (path.stat().st_mtime_ns, path.stat().st_size) for path in sorted(folder.rglob("*"))}


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root (setuid); the modes are tested above")
def test_another_user_uses_a_readable_store_as_it_is_and_is_told_in_one_line_when_it_cannot(shared_folder):
    previous = os.umask(0o022)
    try:
        datasets.Dataset.from_dict(_rows(bad_row=BAD_ROW), features=FEATURES).save_to_disk(str(shared_folder / "data"))
        dataset = datasets.load_from_disk(str(shared_folder / "data"))
        store, failures = stored_images_and_failures(dataset, "image", 16, centre_crop_of=16)  # next to the dataset, 0755 / 0644
        square, _ = stored_images_and_failures(dataset, "image", 8, square=True)
        damaged = stored_images_and_failures(dataset, "image", 20, centre_crop_of=20)[0].path
        with open(os.path.join(damaged, "bad.json"), "r+") as handle:
            handle.truncate(10)
        for name in ("cache", "private"):
            (shared_folder / name).mkdir()
            (shared_folder / name).chmod(0o777)
        leftover = _abandoned(shared_folder / "cache")  # root's, whose build is gone
        os.umask(0o077)  # a user who keeps everything to himself
        unreadable = stored_images_and_failures(dataset, "image", 12, centre_crop_of=12, cache_dir=str(shared_folder / "private"))[0].path
    finally:
        os.umask(previous)
    expected = (store.path, [list(failure) for failure in failures], int(np.asarray(store.pixels, np.int64).sum()))
    before = _snapshot(shared_folder / "data")

    def work():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)  # nobody, who cannot write the dataset's folder nor read a 0700 store
        lines = _Lines()
        shared, shared_failures = stored_images_and_failures(dataset, "image", 16, centre_crop_of=16)
        result = {"shared": [shared.path, shared_failures, int(np.asarray(shared.pixels, np.int64).sum())],
                  "square": stored_images_and_failures(dataset, "image", 8, square=True)[0].path}
        for key, call in (("unreadable", lambda: stored_images_and_failures(dataset, "image", 12, centre_crop_of=12,
                                                                            cache_dir=str(shared_folder / "private"))),
                          ("damaged", lambda: stored_images_and_failures(dataset, "image", 20, centre_crop_of=20)),
                          ("unwritable", lambda: stored_images_and_failures(dataset, "image", 28, centre_crop_of=28,
                                                                            cache_dir=str(shared_folder / "data")))):
            try:
                call()
            except Exception as error:  # noqa: BLE001 - its type and words are the test
                result[key] = [type(error).__name__, isinstance(error, ValueError), str(error)]
        built, _ = stored_images_and_failures(dataset, "image", 24, centre_crop_of=24, cache_dir=str(shared_folder / "cache"))
        result["built"] = built.path
        result["warnings"] = lines.lines
        return result

    result = _in_child(work)
    assert result["shared"] == list(expected)  # root's store, used as it is, its failures included
    assert result["square"] == square.path
    assert _snapshot(shared_folder / "data") == before  # nothing rebuilt, removed or added there
    name, is_value_error, message = result["unreadable"]
    assert name == "StoreAccessError" and is_value_error and "\n" not in message
    assert message.startswith(f"Cannot read the image store {unreadable} (Permission denied): it belongs to user "
                              "root, and this user (nobody) may not read it. Ask its owner to make it readable "
                              f"(chmod -R a+rX {unreadable}), or point HF_DATASETS_CACHE (or cache_dir) at a folder")
    name, is_value_error, message = result["damaged"]
    assert name == "StoreAccessError" and "\n" not in message
    assert message.startswith(f"The image store {damaged} is damaged ({damaged}/bad.json: 10 bytes, the store recorded")
    assert "this user (nobody) may not replace it. Ask its owner (user root) to remove it" in message
    name, is_value_error, message = result["unwritable"]  # a new store, where the dataset's folder is root's
    assert name == "StoreAccessError" and "\n" not in message
    assert message.startswith(f"Cannot write the image store {shared_folder / 'data'}/synermix-store-")
    assert message.endswith(f"this user (nobody) may not create or write the folder {shared_folder / 'data'}. Ask its "
                            "owner (user root) for write access, or point HF_DATASETS_CACHE (or cache_dir) at a folder "
                            "of your own.")
    # A build of its own where it may write; root's leftover there, which nobody may remove, is left, said once.
    assert os.path.dirname(result["built"]) == str(shared_folder / "cache") and leftover.exists()
    assert result["warnings"] == [f"Image store: cannot remove {leftover}, left by a build whose process is gone (its "
                                  "build lock was free): this user may not; its owner can."]


# ----------------------------------------------------------------------------------------------------------- damage


def _cut(fraction):
    def spoil(file: Path):
        with open(file, "r+b") as handle:
            handle.truncate(int(file.stat().st_size * fraction))

    return spoil


def _garble_header(file: Path):
    with open(file, "r+b") as handle:
        handle.seek(12)
        handle.write(b"{'descr': <garbled>, ")  # same size: only reading it can tell


DAMAGES = {  # the damaged file, how, and what the warning says of it
    "pixels.npy cut short": ("pixels.npy", _cut(0.5), r"\d+ bytes, the store recorded \d+"),
    "pixels.npy empty": ("pixels.npy", _cut(0), r"0 bytes, the store recorded \d+"),
    "pixels.npy header garbled": ("pixels.npy", _garble_header, r"(ValueError|SyntaxError): .*"),
    "bad.json cut short": ("bad.json", _cut(0.8), r"\d+ bytes, the store recorded \d+"),
    "bad.json deleted": ("bad.json", os.remove, "missing"),
    "store.json deleted": ("store.json", os.remove, "missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind", ["square", "full resolution"])
def test_a_damaged_store_is_rebuilt_with_one_warning_naming_the_file(tmp_path, with_bad_image, kind, damage,
                                                                      caplog):
    def build():
        if kind == "square":
            return stored_images_and_failures(with_bad_image, "image", 8, square=True, cache_dir=str(tmp_path))
        return stored_images_and_failures(with_bad_image, "image", 16, centre_crop_of=16, cache_dir=str(tmp_path))

    store, failures = build()
    path, pixels = store.path, np.array(store.pixels)
    assert [row for row, _, _ in failures] == [BAD_ROW] and pixels.size > 0
    del store  # its memory map: the file is about to change under it
    file, spoil, problem = DAMAGES[damage]
    spoil(Path(path) / file)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again, failures_again = build()
        assert again.path == path and np.array_equal(again.pixels, pixels)
        assert failures_again == failures  # the bad image is never handed out as a black training image
        assert not again.image(BAD_ROW).any()
        build()  # then reused without a word
    [warning] = _warnings(caplog)
    assert re.fullmatch(re.escape(f"Image store: {path}/{file} is damaged (") + problem
                        + re.escape(f"); removing the store {path} and building it again."), warning), warning
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # nothing of the damaged store is left


# -------------------------------------------------------------------------------------------------------- leftovers


def test_a_leftover_whose_lock_is_free_is_removed_one_whose_lock_is_held_is_left(tmp_path, small, caplog):
    cache = tmp_path / "cache"
    cache.mkdir()
    free = _abandoned(cache, "node-7.cluster.example")  # killed on another host: no pid of this host to check
    held = _abandoned(cache, "node-8.cluster.example")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); sys.stdin.read()", str(held / "build.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # a build running on node 8
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            first = stored_images_and_failures(small, "image", 16, centre_crop_of=16, cache_dir=str(cache))[0]
        assert not free.exists() and held.exists()
        assert _warnings(caplog) == [f"Image store: removed {free}, left by a build whose process is gone (its build "
                                     "lock was free)."]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    second = stored_images_and_failures(small, "image", 12, centre_crop_of=12, cache_dir=str(cache))[0]  # node 8's build is gone now
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(first.path), os.path.basename(second.path)])


def test_without_flock_a_leftover_of_this_host_is_judged_by_its_pid(tmp_path, small, monkeypatch, caplog):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # a file system without flock (Lustre's `noflock`)

    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = _abandoned(tmp_path, socket.gethostname(), pid=int(dead.stdout))
    running = _abandoned(tmp_path, socket.gethostname(), pid=os.getpid())
    elsewhere = _abandoned(tmp_path, "node-7.cluster.example")  # no lock to tell: left, as before the locks
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store = stored_images_and_failures(small, "image", 16, centre_crop_of=16, cache_dir=str(tmp_path))[0]
    assert not gone.exists() and running.exists() and elsewhere.exists()
    assert _warnings(caplog) == [f"Image store: removed {gone}, left by a build whose process is gone (process "
                                 f"{int(dead.stdout)} of this host is gone)."]
    assert "build.lock" not in os.listdir(store.path)


class _StoredRows(torch.utils.data.Dataset):
    """A store's images, one an item, as a DataLoader's workers read them."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.store.image(row)))


def _overwrite_row(store, row: int) -> None:
    """Overwrite row `row` of the store's pixels in place, same size (bit rot, a torn copy): only the pixels can tell."""
    offset, height, width = (int(value) for value in store.index[row, :3])
    with open(Path(store.path) / "pixels.npy", "r+b") as handle:
        handle.seek(store.pixels.offset + offset)
        handle.write((bytes(range(1, 256)) * (height * width * 3 // 255 + 1))[: height * width * 3])  # never black


def _store_of_kind(kind, dataset, cache_dir):
    """The square recipes' store (`kind` "square") or the full-resolution store of `dataset`, in `cache_dir`."""
    if kind == "square":
        return stored_images_and_failures(dataset, "image", 8, square=True, cache_dir=str(cache_dir))[0]
    return stored_images_and_failures(dataset, "image", 0, cache_dir=str(cache_dir))[0]


@pytest.mark.parametrize("kind", ["square", "full resolution"])
def test_pixels_overwritten_in_place_in_a_small_store_are_found_when_it_is_opened_and_it_is_rebuilt(tmp_path,
                                                                                                   with_bad_image,
                                                                                                   kind, caplog):
    def build():
        return _store_of_kind(kind, with_bad_image, tmp_path)

    store = build()
    path, pixels = store.path, np.array(store.pixels)
    _overwrite_row(store, 1)  # the manifest, the sizes and the headers all still agree
    _overwrite_row(store, BAD_ROW)  # a failed image's black row, too: never handed out as anything else
    del store
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = build()
        assert again.path == path and np.array_equal(again.pixels, pixels)
        build()  # then reused without a word
    assert _warnings(caplog) == [
        f"Image store: {path}/pixels.npy is damaged (row 1 (and 1 more) changed since the store was written: disk "
        f"damage, or a copy cut short or overwritten); removing the store {path} and building it again."]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


@pytest.mark.parametrize("kind", ["square", "full resolution"])
def test_pixels_overwritten_in_place_in_a_large_store_are_read_as_built_and_the_next_run_rebuilds_it(
        tmp_path, with_bad_image, kind, caplog, monkeypatch):
    # A store above the size checked when opened (1 GiB; here every store) is checked row by row as it is read.
    monkeypatch.setattr(image_store, "_CHECK_AT_OPEN_BYTES", 0, raising=False)
    with_bad_image.save_to_disk(str(tmp_path / "data"))  # read from its files, as a Hub dataset is: its stores pickle
    with_bad_image = datasets.load_from_disk(str(tmp_path / "data"))  # with a reference to them, for a worker's repair
    tmp_path = tmp_path / "cache"

    def build():
        return _store_of_kind(kind, with_bad_image, tmp_path)

    store = build()
    path, pixels = store.path, np.array(store.pixels)
    images = [np.array(store.image(row)) for row in range(len(store))]
    _overwrite_row(store, 1)
    _overwrite_row(store, BAD_ROW)  # a failed image's black row, too: never handed out as anything else
    del store
    pixels_file = f"{path}/pixels.npy"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        damaged = build()  # the manifest, the sizes and the headers all still agree
        assert damaged.path == path and not np.array_equal(damaged.pixels, pixels)
        worker = pickle.loads(pickle.dumps(damaged))  # as a spawned DataLoader worker gets it
        for reader in (damaged, worker):
            assert all(np.array_equal(reader.image(row), images[row]) for row in range(len(images)))
            if reader.square:  # the gather of a batch checks its rows too
                frames = reader.square_batch([1, 0, BAD_ROW]).numpy()
                assert all(np.array_equal(frame, images[row]) for frame, row in zip(frames, [1, 0, BAD_ROW]))
        assert _warnings(caplog) == [
            f"Image store: {pixels_file} is damaged (row 1 changed since the store was written: disk damage, or a "
            "copy cut short or overwritten); its damaged images are decoded again from the dataset for this run, and "
            "the next run builds the store again."]
        caplog.clear()
        del damaged, worker
        rebuilt = build()  # the next run
        assert np.array_equal(rebuilt.pixels, pixels) and "damaged.json" not in os.listdir(path)
        del rebuilt
        build()  # then reused without a word
    assert _warnings(caplog) == [
        f"Image store: {pixels_file} is damaged (an earlier run found row 1 changed since the store was written: disk "
        f"damage, or a copy cut short or overwritten); removing the store {path} and building it again."]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


def test_a_store_of_the_former_format_without_checksums_is_rebuilt_with_one_warning(tmp_path, small, caplog):
    store = stored_images_and_failures(small, "image", 16, centre_crop_of=16, cache_dir=str(tmp_path))[0]
    path, pixels = Path(store.path), np.array(store.pixels)
    del store
    manifest = json.loads((path / "store.json").read_text())  # as format 2 wrote it: no checksums
    del manifest["files"]["checksums.npy"]
    (path / "checksums.npy").unlink()
    (path / "store.json").write_text(json.dumps(manifest | {"format": 2}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = stored_images_and_failures(small, "image", 16, centre_crop_of=16, cache_dir=str(tmp_path))[0]
    assert np.array_equal(again.pixels, pixels) and again.checksums is not None
    assert _warnings(caplog) == [f"Image store: {path}/store.json is damaged (format 2, this version reads 3); "
                                 f"removing the store {path} and building it again."]


# --------------------------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_during_a_build_stops_it_after_its_chunk_with_one_line_and_removes_it(tmp_path):
    # Row 0's image is a named pipe: the build's first chunk blocks reading it until this test writes it, so SIGTERM
    # arrives during the build, every time.
    pipe = tmp_path / "slow.png"
    os.mkfifo(pipe)
    rows = _rows(4)
    rows["image"][0] = {"bytes": None, "path": str(pipe)}
    data = datasets.Dataset.from_dict(rows, features=FEATURES)
    cache = tmp_path / "cache"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: builds, and reports what stopped it
        try:
            os.close(read)
            signal.alarm(120)
            try:
                stored_images_and_failures(data, "image", 16, centre_crop_of=16, cache_dir=str(cache), num_threads=1)
                payload = {"error": None}
            except BaseException as error:  # noqa: BLE001 - reported to the test
                payload = {"error": type(error).__name__, "message": str(error)}
            with os.fdopen(write, "w") as out:
                out.write(json.dumps(payload))
        finally:
            os._exit(0)
    os.close(write)
    with open(pipe, "wb") as image:  # opens once the build is reading it
        os.kill(pid, signal.SIGTERM)
        image.write(_jpeg(Image.new("RGB", (40, 48))))
    with os.fdopen(read) as source:
        payload = source.read()
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), f"the build died of {signal.Signals(os.WTERMSIG(status)).name}, without a word"
    result = json.loads(payload)
    assert result["error"] == "StoreBuildStopped", result
    assert result["message"] == ("SIGTERM received while building the image store (reading image sizes): stopped "
                                 "before training, and the partial store was removed. Run the same command again to "
                                 "build it.")
    assert not cache.exists() or os.listdir(cache) == []  # no partial store, no temporary folder


def test_the_dataloader_workers_of_a_run_share_which_rows_changed(tmp_path, small, monkeypatch):
    # Workers started afresh each epoch share which rows were checked, so that each row is hashed once a run. A row
    # one worker found changed must be decoded again by the next worker too, not taken for checked and read as stored.
    monkeypatch.setattr(image_store, "_CHECK_AT_OPEN_BYTES", 0, raising=False)  # checked as read, as a large store
    small.save_to_disk(str(tmp_path / "data"))
    data = datasets.load_from_disk(str(tmp_path / "data"))
    store = stored_images_and_failures(data, "image", 16, centre_crop_of=16, cache_dir=str(tmp_path / "cache"))[0]
    image = np.array(store.image(1))
    _overwrite_row(store, 1)
    del store
    store = stored_images_and_failures(data, "image", 16, centre_crop_of=16, cache_dir=str(tmp_path / "cache"))[0]
    for epoch in range(2):  # each epoch's worker forked from this process, which reads nothing itself
        loader = torch.utils.data.DataLoader(_StoredRows(store), batch_size=None, num_workers=1, sampler=[1],
                                             multiprocessing_context="fork")
        assert [np.array_equal(batch.numpy(), image) for batch in loader] == [True], f"epoch {epoch}"
