"""MultimodalVideoTag's label file, read once for the tagging dataset and the PaddleVideo
export: ``video<TAB>title<TAB>label1,label2`` per line, as its ``load_video_file`` reads it
(applications/MultimodalVideoTag/scenario_lib/datareader/feature_reader.py): the video named by
URL, path, file name or id; the labels by class name; a line without labels is skipped and the
first line with labels for a video wins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidfeat.errors import ConfigError

MVT_FORM = "'video<TAB>title<TAB>label,label' (MultimodalVideoTag's label file)"


@dataclass(frozen=True)
class TaggedVideo:
    video: str  # as the label file names it
    title: str
    labels: tuple[str, ...]

    @property
    def pickle_name(self) -> str:
        """The name PaddleVideo's reader gives this video's pickle:
        ``url.split('/')[-1].split('.')[0]``."""
        return self.video.split("/")[-1].split(".")[0]


def read_lines(path: str | Path, what: str) -> list[str]:
    """The file's lines; ConfigError naming the file when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ConfigError(f"{path}: cannot read the {what}: {reason}") from None


def is_tag_line(line: str) -> bool:
    """Whether a line has the label file's three tab-separated columns."""
    return len(line.split("\t")) >= 3


def read_tags(path: str | Path) -> list[TaggedVideo]:
    """Each labelled video of the file, in file order; ConfigError naming the file and line
    for a line that is not in the form."""
    tagged, seen = [], set()
    earlier = False  # a line in the form came before
    for number, line in enumerate(read_lines(path, "labels file"), 1):
        if not line.strip():
            continue
        if not is_tag_line(line):
            raise ConfigError(f"{path}:{number}: expected {MVT_FORM}"
                              f"{' as the first line is' if earlier else ''}, got {line[:80]!r}")
        earlier = True
        video, title, names = line.split("\t")[:3]
        labels = tuple(name.strip() for name in names.split(",") if name.strip())
        if labels and video.strip() not in seen:
            seen.add(video.strip())
            tagged.append(TaggedVideo(video.strip(), title, labels))
    return tagged
