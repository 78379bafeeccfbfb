"""Sources that are no local video files: objects by URL (``s3://bucket/prefix/``,
``gs://...``, ``https://host/v.mp4``) and WebDataset / video2dataset tar shards (local or by
URL), listed into ``VideoSource`` entries that carry what the listing says about each object
(``RemoteStat``), so that "up to date" is decided without reading a byte of a video.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from vidfeat.errors import ConfigError
from vidfeat.media.remote import (
    RemoteFile,
    RemoteReadError,
    RemoteStat,
    filesystem,
    is_url,
    member_path,
    redact,
    retried,
    stat_of,
)

if TYPE_CHECKING:
    from vidfeat.pipeline.corpus import Rejected, VideoSource

log = logging.getLogger(__name__)
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}|\{([^{}]*,[^{}]*)\}")
#: bump when the cached member lists of tars change shape
_TAR_INDEX_VERSION = 1


def expand_braces(source: str) -> list[str]:
    """Bash's brace expansion, as a job file or a quoted argument needs it:
    ``shards/{00000..00009}.tar`` (zero-padded as written) and ``{a,b}``."""
    found = _BRACES.search(source)
    if found is None:
        return [source]
    head, tail = source[:found.start()], source[found.end():]
    if found.group(3) is not None:
        choices = found.group(3).split(",")
    else:
        first, last = found.group(1), found.group(2)
        width = len(first) if first.startswith("0") or last.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def check_url(url: str) -> None:
    """Credentials belong in the environment or a profile, never in a source URL (which the
    store, the report and the logs show)."""
    if redact(url) != url:
        raise ConfigError(f"{redact(url)}: credentials in a source URL are refused (they would "
                          f"be stored with the features); use the environment or a profile")


def expand_url(url: str, extensions: frozenset[str], missing_ok: bool = False
               ) -> list[VideoSource | Rejected]:
    """The videos a URL names: one object, every object under a prefix (``s3://b/dir/``: the
    same extension rule as a directory scan), or every video of a tar shard. ``missing_ok``:
    a single object that is not there (or cannot be read) is returned as Rejected, with the
    reason (an entry of a list file)."""
    from vidfeat.pipeline.corpus import Rejected, VideoSource

    check_url(url)
    if PurePosixPath(url.split("?")[0]).suffix.lower() == ".tar":
        return tar_videos(url, extensions)
    fs, path = filesystem(url)
    scheme = url.partition("://")[0]
    try:
        if url.endswith("/") or not _is_object(fs, path, url):
            listing = retried(redact(url), lambda: fs.find(path, detail=True))
            objects = sorted((name, info) for name, info in listing.items()
                             if info.get("type", "file") != "directory"
                             and PurePosixPath(name).suffix.lower() in extensions)
            # an HTTP index page gives names only: each object's HEAD gives the rest
            objects = [(name, info if info.get("size") is not None
                        else retried(redact(name), lambda name=name: fs.info(name)))
                       for name, info in objects]
        else:
            objects = [(path, retried(redact(url), lambda: fs.info(path)))]
    except RemoteReadError as error:
        if missing_ok and not url.endswith("/"):  # gone or denied since the list was written
            reason = str(error).removeprefix(f"{redact(url)}: ")
            return [Rejected(PurePosixPath(path).stem, url,
                             "not found" if reason == "no such object" else reason)]
        raise ConfigError(str(error)) from None
    if not objects:
        raise ConfigError(f"{redact(url)}: no objects with a video extension")
    videos = []
    for name, info in objects:
        address = name if "://" in name else f"{scheme}://{name}"
        videos.append(VideoSource(PurePosixPath(name).stem, address, remote=stat_of(info)))
    return videos


def _is_object(fs: Any, path: str, url: str) -> bool:
    if url.startswith(("http://", "https://")):
        return True
    info = retried(redact(url), lambda: fs.info(path))
    return info.get("type") != "directory"


# ---- fingerprints ------------------------------------------------------------------------------
def remote_fingerprint(stat: RemoteStat) -> str:
    """An object's identity from its listing: size, ETag, last-modified, generation."""
    text = f"{stat.size}|{stat.etag}|{stat.modified}|{stat.generation}"
    return "object:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def remote_attrs(video: VideoSource) -> dict[str, Any]:
    """What the store keeps about an object beside its probe facts: the listing's facts and
    their fingerprint (the rerun's "unchanged" test), and a tar sample's .json metadata."""
    if video.remote is None:
        raise TypeError(f"{video.path}: not a remote source")
    attrs = {"fingerprint": remote_fingerprint(video.remote), **video.remote.as_attrs()}
    if video.metadata:
        attrs["sample"] = json.loads(video.metadata)
    return attrs


