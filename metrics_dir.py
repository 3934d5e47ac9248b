"""PROMETHEUS_MULTIPROC_DIR: which files in it this service writes, and removing those (and nothing else)."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

# The names prometheus_client's multiprocess mode gives its files: `<type>_<pid>.db`, gauges with their mode.
METRIC_FILE = re.compile(r"(counter|histogram|summary|gauge_(live)?(all|min|max|sum|mostrecent))_[0-9]+\.db")


def is_metric_file(name: str) -> bool:
    return METRIC_FILE.fullmatch(name) is not None


def unrecognised(path: str) -> list[str]:
    """Names in the directory `path` that are not prometheus_client metric files (sorted; [] if it is missing)."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if not is_metric_file(name) or not os.path.isfile(os.path.join(path, name)))


@dataclass(frozen=True)
class MetricsDir:
    """The directory the workers write their metric files to, and whether this process created it."""

    path: str
    created: bool


def prepare(path: str | None) -> MetricsDir:
    """A fresh private directory when `path` is None; else `path`, created if missing, with the metric files of
    an earlier run removed (they would be summed into this one's). load_config has refused unknown files."""
    if path is None:
        return MetricsDir(tempfile.mkdtemp(prefix="item-cache-metrics-"), created=True)
    try:
        os.mkdir(path)
        return MetricsDir(path, created=True)
    except FileExistsError:
        remove_metric_files(path)
        return MetricsDir(path, created=False)


def remove_metric_files(path: str) -> None:
    """Delete the metric files in `path`; any other file is left where it is."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if is_metric_file(name) and os.path.isfile(full) and not os.path.islink(full):
            os.remove(full)


def clean_up(metrics_dir: MetricsDir) -> None:
    """At exit: remove a directory this process created, or only the metric files from one it was given."""
    remove_metric_files(metrics_dir.path)
    if metrics_dir.created:
        try:
            os.rmdir(metrics_dir.path)  # refuses if anyone put something else there meanwhile: theirs, kept
        except OSError:
            pass
