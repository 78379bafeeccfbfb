"""The documentation: the mkdocs site builds strictly, README's links resolve on GitHub, and every
README example runs.

README examples are the fenced ``sh``/``bash``/``python`` blocks. A block that is not meant to
run says so in an HTML comment right before it, ``<!-- not run: REASON -->``; any other fence
language fails, so a new example cannot be left out by accident. The examples run in a
temporary directory holding ``videos/`` (made with ffmpeg); no weights are downloaded, so every
extraction runs with random weights: ``vidfeat extract`` through a shell function that adds
``--random-weights``, ``vidfeat.extract`` through a ``functools.partial``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_video

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: room is left for sections others add; a README longer than this is not read in ten minutes
README_MAX_LINES = 200
#: blocks a newcomer should see but a test cannot run (installs, clusters): keep it short
MAX_NOT_RUN = 3

FENCE = re.compile(r"^```([\w-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

SHELL_PREAMBLE = """\
set -euo pipefail
vidfeat() {
    if [ "$1" = extract ]; then
        command vidfeat "$@" --random-weights --workers 1 --no-progress
    else
        command vidfeat "$@"
    fi
}
"""
PYTHON_PREAMBLE = """\
import functools
import vidfeat
vidfeat.extract = functools.partial(vidfeat.extract, random_weights=True, workers=1,
                                    progress=False)
"""


def code_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """(language, code, reason it is not run or None) for every fenced block, in order."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        before = [line for line in lines[:i] if line.strip()]
        marked = NOT_RUN.match(before[-1]) if before else None
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append((opening.group(1), "\n".join(lines[i + 1:end]) + "\n",
                       marked.group(1) if marked else None))
        i = end + 1
    return blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub (and mkdocs' toc) gives a heading: lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    return {github_slug(line.lstrip("#")) for line in markdown.read_text().splitlines()
            if line.startswith("#")}


# the API reference is read from the source (griffe's static analysis): torch stays out
BUILD_WITHOUT_TORCH = """\
import builtins, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("the docs build imported torch")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
from mkdocs.__main__ import cli
sys.argv = ["mkdocs", "build", "--strict", "--config-file", sys.argv[1], "--site-dir", sys.argv[2]]
cli()
"""


def test_the_docs_site_builds_strictly_without_torch(tmp_path: Path) -> None:
    """A broken link between pages, a page missing from the nav, an API object that moved:
    each is a warning, and --strict makes it an error."""
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-c", BUILD_WITHOUT_TORCH, str(ROOT / "mkdocs.yml"), str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("vidfeat.extract", "vidfeat.open_store", "FeatureStore", "vidfeat.datasets"):
        assert f'id="{name}' in api or f'id="vidfeat.storage.reader.{name}' in api, name


def test_readme_is_short_and_its_links_resolve_on_github() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (ROOT / path) if path else README
        assert resolved.exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(resolved), f"README links to {target}: no such heading"


def test_readme_blocks_are_examples_or_say_why_not() -> None:
    blocks = code_blocks(README.read_text())
    assert blocks
    for language, code, not_run in blocks:
        assert not_run or language in ("sh", "bash", "python"), (
            f"a ```{language} block neither runs nor says why not:\n{code}")
    assert sum(1 for *_, not_run in blocks if not_run) <= MAX_NOT_RUN


@pytest.mark.slow  # two extractions with ResNet-152 and VGGish
def test_readme_examples_run(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "talk.mp4", seconds=2.5)
    make_video(videos / "silent.mp4", seconds=2.0, audio=False, source="mandelbrot")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NO_MKDOCS_2_WARNING": "1"}
    for language, code, not_run in code_blocks(README.read_text()):
        if not_run:
            continue
        if language == "python":
            command = [sys.executable, "-c", PYTHON_PREAMBLE + code]
        else:
            command = ["bash", "-c", SHELL_PREAMBLE + code]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{code}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "features").is_dir()