# ---- WebDataset / video2dataset tars -------------------------------------------------------------
def sample_key(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member as WebDataset splits it: the extension starts at the
    first dot of the file name (``000000123.mp4``, ``a/b.c.json`` -> ``a/b``, ``.c.json``)."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), (dot + extension).lower()


def tar_videos(tar: str, extensions: frozenset[str]) -> list[VideoSource]:
    """Every video member of a tar shard as a VideoSource (id: the sample key), with its
    sample's ``.json`` metadata. A tar by URL is listed once per version of it (the member
    list is cached under ``$VIDFEAT_HOME/tar-index``): a rerun over unchanged shards reads
    none of them."""
    from vidfeat.pipeline.corpus import VideoSource

    if is_url(tar):
        check_url(tar)
        fs, path = filesystem(tar)
        try:
            version = stat_of(retried(redact(tar), lambda: fs.info(path)))
        except RemoteReadError as error:
            raise ConfigError(str(error)) from None
    else:
        stat = os.stat(tar)
        version = RemoteStat(stat.st_size, modified=str(stat.st_mtime_ns))
    members = _cached_members(tar, version)
    videos = []
    for name, offset, size, mtime, metadata in members:
        key, extension = sample_key(name)
        if extension in extensions:
            stat = RemoteStat(size, version.etag, str(mtime),
                              f"{version.generation or version.modified}:{version.size}")
            videos.append(VideoSource(key.rpartition("/")[2] or key,
                                      member_path(tar, name, offset, size), remote=stat,
                                      metadata=metadata))
    if not videos:
        log.warning("%s: no video members", redact(tar))
    return videos


def _cached_members(tar: str, version: RemoteStat) -> list[tuple[str, int, int, int, str]]:
    home = Path(os.environ.get("VIDFEAT_HOME", "~/.cache/vidfeat")).expanduser()
    identity = json.dumps([_TAR_INDEX_VERSION, tar, version.size, version.etag,
                           version.modified, version.generation])
    cached = home / "tar-index" / (hashlib.sha256(identity.encode()).hexdigest()[:32] + ".json")
    if is_url(tar) and cached.is_file():
        try:
            return [tuple(entry) for entry in json.loads(cached.read_text())]  # type: ignore[misc]
        except (OSError, ValueError):
            pass  # rebuilt below
    members = _read_members(tar)
    if is_url(tar):
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(members))
            temporary.replace(cached)
        except OSError as error:  # only the next run's listing is slower
            log.debug("cannot cache the members of %s: %s", redact(tar), error)
    return members


def _read_members(tar: str) -> list[tuple[str, int, int, int, str]]:
    """(name, data offset, size, mtime, the sample's .json text) of each regular member. A tar
    cut off or damaged after some members keeps those (a member cut off fails when read)."""
    handle = RemoteFile(tar) if is_url(tar) else open(tar, "rb")  # noqa: SIM115
    found: list[tuple[str, int, int, int]] = []
    metadata: dict[str, str] = {}
    try:
        with handle, tarfile.open(fileobj=handle, mode="r:") as archive:
            try:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, extension = sample_key(member.name)
                    if extension == ".json":
                        data = archive.extractfile(member)
                        text = data.read().decode("utf-8", "replace") if data else ""
                        metadata[key] = text if _is_json(text) else ""
                    else:
                        found.append((member.name, member.offset_data, member.size,
                                      int(member.mtime)))
            except tarfile.ReadError as error:
                log.warning("%s: tar damaged after %d members (%s)", redact(tar), len(found),
                            error)
    except (tarfile.ReadError, RemoteReadError) as error:
        raise ConfigError(f"{redact(tar)}: not a readable tar: {error}") from None
    return [(name, offset, size, mtime, metadata.get(sample_key(name)[0], ""))
            for name, offset, size, mtime in found]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
