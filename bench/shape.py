"""How far the code's shape is from its design, counted: the figures issue 25's table asks for.

    python -m bench.shape [--redis-url redis://127.0.0.1:6379/15]

- files: the project files whose code runs during one request (sys.setprofile around one call of the
  Flask test client, L1 off so that a read goes to Redis): a Redis hit of GET /items/<id>, and a PUT;
- imports: the modules (the project's, and all) that `import cache.core.lru` loads in a fresh interpreter,
  and whether Flask is among them;
- cycles: import cycles among the project's modules (TYPE_CHECKING imports included), from the AST;
- largest: the longest product modules.
Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ["app.py", "config.py", "logs.py", "metrics_dir.py", "buffering_worker.py", "request_framing.py"]
PACKAGES = ["cache", "db", "routes", "demo"]


def product_files() -> list[Path]:
    files = [ROOT / name for name in PRODUCT]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def files_run(call: Callable[[], Any]) -> set[str]:
    """The product files with code that ran during `call()`."""
    seen: set[str] = set()
    product = {str(path) for path in product_files()}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename in product:
            seen.add(frame.f_code.co_filename)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return {os.path.relpath(name, ROOT) for name in seen}


def request_files(redis_url: str) -> tuple[set[str], set[str]]:
    """Files run by a Redis hit of GET /items/<id> and by a PUT (L1 off, SQLite, a real Redis)."""
    from app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{tmp}/items.sqlite3",
            "CACHE_KEY_PREFIX": f"shape-{uuid.uuid4().hex[:8]}:",
            "CACHE_L1_MAX_ITEMS": "0",
            "ACCESS_LOG": "false",
        }
        app = create_app(env)
        client = app.test_client()
        assert client.put("/items/shape-1", json={"name": "one"}).status_code in (200, 201)
        assert client.get("/items/shape-1").headers["X-Cache"] == "redis"  # warm: imports and pools made
        hit = files_run(lambda: client.get("/items/shape-1"))
        put = files_run(lambda: client.put("/items/shape-1", json={"name": "two"}))
        app.extensions["item_store"].close()
    return hit, put


def imports_of(module: str) -> tuple[int, int, bool]:
    """(project modules, all modules, Flask loaded) after `import module` in a fresh interpreter."""
    code = (
        f"import sys; import {module}; names = list(sys.modules); "
        f"roots = {PACKAGES + [name[:-3] for name in PRODUCT]!r}; "
        "print(sum(1 for n in names if n.split('.')[0] in roots), len(names), 'flask' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    own, everything, flask = out.stdout.split()
    return int(own), int(everything), flask == "True"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (TYPE_CHECKING and functions too)."""
    modules = {module_name(path): path for path in product_files()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()
    hit, put = request_files(args.redis_url)
    own, everything, flask = imports_of("cache.core.lru")
    found = cycles(import_graph())
    sizes = sorted(((len(path.read_text().splitlines()), module_name(path)) for path in product_files()), reverse=True)
    print("| measure | value |\n|---|---|")
    print(f"| project files run by a Redis hit of GET /items/<id> | {len(hit)} |")
    print(f"| project files run by a PUT | {len(put)} |")
    print(f"| `import cache.core.lru`: project modules / all modules / Flask loaded | {own} / {everything} / {flask} |")
    print(f"| import cycles (TYPE_CHECKING included) | {len(found)}: {'; '.join(' '.join(c) for c in found)} |")
    print(
        f"| product modules / over 400 lines / largest | {len(sizes)} / {sum(n > 400 for n, _ in sizes)} / "
        f"{sizes[0][1]} ({sizes[0][0]}) |"
    )
    print(f"\nRedis hit: {', '.join(sorted(hit))}\nPUT: {', '.join(sorted(put))}")


if __name__ == "__main__":
    main()
