"""The docs stay true: links resolve, documented options and commands exist, the README stays a front page.

The CLI's `--help` is the source of truth for options; it runs in a subprocess as a user would run it.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mlflow_weightviz

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]
REFERENCE_PAGES = ["cli", "api", "capture", "formats", "security", "automation", "ui", "performance", "reliability"]

# The two commands a fresh clone needs, exactly as the quick start gives them.
FRESH_CLONE = [
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mlflow-weightviz demo",
    "bash scripts/test.sh",
]
README_MAX_LINES = 170

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


# ---------------------------------------------------------------------------- markdown helpers


def without_code_blocks(text: str) -> str:
    """The text with fenced code blocks blanked to spaces (offsets kept), so `# comments` are not headings."""
    return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```", text, re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(without_code_blocks(path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def sections(text: str, level: int = 2) -> list[tuple[str, str]]:
    """(heading, body) of every heading of this level; the body runs to the next heading of this level or above."""
    prose = without_code_blocks(text)
    marks = [(m.start(), m.end(), len(m.group(1)), m.group(2)) for m in HEADING.finditer(prose)]
    out = []
    for i, (_, end, depth, title) in enumerate(marks):
        if depth != level:
            continue
        stop = next((s for s, _, d, _ in marks[i + 1:] if d <= level), len(text))
        out.append((title, text[end:stop]))
    return out


def links(path: Path) -> list[str]:
    prose = without_code_blocks(path.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # code spans are not links (link texts in backticks keep their target)
    return LINK.findall(prose)


# ---------------------------------------------------------------------------- CLI helpers


@functools.cache
def cli_help(*command: str) -> str:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-m", "mlflow_weightviz", *command, "--help"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, f"{command} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


def help_options(*command: str) -> set[str]:
    """The long options in the option column of `--help` (rich panels or click's plain layout)."""
    found: set[str] = set()
    for line in cli_help(*command).splitlines():
        cells = re.split(r"\s{2,}", line.strip().strip("│").strip())
        for cell in cells:
            if cell == "*":  # rich marks required options
                continue
            if not cell.startswith("-"):
                break
            found.update(OPTION.findall(cell))
    return found


@functools.cache
def commands() -> tuple[str, ...]:
    """The subcommands listed in the top-level `--help`."""
    names, in_commands = [], False
    for line in cli_help().splitlines():
        if re.search(r"\bCommands\b", line):
            in_commands = True
            continue
        if in_commands and (line.startswith("╰") or not line.strip()):
            in_commands = False
            continue
        m = re.match(r"^(?:│ | {2})([a-z][a-z0-9-]*)(?:\s{2,}|\s*$)", line)
        if in_commands and m:
            names.append(m.group(1))
    return tuple(names)


def commands_in(heading: str) -> list[str]:
    words = re.split(r"[^a-z0-9-]+", heading.replace("`", "").lower())
    return [w for w in words if w in commands()]


# ---------------------------------------------------------------------------- links and pages


def test_the_reference_pages_exist() -> None:
    missing = [name for name in REFERENCE_PAGES if not (DOCS / f"{name}.md").is_file()]
    assert missing == []
    assert (DOCS / "README.md").is_file()


@pytest.mark.parametrize("page", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_points_to_a_file_or_heading_in_the_repository(page: Path) -> None:
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.is_relative_to(REPO):
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert bad == [], f"{page.relative_to(REPO)}: {bad}"


def test_every_reference_page_is_linked_from_the_readme_and_the_docs_index() -> None:
    for index in (README, DOCS / "README.md"):
        targets = {(index.parent / t.partition("#")[0]).resolve() for t in links(index)}
        unlinked = [name for name in REFERENCE_PAGES if (DOCS / f"{name}.md").resolve() not in targets]
        assert unlinked == [], f"{index.relative_to(REPO)} does not link {unlinked}"


def test_the_screenshots_are_shown_in_the_ui_page() -> None:
    shown = {(DOCS / t).resolve() for t in links(DOCS / "ui.md")}
    assert sorted(p.name for p in DOCS.glob("ui-*.png") if p.resolve() not in shown) == []


def test_the_link_check_notices_a_broken_link_and_a_missing_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Real `heading`, here\n\n[a](missing.md) [b](#real-heading-here) [c](#nope)\n"
                    "```bash\n# not a heading\n```\n", encoding="utf-8")
    assert links(page) == ["missing.md", "#real-heading-here", "#nope"]
    assert anchors(page) == {"title", "real-heading-here"}


# ---------------------------------------------------------------------------- the command line


def test_the_help_parser_finds_options_and_commands() -> None:
    # The checks below could pass vacuously if parsing the help found nothing.
    assert {"render", "render-file", "inspect", "demo", "batch", "watch"} <= set(commands())
    assert {"--source", "--no-log", "--frame-ms", "--allow-pickle", "--help"} <= help_options("render")
    assert "--no-log" not in help_options("render-file")
    assert "--experiment" in help_options("batch")


def cli_sections() -> list[tuple[str, str]]:
    return sections((DOCS / "cli.md").read_text(encoding="utf-8"))


def test_every_command_has_its_own_section_in_cli_md() -> None:
    titles = {title.replace("`", "").strip() for title, _ in cli_sections()}
    assert [c for c in commands() if c not in titles] == []


def test_every_option_named_in_cli_md_exists_in_the_help_of_each_command_its_section_names() -> None:
    every = set(help_options()).union(*(help_options(c) for c in commands()))
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    unknown = sorted(set(OPTION.findall(text)) - every)
    assert unknown == [], f"options named in docs/cli.md that no command has: {unknown}"
    wrong = []
    for title, body in cli_sections():
        for command in commands_in(title):
            wrong += [f"{command} {opt}" for opt in sorted(set(OPTION.findall(body)) - help_options(command))]
    assert wrong == [], f"options documented under a command whose --help does not list them: {wrong}"


def test_every_option_of_every_command_is_documented_under_that_command() -> None:
    undocumented = []
    for command in commands():
        named = set().union(*(OPTION.findall(body) for title, body in cli_sections() if command in commands_in(title)))
        for opt in sorted(help_options(command) - {"--help"}):
            positive = "--" + opt.removeprefix("--no-")
            if opt not in named and not (opt.startswith("--no-") and positive in named):
                undocumented.append(f"{command} {opt}")
    assert undocumented == []


def test_a_misspelt_option_would_fail_the_check() -> None:
    assert "--max-frame" not in help_options("render")
    assert "--max-frames" in help_options("render")
    assert "--no-log" not in help_options("batch")  # render-only options are not accepted under batch


# ---------------------------------------------------------------------------- the Python names the docs use


def test_every_wv_name_and_dotted_module_name_in_the_docs_exists() -> None:
    missing = []
    for page in DOC_FILES:
        text = page.read_text(encoding="utf-8")
        for name in sorted(set(re.findall(r"\bwv\.([A-Za-z_]\w*)", text))):
            if name not in mlflow_weightviz.__all__:
                missing.append(f"{page.name}: wv.{name}")
        for dotted in sorted(set(re.findall(r"\bmlflow_weightviz((?:\.[A-Za-z_]\w*)+)", text))):
            if not resolves("mlflow_weightviz" + dotted):
                missing.append(f"{page.name}: mlflow_weightviz{dotted}")
    assert missing == []


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


# ---------------------------------------------------------------------------- the README is a front page


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_the_quick_start_has_exactly_the_two_fresh_clone_commands() -> None:
    quick = [body for title, body in sections(README.read_text(encoding="utf-8")) if title.startswith("Quick start")]
    assert len(quick) == 1
    shell = [line.strip() for block in code_blocks(quick[0], "(?:bash|sh|shell|console)") for line in
             block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert shell == FRESH_CLONE
    assert "demo --ui" in quick[0]  # the UI step: the demo serves the MLflow UI itself


def test_the_readme_shows_the_demo_gif() -> None:
    assert "docs/demo-fc1.weight.gif" in links(README)
