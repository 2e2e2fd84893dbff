"""The life of an image store's folder on a shared disk: built whole or not at all, shared as the umask says, checked
at every reuse, and removed when it is damaged or abandoned.

`synermix_hf.data.image_store` decides what a store holds (the layout of its rows, how the images are decoded into
them); this module, how its folder comes to be and how long it is trusted. A store's folder holds `pixels.npy` and
`checksums.npy`, `index.npy`, `bad.json` (the images that
failed, often `[]`) and `store.json`, its manifest: the format version, the number of rows, each file's size, and the
SHA-256 of the small files. The guarantees:

* Complete or absent: a store is built (`StoreBuild`) in a temporary sibling folder, its manifest written last, and
  renamed into place at the end (`os.replace`, atomic): readers see no store or the whole store, an interrupted build
  never leaves a partial store, and a folder without a valid manifest is never used. Every write of the store's
  files raises when it fails (none is lost unseen in a buffer), so no manifest records a file cut short as whole.
* A full disk (or a quota, or a file-size limit): the pixels file's space is reserved (`os.posix_fallocate`) before
  anything is decoded and the rows are written with `os.pwrite`, never through a writable memory map (a write through
  a map into a sparse file on a full disk kills the process with SIGBUS). ENOSPC, EDQUOT or EFBIG, at the reservation
  or at any later write, removes the partial build and raises `StoreSpaceError`, one line naming the store's folder,
  the bytes it needs and the bytes free there. Decision: the run falls back rather than stops.
  `synermix_hf.data.pipeline.prepare_views` logs that line as a warning and in its description, and reads the images
  as it would have without room for them (in the DataLoader): the pixels are exactly the same either way, only
  slower. Only `views_on="device"` stops, with a `ValueError`. In a distributed run the other local processes, let in after the local main process's failed
  build, find no store and fall back alike.
* Permissions: the store's folder and files get the modes the umask gives (`0o777 & ~umask`, `0o666 & ~umask`), as
  `datasets`' own cache files do, so that a shared `HF_DATASETS_CACHE` works; in a setgid folder (a cache shared by
  a group) the store's folder keeps the setgid bit, so that it and its files belong to the folder's group. A store another user built is used as
  it is when it can be read, even where nothing can be written (found next to the dataset's files even when this
  user cannot write there); one that cannot be read stops with `StoreAccessError` (a `PermissionError` and a
  `ValueError`), one line naming it and what to do; so does a folder this user cannot write a new store into.
* Damage: every reuse checks the manifest (`check_manifest`: its format, each file's size, the SHA-256 of the index
  and of `bad.json`), then the arrays' headers and the index against the pixels; anything missing, cut short or
  unparsable makes the store damaged (`BrokenStore`): one warning naming the damaged file, the store removed
  (`remove_damaged`) and built again. A store without its `bad.json` is never trusted, so an image that failed is
  never taken for a black training image. A damaged store this user cannot remove stops with `StoreAccessError`.
* Pixels changed in place (bit rot, a copy torn but of the right size): each row's pixels carry their checksum
  (`checksums.npy`, xxh3-64, `row_checksum`). `synermix_hf.data.image_store` checks a store of up to 1 GiB of pixels in
  full when a run opens it (damaged: rebuilt as above); hashing a larger one at every reuse would cost more than the
  decoding it saves, so a row is checked the first time the run reads it (its cost, BENCHMARKS.md). A row that fails
  its check is decoded again from the dataset for the rest of the run, and `mark_damaged` leaves `damaged.json` in the
  folder, with one warning naming the pixels file (said by the first process of the run that finds it); the next
  run's check of the manifest finds the mark: the store is damaged, and rebuilt as above.
* Leftovers: a build holds an advisory lock (`fcntl.flock`) on `build.lock` in its temporary folder until the rename.
  Every build first removes the temporary folders (of any store, from any host) whose lock it can take, their builder
  being gone, with one warning each; where the file system has no `flock`, those of this host whose process is gone.
  Across hosts this needs a file system whose `flock` locks are seen by every host (NFS's are; Lustre needs its
  `flock` mount option, not `localflock`). Temporary files of the square cache's former format
  (`synermix-decoded-*.npy.*.tmp`) older than a day are removed too.

    with StoreBuild(path) as build:                         # whatever stops the build removes its folder
        build.start(needed)                                 # the locked temporary folder: build.folder
        pixels = build.reserve_pixels(total)                # pixels.write(offset, rows), ...
        build.finish(index, failures, built_meanwhile)      # index, failures, manifest (last), modes; renamed
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import xxhash  # a requirement of `datasets` (its fingerprints), so always installed with it

__all__ = [
    "CHECKSUMS_FILE",
    "FAILURES_FILE",
    "INDEX_FILE",
    "PIXELS_FILE",
    "STORE_FORMAT_VERSION",
    "STORE_PREFIX",
    "BrokenStore",
    "PixelsFile",
    "StoreAccessError",
    "StoreBuild",
    "StoreSpaceError",
    "check_manifest",
    "load_failures",
    "mark_damaged",
    "remove_damaged",
    "row_checksum",
    "unreadable",
]

logger = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 3
"""Bumped when the layout or the decoding rule changes, so that old stores are not reused (the version is part of a
store's name, and its manifest's). 2: the manifest (`store.json`) and an always present `bad.json`; `as_rgb`'s
conversion of 16-bit images. 3: each row's checksum (`checksums.npy`)."""

