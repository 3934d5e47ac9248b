"""The code's shape, as docs/ARCHITECTURE.md draws it: no import cycle (TYPE_CHECKING and function-level
imports included), the core importable without anything above it, no module over 400 lines, and every
product module on the architecture page. The layers themselves are import-linter's (pyproject.toml)."""

from __future__ import annotations

import re
import subprocess
import sys

from bench.shape import ROOT, cycles, import_graph, module_name, product_files

MAX_LINES = 400


def test_no_import_cycle_among_the_product_modules():
    assert cycles(import_graph()) == []


def test_a_core_module_imports_nothing_above_the_core_and_no_flask():
    code = "import sys, cache.core.lru; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    names = loaded.stdout.split()
    own = {module_name(path) for path in product_files()}
    above = [n for n in names if n in own and not re.match(r"(cache\.core|db)(\.|$)", n) and n != "cache"]
    assert above == [] and "flask" not in names
    assert "cache.core.lru" in names  # the check saw the import


def test_no_product_module_is_over_400_lines():
    sizes = {module_name(path): len(path.read_text().splitlines()) for path in product_files()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
    assert len(sizes) > 40  # it counted the product, not an empty list


def mapped_paths(page: str) -> set[str]:
    """The paths the code map names: `x.py` alone, or `pkg/` at the head of an item and `name.py` in it."""
    named: set[str] = set()
    for item in re.split(r"\n- ", page.split("## Code map", 1)[1].split("\n## ", 1)[0]):
        tokens = re.findall(r"`([^`]+)`", item)
        folder = tokens[0] if tokens and tokens[0].endswith("/") else ""
        named |= {folder + token for token in tokens if token.endswith(".py")}
    return named


def test_every_product_module_appears_in_the_architecture_map():
    named = mapped_paths((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    modules = [path for path in product_files() if path.read_text().strip()]  # an empty __init__.py says nothing
    paths = [path.relative_to(ROOT).as_posix() for path in modules] + ["gunicorn.conf.py"]
    assert [path for path in paths if path not in named] == []
    assert "cache/core/item_cache.py" in named and "app.py" in named  # it read the map
