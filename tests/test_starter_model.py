"""The starter model shipped with the plugin: a readable package, named in the
sample case's Image layers, that segments the sample case."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from napari_boundary_seg import _sample_data
from napari_boundary_seg.core.model_package import read_package
from napari_boundary_seg.core.predict import predict_volume


def test_starter_model_is_a_package_that_says_it_is_synthetic():
    path = _sample_data.starter_model_path()
    assert path.stat().st_size < 2_000_000  # small enough to ship
    package = read_package(path)
    assert package.modalities == ["FLAIR", "T1"] and package.dims == 2
    assert "synthetic-data" in package.rdf["tags"]
    with zipfile.ZipFile(path) as z:
        card = z.read("README.md").decode()
    assert "Trained on synthetic data" in card
    # what the card says of its training: data, loss and α, epochs and steps, lineage
    for text in ("cases: 8 for training", "sites:", "voxel spacing", "α schedule as trained"):
        assert text in card, text
    for text in ("steps per epoch", "validation_curve.png", "## Lineage", "## Versions"):
        assert text in card, text


def test_starter_sample_names_the_model_and_segments_the_case(plugin_cache):
    layers = _sample_data.make_lesion_sample()
    images = [(data, kwargs) for data, kwargs, kind in layers if kind == "image"]
    labels = next(data for data, _, kind in layers if kind == "labels")
    assert [kwargs["name"] for _, kwargs in images] == ["FLAIR", "T1"]
    for _, kwargs in images:
        assert kwargs["metadata"][_sample_data.MODEL_METADATA_KEY] == str(
            _sample_data.starter_model_path()
        )
        assert "affine" in kwargs["metadata"]  # the reader's metadata is kept
    affine = images[0][1]["metadata"]["affine"]
    volume = np.stack([data for data, _ in images])
    spacing = tuple(images[0][1]["scale"])
    package = read_package(_sample_data.starter_model_path())
    _, predicted = predict_volume(package.predictor(), volume, spacing, affine=affine)
    truth, found = labels > 0, predicted > 0
    dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    assert dice > 0.5, dice


def test_the_starter_sample_without_the_model_says_how_to_build_it(monkeypatch):

    monkeypatch.setattr(_sample_data, "starter_model_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="benchmarks/starter_model.py"):
        _sample_data.make_starter_sample()