STORE_PREFIX = "synermix-store-"
"""The start of every store folder's name (its temporary folders: `.` and this)."""

PIXELS_FILE, INDEX_FILE, FAILURES_FILE = "pixels.npy", "index.npy", "bad.json"
CHECKSUMS_FILE = "checksums.npy"
"""uint64 `[N]`: each row's `row_checksum`, as the build wrote the row."""
_MANIFEST_FILE, _LOCK_FILE, _DAMAGE_FILE = "store.json", "build.lock", "damaged.json"
_LEGACY_TEMPORARY = ("synermix-decoded-", ".tmp")  # the square cache's former `<name>.npy.<random>.tmp` files
_LEGACY_TEMPORARY_AGE_S = 24 * 3600
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_ALLOWED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_YOUR_OWN_FOLDER = "point HF_DATASETS_CACHE (or cache_dir) at a folder of your own."


class StoreSpaceError(OSError):
    """No room to build an image store (ENOSPC, EDQUOT or EFBIG: a full disk, a quota, a file-size limit). The
    partial build was removed; the message is one line naming the store's folder, the bytes it needs and the bytes
    free there. `errno` is the write's."""


class StoreAccessError(PermissionError, ValueError):
    """An image store this user cannot read, or cannot write where one must be written or replaced. The message is
    one line naming the folder and what to do. A `ValueError` too, so that the command line reports it as a problem
    of its settings, in one paragraph, not a traceback."""


class BrokenStore(Exception):
    """A store whose `file` is missing, cut short, unparsable or disagrees with the rest (`problem` says how)."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"{os.path.basename(file)}: {problem}")
        self.file, self.problem = file, problem


# ------------------------------------------------------------------------------------------------- owners and modes


def process_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (`os.umask` sets it to read it, which
    another thread creating a file at that instant would see)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_modes(folder: str) -> None:
    """The store's files get the mode the umask gives, as `datasets`' own cache files do, whatever made them."""
    mode = 0o666 & ~process_umask()
    for name in os.listdir(folder):
        if name != _LOCK_FILE:
            os.chmod(os.path.join(folder, name), mode)


def _owner(path: str) -> str:
    """The user who owns `path`, by name where known."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "its owner"
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"user {uid}"


def _this_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def unreadable(path: str, error: OSError) -> StoreAccessError:
    """The error for the store `path` that this user may not read (`error`, a `PermissionError`)."""
    return StoreAccessError(
        f"Cannot read the image store {path} ({error.strerror or error}): it belongs to {_owner(path)}, and this "
        f"user ({_this_user()}) may not read it. Ask its owner to make it readable (chmod -R a+rX {path}), or "
        + _YOUR_OWN_FOLDER
    )


@contextlib.contextmanager
def _writing(path: str, folder: str) -> Iterator[None]:
    """Where this user may not write the store `path` into `folder` (EACCES, EPERM, EROFS), `StoreAccessError`: one
    line naming the folder, or where its making stopped, and its owner."""
    try:
        yield
    except OSError as error:
        if error.errno not in _NOT_ALLOWED:
            raise
        existing = folder  # the folder, or where its making stopped
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        owner = (f"its owner ({_owner(existing)})" if existing == folder else
                 f"the owner of {existing} ({_owner(existing)})")
        raise StoreAccessError(
            f"Cannot write the image store {path} ({error.strerror or error}): this user ({_this_user()}) may not "
            f"create or write the folder {folder}. Ask {owner} for write access, or " + _YOUR_OWN_FOLDER
        ) from None


