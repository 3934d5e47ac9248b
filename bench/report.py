"""BENCHMARKS.md is written in sections, one per benchmark, each replaced whole by its next run."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


_CPUS = len(os.sched_getaffinity(0))  # read on import, before bench.load.split_cpus pins this process


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    version_line = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    redis_version = version_line.split()[2].removeprefix("v=")
    return f"{cpu}, {_CPUS} cores, Python {platform.python_version()}, Redis {redis_version}"


HEADER = "# Benchmarks\n"


def update_section(name: str, markdown: str) -> None:
    """Replace the text between the section's markers (appending the section if it is new)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q * count."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return lower_bound


def publish(name: str, section: str, write: bool = True) -> None:
    """Print a bench's section and, with `write`, put it in BENCHMARKS.md."""
    if write:
        update_section(name, section)
    print(section)
