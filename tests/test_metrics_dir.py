"""The metrics directory: the service removes the metric files it writes, and a directory it made, never
anything else."""

from __future__ import annotations

import os

import metrics_dir


def test_metric_file_names():
    ours = ["counter_1.db", "histogram_42.db", "summary_9.db", "gauge_livesum_7.db", "gauge_max_7.db"]
    others = ["important.txt", "counter.db", "gauge_12.db", "counter_12.db.bak", "x_counter_1.db", "counter_a.db"]
    assert all(metrics_dir.is_metric_file(name) for name in ours)
    assert not any(metrics_dir.is_metric_file(name) for name in others)


def test_unset_makes_a_private_directory_and_removes_it_at_exit():
    made = metrics_dir.prepare(None)
    assert made.created and os.listdir(made.path) == []
    open(os.path.join(made.path, "counter_1.db"), "wb").close()
    metrics_dir.clean_up(made)
    assert not os.path.exists(made.path)


def test_a_missing_directory_is_created_and_removed_at_exit(tmp_path):
    made = metrics_dir.prepare(str(tmp_path / "metrics"))
    assert made.created and os.path.isdir(made.path)
    metrics_dir.clean_up(made)
    assert not os.path.exists(made.path)


def test_a_given_directory_loses_only_stale_metric_files_and_is_kept(tmp_path):
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    (tmp_path / "gauge_livesum_1.db").write_bytes(b"stale")
    given = metrics_dir.prepare(str(tmp_path))
    assert not given.created and os.listdir(tmp_path) == []
    (tmp_path / "histogram_2.db").write_bytes(b"")
    (tmp_path / "important.txt").write_text("appeared while running")
    metrics_dir.clean_up(given)
    assert os.listdir(tmp_path) == ["important.txt"]


def test_a_directory_it_made_is_kept_if_someone_else_put_a_file_there(tmp_path):
    made = metrics_dir.prepare(str(tmp_path / "metrics"))
    (tmp_path / "metrics" / "counter_3.db").write_bytes(b"")
    (tmp_path / "metrics" / "important.txt").write_text("theirs")
    metrics_dir.clean_up(made)
    assert os.listdir(tmp_path / "metrics") == ["important.txt"]


def test_unrecognised_lists_what_is_not_a_metric_file(tmp_path):
    (tmp_path / "counter_1.db").write_bytes(b"")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "counter_2.db").mkdir()  # a directory with a metric file's name is not one
    assert metrics_dir.unrecognised(str(tmp_path)) == ["b.txt", "counter_2.db"]
    assert metrics_dir.unrecognised(str(tmp_path / "missing")) == []