# -------------------------------------------------------------------------------------------------------- the files


def _save_array(file: str, array: np.ndarray) -> None:
    """`np.save`, but every failed write raises: `np.save` writes through C stdio, whose buffered writes can fail
    unseen at close on a full disk, leaving a file cut short that the manifest would then record as complete."""
    with open(file, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(array))
        # Its bytes as a flat uint8 array: `memoryview.cast` refuses an empty array's shape (a split with no rows).
        handle.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))


class PixelsFile:
    """The pixels' `.npy` file, its space reserved before anything is decoded and its rows written with `os.pwrite`.

    Never through a writable memory map: the map's file would be sparse, and on a full disk a write through the map
    into a hole kills the process with SIGBUS, leaving the temporary folder that fills the disk. A reservation or a
    write raises OSError (ENOSPC, EDQUOT, EFBIG) instead, which the build turns into `StoreSpaceError`.
    """

    def __init__(self, file: str, total: int):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (total,)})
        self.start = len(header.getvalue())
        self.fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            self._write_at(0, header.getvalue())
            size = self.start + total
            try:
                os.posix_fallocate(self.fd, 0, size)  # glibc writes the blocks itself where the file system cannot
            except OSError as error:
                if error.errno in _NO_ROOM:
                    raise
                os.ftruncate(self.fd, size)  # no reservation here (EINVAL, EOPNOTSUPP): the writes still raise
        except BaseException:
            self.close()
            raise

    def write(self, offset: int, data: np.ndarray) -> None:
        """Write `data` (uint8) at byte `offset` of the pixels."""
        self._write_at(self.start + offset, memoryview(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)))

    def _write_at(self, position: int, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self.fd, view, position)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view, position = view[written:], position + written

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # NFS reports a write it could not make at close


def row_checksum(data: np.ndarray | memoryview) -> int:
    """The checksum of one row's pixels (a contiguous uint8 buffer): xxh3-64, faster than copying them."""
    return xxhash.xxh3_64_intdigest(data)


# ----------------------------------------------------------------------------------------------------- the manifest


def _sha256(file: str) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_STORE_FILES = (PIXELS_FILE, CHECKSUMS_FILE, INDEX_FILE, FAILURES_FILE)


def _write_manifest(folder: str, num_rows: int) -> None:
    """Write `store.json`, last: what a complete store of `folder` holds. The pixels are checked here by size only
    (hashing gigabytes at every reuse would cost more than the decoding it saves; each row is checked against
    `checksums.npy` when first read), the small files by their SHA-256 too."""
    files = {}
    for name in _STORE_FILES:
        file = os.path.join(folder, name)
        files[name] = {"bytes": os.path.getsize(file)} | ({} if name == PIXELS_FILE else {"sha256": _sha256(file)})
    with open(os.path.join(folder, _MANIFEST_FILE), "w", encoding="utf-8") as handle:
        json.dump({"format": STORE_FORMAT_VERSION, "rows": num_rows, "files": files}, handle, indent=1)


def check_manifest(folder: str, digests: bool = True) -> int:
    """The number of rows the manifest of `folder` records, after checking each file against it (its size, and with
    `digests` the SHA-256 of the small files, and the mark of pixels found damaged by a reader, `mark_damaged`):
    `BrokenStore` naming the first damaged file."""
    manifest_file = os.path.join(folder, _MANIFEST_FILE)

    def parse(manifest: Any) -> tuple[Any, int, dict[str, tuple[int, str | None]]]:
        if manifest["format"] != STORE_FORMAT_VERSION:  # another format lists other files: said as such
            return manifest["format"], 0, {}
        version, num_rows, files = manifest["format"], int(manifest["rows"]), dict(manifest["files"])
        expected = {name: (int(files[name]["bytes"]), files[name].get("sha256")) for name in _STORE_FILES}
        return version, num_rows, expected

    version, num_rows, expected = _load_json(manifest_file, parse)
    if version != STORE_FORMAT_VERSION:
        raise BrokenStore(manifest_file, f"format {version!r}, this version reads {STORE_FORMAT_VERSION}")
    if digests:
        mark = _load_json(os.path.join(folder, _DAMAGE_FILE), lambda found: str(found["problem"]), missing=None)
        if mark is not None:
            raise BrokenStore(os.path.join(folder, PIXELS_FILE), f"an earlier run found {mark}")
    for name, (nbytes, digest) in expected.items():
        file = os.path.join(folder, name)
        try:
            size = os.stat(file).st_size
        except FileNotFoundError:
            raise BrokenStore(file, "missing") from None
        if size != nbytes:
            raise BrokenStore(file, f"{size} bytes, the store recorded {nbytes}")
        if digests and digest is not None and _sha256(file) != digest:
            raise BrokenStore(file, "its contents changed since the store was written")
    return num_rows


