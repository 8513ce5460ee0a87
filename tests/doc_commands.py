"""The shell commands a document shows, as a user would type them, for the tests that
check the docs against the code (tests/pipelines/test_readme_commands.py,
tests/pipelines/test_cluster_config.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(doc: str) -> list[list[list[str]]]:
    """Each ```bash block of `doc` (relative to the repository) as its commands' words:
    line continuations joined, comments dropped, optional `[...]` parts of a synopsis
    left out, and what a command's output goes to (`>`, `|`, `&&`) cut off. A
    `ray exec FILE "CMD"` is followed by CMD's own words (what it runs on the head)."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), flags=re.S):
        commands = []
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words, optional = [], False
            for word in shlex.split(line, comments=True):
                optional = optional or word.startswith("[")
                if not optional:
                    words.append(word)
                optional = optional and not word.endswith("]")
            for stop in (">", "|", "&&"):
                words = words[: words.index(stop)] if stop in words else words
            if words:
                commands.append(words)
            if words[:2] == ["ray", "exec"]:
                commands.append(shlex.split(words[3]))
        blocks.append(commands)
    return blocks


def doc_commands(doc: str) -> list[list[str]]:
    """Every command of `doc`'s bash blocks, in order (`bash_blocks`)."""
    return [words for block in bash_blocks(doc) for words in block]
