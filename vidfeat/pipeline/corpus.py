"""Turning SOURCE arguments into a list of videos with unique ids, and content fingerprints."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidfeat.errors import ConfigError

if TYPE_CHECKING:
    from vidfeat.media import MediaInfo
    from vidfeat.media.remote import RemoteStat

#: what a directory scan takes for a video (``--extensions`` replaces the set); a file named
#: on the command line or in a list is tried whatever its extension
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".divx", ".mpg", ".mpeg", ".m2v",
    ".vob", ".mod", ".tod", ".ts", ".mts", ".m2ts", ".m2t", ".trp", ".flv", ".f4v", ".wmv",
    ".asf", ".3gp", ".3g2", ".ogv", ".dv", ".mxf", ".rm", ".rmvb", ".nut", ".y4m", ".mjpeg",
})
_SAMPLE = 1 << 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoSource:
    video_id: str
    path: str  # absolute, a URL, or a tar member (vidfeat.media.remote.member_path)
    #: a URL's or tar member's facts from the listing (sources.py), which decide "unchanged"
    remote: RemoteStat | None = None
    #: a tar sample's .json metadata (text), kept in the video's attributes
    metadata: str = ""


@dataclass(frozen=True)
class Rejected:
    """A path named or found as a video that cannot be read as one (a FIFO, a socket, a
    device, a broken link): the run lists it as failed with ``reason`` and goes on."""

    video_id: str
    path: str  # absolute
    reason: str


@dataclass(frozen=True)
class Corpus:
    """What ``scan`` found: the videos to extract, and the paths rejected with their reason."""

    videos: list[VideoSource]
    rejected: list[Rejected]


def _from_list(list_file: Path) -> list[Path | str]:
    if not list_file.is_file():
        raise ConfigError(f"@{list_file}: no such list file")
    paths: list[Path | str] = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if _is_url(line):
            paths.append(line)
        elif line and not line.startswith("#"):
            path = Path(line).expanduser()
            # relative entries are relative to the list file, not to wherever vidfeat runs
            paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


def _expand(source: str, extensions: frozenset[str]
            ) -> list[Path | VideoSource | Rejected]:
    if source.startswith("@"):
        entries = _from_list(Path(source[1:]).expanduser())
        # a nightly list is written before the run: an entry deleted since is that video's
        # failure ("not found", in scan), not the run's
        return [path for entry in entries
                for path in (_expand_url(entry, extensions) if isinstance(entry, str)
                             else _expand_path(entry, extensions) if _exists(entry)
                             else [entry])]
    if "{" in source or _is_url(source):  # objects, prefixes, tar shards: sources.py lists them
        from vidfeat.pipeline.sources import expand_braces, expand_url

        return [found for each in expand_braces(source)
                for found in (expand_url(each, extensions) if _is_url(each)
                              else _expand_path(Path(each).expanduser(), extensions))]
    return _expand_path(Path(source).expanduser(), extensions)


def _expand_url(url: str, extensions: frozenset[str]) -> list[VideoSource | Rejected]:
    from vidfeat.pipeline.sources import expand_url

    # as for a file: an object deleted since the list was written is that video's failure
    return list(expand_url(url, extensions, missing_ok=True))


def _is_url(source: str) -> bool:
    from vidfeat.media.remote import is_url

    return is_url(source)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _expand_path(path: Path, extensions: frozenset[str]) -> list[Path | VideoSource]:
    if path.suffix.lower() == ".tar" and path.is_file():  # a WebDataset shard's videos
        from vidfeat.pipeline.sources import tar_videos

        return list(tar_videos(str(path.resolve()), extensions))
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.suffix.lower() in extensions and not p.is_dir())
    if _exists(path):
        return [path]  # a FIFO, device or broken link named directly is rejected in scan()
    raise ConfigError(f"{path}: no such file or directory")


def not_a_video_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a video file, or None when it is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"a broken symbolic link (to {os.readlink(path)})"
        return "not found"
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISDIR: "a directory"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a special file")
    return f"not a regular file: {kind}"


def extension_set(extensions: list[str] | None) -> frozenset[str]:
    """``--extensions`` as a set (".MKV" and "mkv" are ".mkv"); None: VIDEO_EXTENSIONS."""
    if extensions is None:
        return VIDEO_EXTENSIONS
    chosen = frozenset("." + e.strip().lower().lstrip(".") for e in extensions if e.strip())
    if not chosen or "." in chosen:
        raise ConfigError(f"--extensions names no extension: {extensions!r}")
    return chosen


def scan(sources: list[str], limit: int | None = None,
         extensions: list[str] | None = None) -> Corpus:
    """Videos named by ``sources`` (files, directories searched recursively for
    ``extensions``, by default VIDEO_EXTENSIONS, ``@list.txt`` files), in the order given,
    each once, with ids = file names without extension; paths that are no regular files, or
    list entries gone, are returned as rejected, with the reason. ``limit`` counts both. Two
    different files with one id are a ConfigError naming both; so is finding nothing at all."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    wanted = extension_set(extensions)
    found: list[VideoSource | Rejected] = []
    by_id: dict[str, str] = {}
    for source in sources:
        for path in _expand(source, wanted):
            listed = path if isinstance(path, (VideoSource, Rejected)) else None
            absolute = listed.path if listed else str(path.resolve())
            video_id = listed.video_id if listed else path.stem
            if video_id in by_id:
                if by_id[video_id] == absolute:
                    continue
                raise ConfigError(
                    f"video id collision: {by_id[video_id]} and {absolute} are both "
                    f"{video_id!r}; rename one or extract them into different stores"
                )
            by_id[video_id] = absolute
            if listed:
                found.append(listed)
                continue
            reason = not_a_video_file(path)
            found.append(VideoSource(video_id, absolute) if reason is None
                         else Rejected(video_id, os.path.abspath(path), reason))
    if not found:
        raise ConfigError(f"no videos found in {' '.join(sources)}")
    found = found[:limit] if limit else found
    return Corpus([f for f in found if isinstance(f, VideoSource)],
                  [f for f in found if isinstance(f, Rejected)])


def discover(sources: list[str], limit: int | None = None) -> list[VideoSource]:
    """The videos of ``scan``; each rejected path is logged with its reason (``scan`` returns
    them, for a run to record as failures)."""
    corpus = scan(sources, limit)
    for rejected in corpus.rejected:
        log.warning("%s: %s; not extracted", rejected.path, rejected.reason)
    if not corpus.videos:
        raise ConfigError(f"no videos found in {' '.join(sources)}")
    return corpus.videos


def fingerprint(path: str | Path) -> str:
    """A content fingerprint that reads 3 MiB whatever the file size: sha256 over the size and
    1 MiB at the start, middle and end. Changes whenever a file is replaced or re-encoded."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE))
    return "sha256-3x1MiB:" + digest.hexdigest()[:32]


def video_attrs(path: str | VideoSource, info: MediaInfo) -> dict[str, Any]:
    """What the store keeps about a video file: its probe facts, content fingerprint, size and
    modification time (the rerun's "unchanged file" test); for an object by URL or a tar
    member, the listing's facts instead (sources.remote_attrs: nothing more is read)."""
    if isinstance(path, VideoSource):
        if path.remote is not None:
            from vidfeat.pipeline.sources import remote_attrs

            return {**info.as_attrs(), **remote_attrs(path)}
        path = path.path
    stat = os.stat(path)
    return {**info.as_attrs(), "fingerprint": fingerprint(path), "file_size": stat.st_size,
            "file_mtime_ns": stat.st_mtime_ns}