def _write_failures(file: str, failures: list[tuple[int, str, str]]) -> None:
    """Keep the images that failed, `(row, source, error)`, in `file` (`bad.json`; `[]` when none did)."""
    with open(file, "w", encoding="utf-8") as handle:
        json.dump(failures, handle)


def load_failures(file: str, num_rows: int) -> list[tuple[int, str, str]]:
    """The failures kept in `file`; `BrokenStore` when it is missing or not a list of `[row, source, error]` with
    rows in range (a store without its failures would hand the failed images out as black training images)."""
    failures = _load_json(file, lambda rows: [(int(row), str(source), str(error)) for row, source, error in rows])
    if any(not 0 <= row < num_rows for row, _, _ in failures):
        raise BrokenStore(file, f"it names rows outside the {num_rows} of the store")
    return failures


_MISSING = object()


def _load_json(file: str, parse: Callable[[Any], Any], missing: Any = _MISSING) -> Any:
    """`parse` of the JSON in `file`; `BrokenStore` when the file is missing (or `missing`, where given), or it or its
    contents cannot be read (`PermissionError` as it is)."""
    try:
        with open(file, encoding="utf-8") as handle:
            return parse(json.load(handle))
    except FileNotFoundError:
        if missing is not _MISSING:
            return missing
        raise BrokenStore(file, "missing") from None
    except PermissionError:
        raise
    except Exception as error:  # JSONDecodeError, UnicodeDecodeError, a wrong shape (KeyError, TypeError, ...), ...
        raise BrokenStore(file, f"unreadable ({type(error).__name__}: {error})") from error


# ------------------------------------------------------------------------------------------------------ temporaries


def _temporary_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.{socket.gethostname()}."


def _temporary_pid(name: str) -> int | None:
    """The pid in the name of a temporary folder made on this host (`.<store>.<host>.<pid>.<random>.tmp`), else None
    (a host name may hold dots, a store's name and the other parts do not)."""
    try:
        host, pid, _, _ = name[1:].split(".", 1)[1].rsplit(".", 3)
        return int(pid) if host == socket.gethostname() else None
    except (IndexError, ValueError):
        return None


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False  # alive (or its pid was reused): left alone


def _discard(folder: str, why: str) -> None:
    """Remove the abandoned temporary `folder`, with one warning line naming it."""
    shutil.rmtree(folder, ignore_errors=True)
    if os.path.lexists(folder):
        logger.warning("Image store: cannot remove %s, left by a build whose process is gone (%s): this user may not; "
                       "its owner can.", folder, why)
    else:
        logger.warning("Image store: removed %s, left by a build whose process is gone (%s).", folder, why)


def _remove_if_abandoned(folder: str) -> None:
    """Remove the temporary `folder` when the build that made it is gone: its lock is free (whatever host built it),
    or, where there is no lock to judge by, it was made on this host by a process that is gone."""
    lock_file = os.path.join(folder, _LOCK_FILE)
    fd, exclusive = None, True
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except PermissionError:
        try:  # another user's: a shared lock tells as well whether its builder holds it
            fd, exclusive = os.open(lock_file, os.O_RDONLY), False
        except OSError:
            return  # a folder this user cannot look into, nor remove
    except FileNotFoundError:
        pass  # a build older than the locks, or one making its folder this instant: judged by its pid below
    if fd is not None:
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # its build holds the lock: running, on this host or another
            except OSError:
                pass  # no flock on this file system: judged by its pid below
            else:
                _discard(folder, "its build lock was free")
                return
        finally:
            os.close(fd)
    pid = _temporary_pid(os.path.basename(folder))
    if pid is not None and _process_gone(pid):
        _discard(folder, f"process {pid} of this host is gone")


