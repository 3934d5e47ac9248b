"""The README and docs/*.md point only at things that exist: files, headings, and the functions they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
SYMBOL = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)`$")


def prose(text: str) -> str:
    """The text a reader sees as Markdown: code blocks and comments removed."""
    return COMMENT.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[str, str]]:
    return [(text, target) for text, target in LINK.findall(prose(path.read_text())) if "://" not in target]


def defines(source: str, name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return re.search(rf"^\s*(def|class)\s+{last}\b|^\s*{last}\s*(:[^=]*)?=", source, re.M) is not None


def problems(document: Path) -> list[str]:
    """Each link in `document` that points at nothing: a missing file, heading, line or definition."""
    broken = []
    for text, target in links(document):
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with that anchor")
        elif re.fullmatch(r"L\d+(-L\d+)?", anchor) and path.suffix == ".py":
            if int(anchor[1:].split("-")[0]) > len(path.read_text().splitlines()):
                broken.append(f"{target}: the file is shorter")
        elif (symbol := SYMBOL.match(text)) and path.suffix == ".py" and not defines(path.read_text(), symbol[1]):
            broken.append(f"{target}: does not define {symbol[1]}")
    return broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_heading_and_definition(document):
    assert problems(document) == []


def test_the_checker_reports_each_kind_of_broken_link(tmp_path):
    (tmp_path / "code.py").write_text("def present():\n    pass\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A `Sub` heading\n\n```sh\n# not a heading\n[in](code)\n```\n<!-- [hidden](nowhere.md) -->\n"
        "[ok](#a-sub-heading) [bad](#not-a-heading) [gone](missing.md) [`present`](code.py) [`absent`](code.py)\n"
        "[line](code.py#L2) [past the end](code.py#L3) [web](https://example.com/x.md)\n"
    )
    assert problems(page) == [
        "#not-a-heading: no heading with that anchor",
        "missing.md: no such file",
        "code.py: does not define absent",
        "code.py#L3: the file is shorter",
    ]
    assert defines('SET_IF_NEWER = f"""\n', "redis_tier.SET_IF_NEWER")


class RecordingEnviron(dict):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def test_every_setting_load_config_reads_has_a_row_in_docs_configuration():
    from config import load_config

    environ = RecordingEnviron()
    load_config(environ)
    table = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    internal = {"REDIS_EMBEDDED"}  # set by gunicorn.conf.py for its workers; the page says so in prose
    missing = sorted(name for name in environ.asked - internal if f"| `{name}` |" not in table)
    assert len(environ.asked) > 30  # the recording saw the settings, not nothing
    assert missing == [], f"add a row to docs/CONFIGURATION.md for {missing}"


WORD_CEILING = 12_000  # README + docs/*.md; BENCHMARKS.md (the figures) is not counted


def test_readme_and_docs_stay_within_the_word_ceiling():
    words = {path.name: len(path.read_text().split()) for path in DOCUMENTS}  # as `wc -w` counts them
    assert sum(words.values()) <= WORD_CEILING, words


def test_the_readme_runs_and_tests_with_one_command_each():
    blocks = re.findall(r"^```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.M | re.S)
    assert "pip install -r requirements.txt && gunicorn app:app" in blocks
    assert "pip install -r requirements-dev.txt && pytest" in blocks


TOP_LEVEL = ["app.py", "config.py", "logs.py", "metrics_dir.py", "request_framing.py", "buffering_worker.py"]


def test_architecture_names_every_top_level_module_and_package():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    named = [*TOP_LEVEL, "gunicorn.conf.py", "cache/", "db/", "routes/", "demo/"]
    assert all((ROOT / name).exists() for name in named)
    assert [name for name in named if f"`{name}" not in text] == []


def glossary_terms(text: str) -> list[tuple[str, str]]:
    """(term, the rest of its row) for each bold name, with the qualifier in brackets after it if any, in
    the first cell of the cheat sheet's glossary tables: "**lease** (the follower's)" is one term."""
    rows = re.findall(r"^\| (\*\*.*?) \|(.*)$", prose(text), re.M)
    named = r"\*\*(.+?)\*\*( \([^)]*\))?"
    return [("".join(term).lower(), rest) for cell, rest in rows for term in re.findall(named, cell)]


def test_the_cheat_sheets_glossary_names_each_term_once_and_links_each_row_to_its_rule():
    terms = glossary_terms((ROOT / "docs" / "CHEATSHEET.md").read_text())
    names = [name for name, _ in terms]
    assert len(names) > 30  # both tables were read
    assert sorted({name for name in names if names.count(name) > 1}) == []
    assert [name for name, row in terms if "](" not in row] == []


FRONT_DOOR_MINUTES = 15  # README + the cheat sheet + WALKTHROUGH's 60-second explanation, at 200 words a minute


def test_the_front_door_reads_in_under_fifteen_minutes():
    walkthrough = (ROOT / "docs" / "WALKTHROUGH.md").read_text()
    explanation = walkthrough.split("## The 60-second explanation", 1)[1].split("\n## ", 1)[0]
    pages = [(ROOT / "README.md").read_text(), (ROOT / "docs" / "CHEATSHEET.md").read_text(), explanation]
    assert sum(len(page.split()) for page in pages) <= FRONT_DOOR_MINUTES * 200
