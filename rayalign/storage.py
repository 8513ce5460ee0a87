"""Storage paths: a local path or a URI that `pyarrow.fs` understands (`s3://`, `gs://`).

Stages, the registry and Serve name checkpoints and run files by such a path, so a cluster
without a shared filesystem keeps them in object storage. What must be a local file for a
library (a model directory for transformers or vLLM, a dataset file) is copied into a
node-local cache first (`local_copy`), once per content: every process reads the storage,
none relies on another's disk.

S3-compatible endpoints other than AWS's (MinIO, a local moto server) are named the way
Arrow and boto3 read them: AWS_ENDPOINT_URL (or `?endpoint_override=` in the URI).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "RAYALIGN_CACHE_DIR"
COMPLETE = ".rayalign-complete"  # written last into a finished local copy


def write_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically: a crash leaves the old file or the new one.

    The temporary file is named per process, so writers in several processes never
    share one; the data is fsynced before the rename.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)  # only there if the write failed


def is_uri(path: str | Path | None) -> bool:
    """Whether `path` names object storage (`scheme://...`) rather than a local path."""
    return path is not None and "://" in str(path)


def resolve(path: str | Path) -> str:
    """A URI as it is; a local path made absolute (Ray workers start elsewhere)."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def join(base: str | Path, *parts: str) -> str:
    """`base` / `parts` for a URI or a local path."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def basename(path: str | Path) -> str:
    """The last part of a path or URI."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: str | Path) -> str:
    if is_uri(path):
        return str(path).rstrip("/").rsplit("/", 1)[0]
    return str(Path(path).parent)


def filesystem(path: str | Path):
    """(pyarrow filesystem, path inside it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def exists(path: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_text(path: str | Path) -> str:
    """The file's text. Raises FileNotFoundError when it does not exist."""
    if not is_uri(path):
        return Path(path).read_text()
    if not exists(path):
        raise FileNotFoundError(f"{path}: no such object in storage")
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def write_text(path: str | Path, text: str) -> None:
    """Replace the file atomically: a local temp file renamed over it, or one object PUT
    (object stores replace an object whole; readers see the old or the new one)."""
    if not is_uri(path):
        write_atomic(path, text)
        return
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


def append_text(path: str | Path, text: str) -> None:
    """Add `text` at the end of the file (object stores have no append: it is rewritten)."""
    if not is_uri(path):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as f:
            f.write(text)
        return
    before = read_text(path) if exists(path) else ""
    write_text(path, before + text)


def list_names(path: str | Path) -> list[str]:
    """Names of the files directly under the folder `path` (none when it does not exist)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def remove(path: str | Path) -> bool:
    """Delete the file; returns whether it existed."""
    if not exists(path):
        return False
    fs, inner = filesystem(path)
    fs.delete_file(inner)
    return True


def upload(local_dir: str | Path, path: str | Path) -> None:
    """Copy the local folder `local_dir` to `path` (a URI or a local folder)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(
        str(Path(local_dir).resolve()),
        inner,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )


def _fingerprint(path: str) -> str:
    """What a copy of `path` is keyed by: the URI and every file's name, size and time."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file or folder in storage")
    infos = [info] if info.type == pafs.FileType.File else []
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    digest = hashlib.sha256(path.encode())
    for i in sorted(infos, key=lambda i: i.path):
        digest.update(f"{i.path}\0{i.size}\0{i.mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cache_root() -> Path:
    """This node's cache of local copies (RAYALIGN_CACHE_DIR, else ~/.cache/rayalign)."""
    default = Path.home() / ".cache" / "rayalign"
    return Path(os.environ.get(CACHE_ENV) or default) / "storage"


def local_copy(path: str) -> str:
    """A local path with the content of `path`: `path` itself when it is local, else a
    copy of the file or folder in this node's cache, made once per content (a changed
    object gets a new copy) and shared by the node's processes under a file lock."""
    if not is_uri(path):
        return path
    import pyarrow.fs as pafs

    key = _fingerprint(path)
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    target = cache_root() / key / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target.parent / COMPLETE).exists():
            return str(target)
        fs, inner = filesystem(path)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
        try:
            if fs.get_file_info(inner).type == pafs.FileType.File:
                local = staging / name
                with fs.open_input_stream(inner) as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                local = staging / name
                local.mkdir()  # Arrow creates the subfolders only
                pafs.copy_files(
                    inner,
                    str(local),
                    source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
            shutil.rmtree(target, ignore_errors=True)
            os.replace(local, target)
            (target.parent / COMPLETE).write_text(str(path) + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


@contextmanager
def local_folder_for(path: str | Path) -> Iterator[str]:
    """A local folder to write what belongs at `path`: `path` itself when it is local, else
    a temporary folder that is uploaded to `path` when the block ends without an error
    (and removed either way)."""
    if not is_uri(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        yield str(path)
        return
    staging = tempfile.mkdtemp(prefix="rayalign-upload-")
    try:
        yield staging
        upload(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class LocalMirror:
    """A run folder's small files (logs, journals) kept in a local folder and copied to
    object storage when `push` is called: appends and TensorBoard's writer need a local
    file, and object stores have no append.

    For a local `path` the folder is `path` itself and `pull`/`push` do nothing.

    Args:
        path: the run folder, a URI or a local path.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = resolve(path)
        self.remote = is_uri(path)
        self.local = Path(tempfile.mkdtemp(prefix="rayalign-run-")) if self.remote else Path(path)
        self.local.mkdir(parents=True, exist_ok=True)

    def pull(self, *names: str) -> None:
        """Copy the files `names` (relative to the run folder; none: the whole folder) that
        storage holds into the local folder, replacing what is there."""
        if not self.remote:
            return
        if not names:
            import pyarrow.fs as pafs

            if exists(self.path):
                fs, inner = filesystem(self.path)
                pafs.copy_files(
                    inner,
                    str(self.local),
                    source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
            return
        for name in names:
            source = join(self.path, name)
            if exists(source):
                target = self.local / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(read_text(source))

    def push(self) -> None:
        """Copy every local file to the run folder in storage (a file there that is not
        here stays)."""
        if self.remote:
            upload(self.local, self.path)

    def close(self, push: bool = True) -> None:
        """Push (unless `push` is False), then remove a temporary local folder."""
        if self.remote:
            try:
                if push:
                    self.push()
            finally:
                shutil.rmtree(self.local, ignore_errors=True)