def _remove_abandoned_builds(path: str) -> None:
    """Remove the temporary folders of the stores in `path`'s folder (of any store, built on any host) whose build is
    gone (killed mid-build), and the square cache's former temporary files left there for over a day."""
    parent = os.path.dirname(path)
    if not os.access(parent, os.W_OK | os.X_OK):
        return  # nothing in it can be removed by this user
    try:
        names = os.listdir(parent)
    except OSError:
        return
    legacy_prefix, legacy_suffix = _LEGACY_TEMPORARY
    for name in names:
        entry = os.path.join(parent, name)
        try:
            if name.startswith(f".{STORE_PREFIX}") and name.endswith(".tmp"):
                _remove_if_abandoned(entry)
            elif name.startswith(legacy_prefix) and name.endswith(legacy_suffix) and ".npy." in name:
                # No pid or lock to judge by; the former format's builds wrote them through a memory map, which
                # keeps their time of change recent while they run.
                if time.time() - os.stat(entry).st_mtime > _LEGACY_TEMPORARY_AGE_S:
                    os.remove(entry)
                    logger.warning("Image store: removed %s, a temporary file of the former square cache, left by a "
                                   "build interrupted over a day ago.", entry)
        except OSError as error:  # gone meanwhile, or not this user's to remove: left
            logger.debug("Image store: leaving %s (%s).", entry, error)


