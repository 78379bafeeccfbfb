"""Videos read by URL (``s3://``, ``gs://``, ``http(s)://`` through fsspec) and members of tar
shards, without copying them first.

``open_input(path)`` gives what ``av.open`` takes: the path itself for a local file, else a
seekable file object whose reads are range requests of ``BLOCK_BYTES`` blocks, kept in one
process-wide cache of at most ``cache_bytes()`` (the probe, the decode and the header reads
after it share the blocks of a video, so each byte is fetched once), with the next
``READ_AHEAD`` blocks fetched in the background while the decoder works on this one. A tar
member (``shard.tar#key.mp4@OFFSET+SIZE``, see ``member_path``) is a window of its shard.
``local_copy(path)`` spools a video to local disk for the decoders that need a file name
(decord, torchcodec), bounded by ``spool_bytes()`` in all, removed after use.

Transient failures (a dropped connection, a server error, a short read) are retried with
backoff (``VIDFEAT_REMOTE_RETRIES`` tries, first wait ``VIDFEAT_REMOTE_BACKOFF`` s); a missing
object, a denied read, or a read still failing then raise ``RemoteReadError`` naming the video,
never a credential: URLs are shown without user info or signed query values (``redact``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from vidfeat.errors import ConfigError, DecodeError

BLOCK_BYTES = 4 << 20
READ_AHEAD = 2
_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http",
            "https": "http"}
#: query parameters that carry a signature or a token (pre-signed S3/GCS URLs, SAS tokens)
_SECRET_QUERY = re.compile(r"signature|credential|token|sig|key|secret|password|auth",
                           re.IGNORECASE)
_MEMBER = re.compile(r"^(?P<tar>.+\.tar)#(?P<member>.+)@(?P<offset>\d+)\+(?P<size>\d+)$")


class RemoteReadError(DecodeError):
    """A video cannot be read from where it is kept: missing, denied, or the read failed."""


@dataclass(frozen=True)
class RemoteStat:
    """What a listing says about an object: enough to tell a changed object without reading
    it (S3's ETag, GCS's generation, HTTP's ETag/Last-Modified)."""

    size: int
    etag: str = ""
    modified: str = ""
    generation: str = ""

    def as_attrs(self) -> dict[str, Any]:
        return {"file_size": self.size, "object_etag": self.etag,
                "object_modified": self.modified, "object_generation": self.generation}


def is_url(path: str) -> bool:
    """A source named by URL (``s3://``, ``gs://``, ``http(s)://``), not a local path."""
    scheme, sep, _ = str(path).partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


def is_remote(path: str) -> bool:
    """Read through this module: a URL, or a tar member (local or by URL)."""
    return is_url(path) or _MEMBER.match(str(path)) is not None


def redact(url: str) -> str:
    """``url`` without user info and with secret-looking query values replaced: what the
    store, the report and every message show."""
    if not is_url(url):
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = urlencode([(k, "REDACTED" if _SECRET_QUERY.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the values of credential-like names (``*KEY*``, ``*SECRET*``,
    ``*TOKEN*``, ...) replaced: a job file's environment as a report may record it."""
    return {name: "REDACTED" if _SECRET_QUERY.search(name) else value
            for name, value in env.items()}


def member_path(tar: str, member: str, offset: int, size: int) -> str:
    """The path of a tar member: its shard, its name, and where its bytes are in the shard
    (read without going through the tar's headers again)."""
    return f"{tar}#{member}@{offset}+{size}"


def split_member(path: str) -> tuple[str, str, int, int] | None:
    """(tar, member, offset, size) of a ``member_path``, or None."""
    found = _MEMBER.match(str(path))
    if found is None:
        return None
    return found["tar"], found["member"], int(found["offset"]), int(found["size"])


# ---- file systems ----------------------------------------------------------------------------
_filesystems: dict[str, Any] = {}
_fs_lock = threading.Lock()


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system for ``url`` (one per protocol and process) and the path in it.
    Credentials come from where each library looks: the environment, profiles, instance
    roles; ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points S3 at MinIO, Ceph or a
    test server."""
    protocol = _SCHEMES[url.partition("://")[0].lower()]
    # a new endpoint or key in the environment (a test, a benchmark) gets a new client
    settings = protocol + "|" + "|".join(os.environ.get(name, "") for name in (
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"))
    with _fs_lock:
        fs = _filesystems.get(settings)
        if fs is None:
            fs = _filesystems[settings] = _new_filesystem(protocol)
    path = url if protocol == "http" else fs._strip_protocol(url)
    return fs, path


def _new_filesystem(protocol: str) -> Any:
    import fsspec

    try:
        if protocol == "s3":
            endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3")
                        or os.environ.get("AWS_ENDPOINT_URL") or None)
            # our own retries count and back off; botocore's and s3fs's would hide them
            fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True,
                                   config_kwargs={"retries": {"max_attempts": 1,
                                                              "mode": "standard"},
                                                  "connect_timeout": 20, "read_timeout": 60})
            fs.retries = 1
            return fs
        if protocol == "gcs":
            # gcsfs retries transient errors itself (6 tries, fixed when its class is
            # defined): ours come on top and count only what outlasts those
            return fsspec.filesystem("gcs", skip_instance_cache=True)
        return fsspec.filesystem("http", skip_instance_cache=True)
    except ImportError as error:
        package = {"s3": "s3fs", "gcs": "gcsfs"}.get(protocol, "aiohttp")
        raise ConfigError(f"{protocol} sources need the {package} package: pip install "
                          f"{package} (or pip install 'vidfeat[remote]')") from error


# ---- retries and counters ----------------------------------------------------------------------
_counts = {"requests": 0, "bytes": 0, "retries": 0}
_count_lock = threading.Lock()


def counters() -> dict[str, int]:
    """This process's remote reads so far: range requests, bytes fetched, retries."""
    with _count_lock:
        return dict(_counts)


def _count(**added: int) -> None:
    with _count_lock:
        for key, value in added.items():
            _counts[key] += value


def _tries() -> int:
    return max(1, int(os.environ.get("VIDFEAT_REMOTE_RETRIES", "4")))


def _backoff(attempt: int) -> float:
    base = float(os.environ.get("VIDFEAT_REMOTE_BACKOFF", "0.5"))
    return min(base * 2 ** attempt, 30.0)


def _why(error: BaseException) -> str:
    """One line about a failed request, without credentials (a URL in it is redacted)."""
    if isinstance(error, FileNotFoundError):
        return "no such object"
    if isinstance(error, PermissionError):
        return "access denied"
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    line = re.sub(r"\b\w+://\S+", lambda m: redact(m.group(0)), line)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _permanent(error: BaseException) -> bool:
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return True
    status = getattr(error, "status", None) or getattr(error, "code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def retried(what: str, call: Any, where: str = "") -> Any:
    """``call()`` with transient failures retried with backoff; a permanent failure as
    RemoteReadError(``what``: reason), the last transient one as (``what````where``: reason,
    after N tries)."""
    tries = _tries()
    for attempt in range(tries):
        try:
            return call()
        except RemoteReadError:
            raise
        except Exception as error:  # whatever the client library raises for this request
            if _permanent(error):
                raise RemoteReadError(f"{what}: {_why(error)}") from None
            if attempt == tries - 1:
                raise RemoteReadError(
                    f"{what}{where}: {_why(error)} (after {tries} tries)") from None
            _count(retries=1)
            time.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


# ---- the block cache -----------------------------------------------------------------------------
def cache_bytes() -> int:
    return int(float(os.environ.get("VIDFEAT_REMOTE_CACHE_MB", "256")) * (1 << 20))


class _BlockCache:
    """Blocks of remote objects, least recently used out first, shared by every reader of
    the process; a block being fetched is fetched once (later readers wait for it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.pending: dict[tuple[str, int], Future] = {}
        self.held = 0
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vidfeat-readahead")

    def get(self, source: _Source, index: int) -> bytes:
        key = (source.key, index)
        with self.lock:
            block = self.blocks.get(key)
            if block is not None:
                self.blocks.move_to_end(key)
                return block
            future = self.pending.get(key)
            if future is None:
                future = self.pending[key] = Future()
                owner = True
            else:
                owner = False
        if owner:
            self._fill(source, index, future)
        return future.result()

    def prefetch(self, source: _Source, index: int) -> None:
        key = (source.key, index)
        with self.lock:
            if key in self.blocks or key in self.pending:
                return
            future = self.pending[key] = Future()
        self.pool.submit(self._fill, source, index, future)

    def _fill(self, source: _Source, index: int, future: Future) -> None:
        key = (source.key, index)
        try:
            block = source.fetch(index)
        except BaseException as error:
            with self.lock:
                self.pending.pop(key, None)
            future.set_exception(error)
            return
        with self.lock:
            self.pending.pop(key, None)
            self.blocks[key] = block
            self.held += len(block)
            while self.held > cache_bytes() and len(self.blocks) > 1:
                _, dropped = self.blocks.popitem(last=False)
                self.held -= len(dropped)
        future.set_result(block)


_cache = _BlockCache()


def drop_cache() -> None:
    """Forget every cached block and object version of this process (a benchmark's cold
    start; a worker never needs it: blocks are keyed by the object's version)."""
    with _cache.lock:
        _cache.blocks.clear()
        _cache.held = 0
    with _count_lock:
        _infos.clear()


class _Source:
    """Where a video's bytes are: a URL (or a window of one, for a tar member), or a window
    of a local tar."""

    def __init__(self, path: str) -> None:
        self.path = path
        member = split_member(path)
        self.location, self.base, size = (member[0], member[2], member[3]) if member \
            else (path, 0, None)
        self.name = redact(path)
        self.url = is_url(self.location)
        whole, version = _object_info(self.location, self.name, size is None) if self.url \
            else (os.stat(self.location).st_size, str(os.stat(self.location).st_mtime_ns))
        self.size = whole if size is None else size
        # the version in the key: a long-lived worker never serves an older object's blocks
        self.key = f"{self.location}@{self.base}+{self.size}:{version}"

    def fetch(self, index: int) -> bytes:
        start = index * BLOCK_BYTES
        end = min(start + BLOCK_BYTES, self.size)
        if self.url:
            fs, fspath = filesystem(self.location)

            def read() -> bytes:
                _count(requests=1)  # every try, the failed ones too
                data = fs.cat_file(fspath, start=self.base + start, end=self.base + end)
                _count(bytes=len(data))
                if len(data) != end - start:
                    # a connection cut mid-body, or an object replaced by a shorter one
                    raise OSError(f"short read: {len(data)} of {end - start} bytes")
                return data

            return retried(self.name, read, f" (bytes {start}-{end})")
        with open(self.location, "rb") as handle:
            handle.seek(self.base + start)
            data = handle.read(end - start)
        if len(data) != end - start:
            raise RemoteReadError(f"{self.name}: the tar ends inside this member "
                                  f"({self.base + start + len(data)} bytes)")
        return data


_infos: OrderedDict[str, tuple[float, int, str]] = OrderedDict()
_INFO_SECONDS = 60.0  # the probe, decode and audio of a video ask once


def _object_info(url: str, name: str, need_size: bool = True) -> tuple[int, str]:
    """(size, version) of an object, asked once a minute at most (one HEAD request)."""
    now = time.monotonic()
    with _count_lock:
        known = _infos.get(url)
    if known is not None and now - known[0] < _INFO_SECONDS and (known[1] >= 0 or not need_size):
        return known[1], known[2]
    fs, fspath = filesystem(url)
    info = retried(name, lambda: fs.info(fspath))
    if info.get("size") is None:
        raise RemoteReadError(f"{name}: the server does not say the object's size")
    stat = stat_of(info)
    remember(url, stat)
    return stat.size, _version(stat)


def remember(path: str, stat: RemoteStat) -> None:
    """What the listing said about ``path``'s object: its reads then ask no HEAD, and its
    blocks are cached under the listed version (a long-lived worker never serves the blocks
    of the object it read yesterday for the one replaced since)."""
    member = split_member(path)
    url, size = (member[0], -1) if member else (path, stat.size)  # a member: its tar's version
    if not is_url(url):
        return
    version = (stat.etag or stat.generation) if member else _version(stat)
    with _count_lock:
        _infos[url] = (time.monotonic(), size, version)
        _infos.move_to_end(url)
        while len(_infos) > 4096:
            _infos.popitem(last=False)


def _version(stat: RemoteStat) -> str:
    return stat.generation or stat.etag or stat.modified


def stat_of(info: dict[str, Any]) -> RemoteStat:
    """The RemoteStat of an fsspec ``info``/listing entry (s3fs, gcsfs and HTTP name the
    same facts differently)."""
    etag = info.get("ETag") or info.get("etag") or ""
    modified = (info.get("LastModified") or info.get("updated") or info.get("mtime")
                or info.get("Last-Modified") or "")
    generation = info.get("generation") or info.get("VersionId") or ""
    return RemoteStat(int(info.get("size") or 0), str(etag).strip('"'), str(modified),
                      str(generation or ""))


class RemoteFile(io.RawIOBase):
    """A seekable, read-only file object over a remote video (what ``av.open`` takes)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.source = _Source(path)
        self.name = self.source.name
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.source.size}
        self.position = max(0, origin[whence] + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = self.source.size
        if self.position >= size or not len(view):
            return 0
        index, skip = divmod(self.position, BLOCK_BYTES)
        block = _cache.get(self.source, index)
        last = (size - 1) // BLOCK_BYTES
        for ahead in range(index + 1, min(index + READ_AHEAD, last) + 1):
            _cache.prefetch(self.source, ahead)
        count = min(len(view), len(block) - skip)
        view[:count] = memoryview(block)[skip:skip + count]
        self.position += count
        return count


def open_input(path: str) -> Any:
    """What ``av.open`` reads ``path`` from: the path itself when local, else a RemoteFile."""
    return RemoteFile(path) if is_remote(path) else str(path)


def object_size(path: str) -> int:
    """The size in bytes of a local file, a remote object or a tar member."""
    if not is_remote(path):
        return os.stat(path).st_size
    member = split_member(path)
    return member[3] if member else _Source(path).size


# ---- the spool -----------------------------------------------------------------------------------
def spool_bytes() -> int:
    return int(float(os.environ.get("VIDFEAT_SPOOL_MB", "8192")) * (1 << 20))


_spooled = 0
_spool_free = threading.Condition()


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file name for ``path``: itself when local, else a copy spooled through the
    block cache to ``$TMPDIR`` and removed on exit. Copies in the process hold at most
    ``spool_bytes()`` together (a copy waits for room); a video larger than that fails."""
    global _spooled
    if not is_remote(path):
        yield str(path)
        return
    reader = RemoteFile(path)
    size = reader.source.size
    limit = spool_bytes()
    if size > limit:
        raise RemoteReadError(f"{reader.name}: {size} bytes is more than the spool's "
                              f"{limit} (VIDFEAT_SPOOL_MB); decode it with --decoder pyav, "
                              f"which streams")
    with _spool_free:
        _spool_free.wait_for(lambda: _spooled + size <= limit)
        _spooled += size
    suffix = os.path.splitext(urlsplit(split_member(path)[1] if split_member(path)
                                       else path).path)[1]
    handle, local = tempfile.mkstemp(prefix="vidfeat-spool-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(reader, out, BLOCK_BYTES)
        yield local
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
        with _spool_free:
            _spooled -= size
            _spool_free.notify_all()
