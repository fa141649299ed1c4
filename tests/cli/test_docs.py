"""The documentation stays true: its commands parse, its links resolve, its timings agree.

Conventions the docs follow so that these checks can read them:

- A shell example is a fenced block with no language or `bash`/`sh`/`shell`/`console`;
  program output goes in a `text` block. Every `dkt ...` line of a shell example (after
  a `$ ` prompt and `VAR=value` assignments, with `\\` continuations joined) is a real
  command line that `dkt`'s parser accepts.
- How long `make test`, `make test-fast`, `dkt run` (`make run`) and `dkt simulate`
  (`make simulate`) take is written "about <figure> on 2 cores", in the same paragraph
  as the command and after it, and the figure is the one in TIMES below. The Makefile's
  `##` comment above a target states the same figure if it states one.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
README_MAX_LINES = 250

# The one figure for each command, on the 2-core machines DKT is measured on.
TIMES = {
    "make test": "about 16 minutes on 2 cores",
    "make test-fast": "about 2 minutes on 2 cores",
    "dkt run": "about a minute on 2 cores",
    "dkt simulate": "about 10 seconds on 2 cores",
}
SAME_COMMAND = {"make run": "dkt run", "make simulate": "dkt simulate"}
MAKE_TARGETS = {"test": "make test", "test-fast": "make test-fast"}
MAKE_TARGETS_OPTIONAL = {"run": "dkt run", "simulate": "dkt simulate"}

STATED = re.compile(r"about (?:a|an|\d+) (?:minutes?|seconds?|hours?) on 2 cores")
# Any other way of saying how long something takes in minutes: must be a STATED one.
LOOSE = re.compile(r"(?:about|under|~|in)\s*(?:a|an|\d+(?:\.\d+)?)\s*(?:min|mins|minutes?)\b")
# In a Makefile comment, any duration at all.
MAKE_DURATION = re.compile(
    r"(?:about|under|~|in)\s*(?:a|an|\d+(?:\.\d+)?)\s*(?:min|mins|minutes?|s|sec|seconds?)\b"
)
COMMAND = re.compile(
    r"`(make test-fast|make test|make run|make simulate|dkt run|dkt simulate)(?![\w-])[^`]*`"
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
DKT_LINE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*dkt(?:\s|$)")


def split_page(path: Path) -> tuple[str, list[tuple[str, int, list[str]]]]:
    """The page's prose (code blocks blanked) and its fenced blocks (language, line, lines)."""
    prose: list[str] = []
    blocks: list[tuple[str, int, list[str]]] = []
    fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            blocks.append((stripped[3:].strip().lower(), number, []))
            prose.append("")
        elif fence is not None and stripped.startswith(fence):
            fence = None
            prose.append("")
        elif fence is not None:
            blocks[-1][2].append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def shell_lines(block: list[str], first: int) -> list[tuple[int, str]]:
    """Logical lines of a shell block: `\\` continuations joined, `$ ` prompts dropped."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block, start=1):
        line = raw.rstrip()
        if pending is None:
            pending = (first + offset, "")
        text = pending[1] + (" " if pending[1] else "") + line.strip()
        if text.endswith("\\"):
            pending = (pending[0], text[:-1].rstrip())
            continue
        joined.append((pending[0], text.removeprefix("$ ")))
        pending = None
    if pending is not None:
        joined.append(pending)
    return joined


def dkt_command_lines() -> list[tuple[str, list[str]]]:
    """Every `dkt ...` command line in a shell example: (where, argv without `dkt`)."""
    found = []
    for page in PAGES:
        _, blocks = split_page(page)
        for language, line, block in blocks:
            if language not in SHELL_LANGUAGES:
                continue
            for number, text in shell_lines(block, line):
                if not DKT_LINE.match(text):
                    continue
                where = f"{page.relative_to(ROOT)}:{number}"
                try:
                    words = shlex.split(text, comments=True)
                except ValueError:  # unbalanced quotes: the parse test reports it
                    found.append((where, [text]))
                    continue
                while words and ENV_ASSIGNMENT.match(words[0]):
                    words.pop(0)
                found.append((where, words[1:]))
    return found


COMMAND_LINES = dkt_command_lines()


def test_the_docs_show_dkt_commands():
    assert len(COMMAND_LINES) > 50
    assert {argv[0] for _, argv in COMMAND_LINES if argv} >= {
        "simulate",
        "compare",
        "run",
        "server",
        "agent",
        "launch",
        "relay",
        "status",
    }


@pytest.mark.parametrize(
    "argv", [argv for _, argv in COMMAND_LINES], ids=[where for where, _ in COMMAND_LINES]
)
def test_every_dkt_command_in_the_docs_parses(argv):
    from dkt.cli import build_parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exit:  # --help and --version exit 0
        assert exit.code == 0, f"`dkt {shlex.join(argv)}`: {errors.getvalue().strip()}"


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    prose, _ = split_page(path)
    seen: dict[str, int] = {}
    result = set()
    for line in prose.splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links() -> list[tuple[str, Path, str]]:
    """(where, the page it names, the anchor) for every relative link in prose."""
    links = []
    for page in PAGES:
        prose, _ = split_page(page)
        for match in LINK.finditer(prose):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            where = f"{page.relative_to(ROOT)}:{prose.count(chr(10), 0, match.start()) + 1}"
            file, _, anchor = target.partition("#")
            links.append((where, (page.parent / file).resolve() if file else page, anchor))
    return links


def test_every_relative_link_points_to_an_existing_file_and_heading():
    broken = []
    for where, target, anchor in relative_links():
        if not target.exists():
            broken.append(f"{where}: {target.relative_to(ROOT)} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{where}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert broken == []


def test_the_docs_index_links_every_page():
    linked = {target for where, target, _ in relative_links() if where.startswith("docs/README")}
    pages = {page.resolve() for page in DOCS.rglob("*.md")} - {(DOCS / "README.md").resolve()}
    assert sorted(str(p.relative_to(ROOT)) for p in pages - linked) == []


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


def stated_times() -> list[tuple[str, str, str]]:
    """(where, command, figure) for every "about ... on 2 cores" in README and docs."""
    stated = []
    for page in PAGES:
        prose, _ = split_page(page)
        for paragraph in re.split(r"\n\s*\n", prose):
            for match in STATED.finditer(paragraph):
                before = list(COMMAND.finditer(paragraph, 0, match.start()))
                where = f"{page.relative_to(ROOT)}: {paragraph.strip()[:60]!r}"
                command = before[-1].group(1) if before else "(no command before it)"
                stated.append((where, SAME_COMMAND.get(command, command), match.group(0)))
            for match in LOOSE.finditer(paragraph):
                inside = any(
                    s.start() <= match.start() < s.end() for s in STATED.finditer(paragraph)
                )
                if not inside:
                    where = f"{page.relative_to(ROOT)}: {paragraph.strip()[:60]!r}"
                    stated.append((where, "(a time not written as 'about X on 2 cores')", ""))
    return stated


def test_the_docs_state_one_time_per_command():
    wrong = [
        f"{where}: {command} {figure!r}, not {TIMES.get(command)!r}"
        for where, command, figure in stated_times()
        if TIMES.get(command) != figure
    ]
    assert wrong == []
    assert {command for _, command, _ in stated_times()} == set(TIMES)


def makefile_comments() -> dict[str, str]:
    """Each Makefile target's `##` comment lines just above it, joined."""
    comments: dict[str, str] = {}
    block: list[str] = []
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith("##"):
            block.append(line.lstrip("#").strip())
            continue
        target = re.match(r"^([\w.-]+):", line)
        if target:
            comments[target.group(1)] = " ".join(block)
        block = []
    return comments


@pytest.mark.parametrize("target", [*MAKE_TARGETS, *MAKE_TARGETS_OPTIONAL])
def test_the_makefile_states_the_same_times(target):
    comment = makefile_comments()[target]
    command = {**MAKE_TARGETS, **MAKE_TARGETS_OPTIONAL}[target]
    figure = TIMES[command]
    if target in MAKE_TARGETS:
        assert figure in comment, f"make {target}: {comment!r} should say {figure!r}"
    stray = [
        m.group(0)
        for m in MAKE_DURATION.finditer(comment)
        if not any(
            s.start() <= m.start() < s.end() for s in re.finditer(re.escape(figure), comment)
        )
    ]
    assert stray == [], f"make {target}: {comment!r} should say {figure!r}"