def _new_build_folder(path: str) -> tuple[str, int]:
    """A new temporary folder for the build of `path`, with the mode the umask gives, and the descriptor of its lock
    file, locked until the build ends (unlocked where the file system has no flock: builds of this host then judge
    the folder by the pid in its name)."""
    parent = os.path.dirname(path)
    with _writing(path, parent):
        os.makedirs(parent, exist_ok=True)
    _remove_abandoned_builds(path)
    # A setgid parent (a cache shared by a group) gave the new folder its group and setgid bit: kept, so that the
    # files made in it take the group too (a mode without the bit would clear it, and they would take this user's
    # primary group, which the group's other members, kept out by a umask of 007, could not read).
    mode = (0o777 & ~process_umask()) | (os.stat(parent).st_mode & stat.S_ISGID)
    for _ in range(3):
        with _writing(path, parent):
            temporary = tempfile.mkdtemp(prefix=f"{_temporary_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=parent)
        os.chmod(temporary, mode)  # mkdtemp makes it 0700, which would keep every other user out of the store
        lock_file = os.path.join(temporary, _LOCK_FILE)
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            continue  # another build took the folder, still without its lock, for abandoned
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            return temporary, fd
        try:
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                return temporary, fd
        except FileNotFoundError:
            pass
        os.close(fd)  # another build took the folder for abandoned in the instant before it was locked
    raise RuntimeError(f"Cannot start building the image store {path}: other builds removed its temporary folder "
                       "three times over. Are several versions of synermix_hf building into that folder?")


# -------------------------------------------------------------------------------------------------------- the build


def _bytes_text(nbytes: int) -> str:
    return f"{nbytes:,} bytes" + (f" ({nbytes / 2**30:.2f} GiB)" if nbytes >= 2**30 / 100 else "")


def _no_room(path: str, needed: int | None, error: OSError) -> StoreSpaceError:
    """The one-line error of a build of `path` that ran out of room (`error`), after its partial build is removed."""
    try:
        free_text = f"{_bytes_text(shutil.disk_usage(os.path.dirname(path)).free)} are free there"
    except OSError:
        free_text = "its free space is unknown"
    need_text = f"it needs {_bytes_text(needed)}" if needed is not None else "it needs room"
    code = errno.errorcode.get(error.errno, str(error.errno))
    problem = StoreSpaceError(f"No room for the image store {path}: {need_text} and {free_text} ({code}, "
                              f"{error.strerror or error}: a full disk, a quota or a file-size limit); the partial "
                              "build was removed")
    problem.errno = error.errno
    return problem


class StoreBuild:
    """The build of the store `path`, as a context: complete or absent.

    `start` makes its temporary folder (`folder`), locked until the build ends, after removing the abandoned builds
    beside it; the pixels are written into `reserve_pixels`'s file; `finish` writes the index and the failures, then
    the manifest, last, gives the files the umask's modes and renames the folder into place. Whatever stops the build
    before that removes the folder; running out of room (from the moment the context is entered) raises
    `StoreSpaceError` instead of the `OSError`.
    """

    def __init__(self, path: str):
        self.path = path
        self.folder: str | None = None  # the temporary folder, until it is renamed into place or removed
        self._needed: int | None = None
        self._lock: int | None = None
        self._pixels: PixelsFile | None = None
        self._renamed = False

    def __enter__(self) -> StoreBuild:
        return self

    def start(self, needed: int) -> None:
        """Make the locked temporary folder; `needed`: the store's bytes, for a `StoreSpaceError`."""
        self._needed = needed
        self.folder, self._lock = _new_build_folder(self.path)

    def reserve_pixels(self, nbytes: int) -> PixelsFile:
        """The pixels' file of the build, `nbytes` of pixels, its space reserved now (before hours of decoding)."""
        self._pixels = PixelsFile(os.path.join(self.folder, PIXELS_FILE), nbytes)
        return self._pixels

    def finish(self, index: np.ndarray, failures: list[tuple[int, str, str]], built_meanwhile: Callable[[], bool],
               checksums: np.ndarray | None = None) -> None:
        """Close the pixels (where they were reserved), write their rows' `checksums` (uint64 `[N]`, `row_checksum`),
        `index` and `failures`, then the manifest, last, and rename the folder into place; where that fails because
        another process's store took the place meanwhile (`built_meanwhile()`: it is complete), use that one and
        remove this build."""
        if self._pixels is not None:
            self._pixels.close()
            if checksums is None or len(checksums) != len(index):
                raise ValueError("A store with pixels needs each row's checksum.")
            _save_array(os.path.join(self.folder, CHECKSUMS_FILE), np.asarray(checksums, dtype=np.uint64))
        _save_array(os.path.join(self.folder, INDEX_FILE), index)
        _write_failures(os.path.join(self.folder, FAILURES_FILE), failures)
        _write_manifest(self.folder, len(index))
        _set_modes(self.folder)
        try:
            os.replace(self.folder, self.path)  # atomic: readers see no store or the whole store
            self._renamed = True
        except OSError:
            if not built_meanwhile():
                raise
            logger.info("Image store: %s was built meanwhile by another process; using it.", self.path)
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        try:
            if kind is not None:
                if self._pixels is not None:
                    self._pixels.close()
                if self.folder is not None:
                    shutil.rmtree(self.folder, ignore_errors=True)
                if isinstance(error, OSError) and error.errno in _NO_ROOM and not isinstance(error, StoreSpaceError):
                    raise _no_room(self.path, self._needed, error) from error
        finally:
            if self._lock is not None:
                if self._renamed:  # the lock file moved into the store with the rename; a store does not keep it
                    try:
                        os.remove(os.path.join(self.path, _LOCK_FILE))
                    except OSError:
                        pass
                os.close(self._lock)


# --------------------------------------------------------------------------------------------------------- damage


def mark_damaged(folder: str, problem: str) -> bool | None:
    """Mark the store `folder`'s pixels damaged (`problem`, e.g. a row that fails its checksum), so that the next
    run's check of its manifest rebuilds it; the processes of this run go on reading it. True when this call made
    the mark, False when another process had made it already, None when this user may not write it."""
    try:
        fd = os.open(os.path.join(folder, _DAMAGE_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    except OSError:
        return None
    try:
        os.write(fd, json.dumps({"file": PIXELS_FILE, "problem": problem}).encode())
    except OSError:
        pass  # the mark's presence is what counts; a mark without its text names the problem as unreadable
    finally:
        os.close(fd)
    return True


def remove_damaged(path: str, problem: BrokenStore) -> None:
    """Remove the damaged store `path`, with one warning naming the damaged file, so that it is built again;
    `StoreAccessError` when this user may not remove it (another user's store in a folder it cannot write)."""
    parent = os.path.dirname(path)
    if not (os.access(parent, os.W_OK | os.X_OK) and os.access(path, os.W_OK | os.X_OK)):
        raise StoreAccessError(
            f"The image store {path} is damaged ({problem.file}: {problem.problem}) and this user "
            f"({_this_user()}) may not replace it. Ask its owner ({_owner(path)}) to remove it, or " + _YOUR_OWN_FOLDER
        )
    logger.warning("Image store: %s is damaged (%s); removing the store %s and building it again.", problem.file,
                   problem.problem, path)
    # Renamed away first, so that no reader meets it half removed; the name of an abandoned build's folder, so that
    # a later build removes whatever this one cannot.
    trash = os.path.join(parent, f"{_temporary_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return  # removed meanwhile by another process
    shutil.rmtree(trash, ignore_errors=True)
