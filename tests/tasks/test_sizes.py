"""The registry's official split sizes: one per stored split of every registered task, and equal to the data's
count wherever the data is on this machine."""

from __future__ import annotations

import pytest

import tasks


def test_every_registered_task_has_a_size_for_exactly_its_stored_splits():
    assert set(tasks.OFFICIAL_SIZES) == set(tasks.TASKS)
    for name, spec in tasks.TASKS.items():
        assert set(tasks.official_sizes(name)) == set(spec.stored_splits), name


def test_the_sizes_of_present_data_match_the_registry():
    assert {s: len(tasks.build_task("digits", None, s)) for s in ("train", "test")} == tasks.official_sizes("digits")


def test_a_task_without_recorded_sizes_is_an_error_naming_it():
    with pytest.raises(tasks.TaskError, match="imagefolder:x"):
        tasks.official_sizes("imagefolder:x")
