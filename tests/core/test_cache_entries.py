"""The case cache's one writer and one checked reader, and blocking forms of generators."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from napari_boundary_seg.core.cache_entries import (
    SliceEntry,
    VolumeEntry,
    iter_cache_cases,
    iter_cache_slices,
    read_entry,
    write_entry,
)
from napari_boundary_seg.core.cases import case_from_arrays
from napari_boundary_seg.core.distance import class_distance_maps, iter_class_distance_maps
from napari_boundary_seg.core.preprocess import PreprocessConfig
from napari_boundary_seg.core.progress import run_to_end


def _case(seed=0, case_id="c0"):
    rng = np.random.default_rng(seed)
    image = rng.random((12, 10, 8)).astype(np.float32)
    return case_from_arrays(
        image, (image > 0.8).astype(int), spacing=(1.0, 1.0, 2.0), case_id=case_id
    )


def test_entry_written_whole_and_read_back_checked(tmp_path):
    final = tmp_path / "sl-abc"
    arrays = {
        "images": np.zeros((3, 1, 4, 4), np.float32),
        "labels": np.zeros((3, 4, 4), np.uint8),
        "dist": np.zeros((3, 2, 4, 4), np.float32),
    }
    meta = {
        "case_id": "c",
        "spacing": [1.0, 1.0, 1.0],
        "slice_index": [0, 1, 2],
        "nonempty": [False] * 3,
        "modalities": ["0"],
        "num_classes": 2,
    }
    write_entry(final, arrays, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sl-abc"]  # no temporary folder left
    entry = read_entry(final, SliceEntry)
    assert entry is not None and entry.slice_index == (0, 1, 2)
    assert entry.open("dist").shape == (3, 2, 4, 4)
    assert read_entry(final, VolumeEntry) is None  # not that kind: its arrays are missing
    np.save(final / "labels.npy", np.zeros((2, 4, 4), np.uint8))  # one slice short of the meta
    assert read_entry(final, SliceEntry) is None
    with pytest.raises(ValueError, match="not a complete cache entry"):
        SliceEntry.read(final)


@pytest.mark.parametrize("kind", ["volumes", "slices"])
def test_damaged_entry_is_written_again(tmp_path, kind):
    def build():
        if kind == "volumes":
            return run_to_end(iter_cache_cases([_case()], tmp_path, 2))
        return run_to_end(iter_cache_slices([_case()], tmp_path, 2, PreprocessConfig(slice_size=8)))

    (entry,) = build()
    dist = np.array(entry.open("dist"))
    (entry.path / "meta.json").write_text("{not json")
    (again,) = build()
    assert again.path == entry.path
    assert json.loads((again.path / "meta.json").read_text())["case_id"] == "c0"
    np.testing.assert_array_equal(np.array(again.open("dist")), dist)
    assert [p.name for p in tmp_path.iterdir()] == [entry.path.name]


def test_blocking_form_has_the_generators_signature_and_result():
    gen = inspect.signature(iter_class_distance_maps)
    blocking = inspect.signature(class_distance_maps)
    assert list(blocking.parameters) == list(gen.parameters)
    assert blocking.return_annotation == "np.ndarray"
    assert class_distance_maps.__name__ == "class_distance_maps"
    assert "iter_class_distance_maps" in class_distance_maps.__doc__
    labels = np.array([[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(
        class_distance_maps(labels, 2, spacing=(1.0, 2.0)),
        run_to_end(iter_class_distance_maps(labels, 2, spacing=(1.0, 2.0))),
    )
