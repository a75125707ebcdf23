"""Shared fixtures (keep minimal)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests use tiny tensors: one thread avoids OpenMP oversubscription on a
    2-core machine (about 5x faster here under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def _plugin_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plugin-cache")


@pytest.fixture(autouse=True, scope="session")
def _no_user_cache(tmp_path_factory):
    """The command line prepares cases into the per-user cache: tests use a temporary
    one, never the user's (``NAPARI_BOUNDARY_SEG_CACHE``, unless a test sets it)."""
    import os

    previous = os.environ.get("NAPARI_BOUNDARY_SEG_CACHE")
    os.environ["NAPARI_BOUNDARY_SEG_CACHE"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if previous is None:
        os.environ.pop("NAPARI_BOUNDARY_SEG_CACHE", None)
    else:
        os.environ["NAPARI_BOUNDARY_SEG_CACHE"] = previous


@pytest.fixture
def plugin_cache(_plugin_cache_dir, monkeypatch):
    """Point the plugin's cache (sample data) to a temporary folder shared by the session,
    so the sample case is generated once per test run and never in the user's cache."""
    monkeypatch.setenv("NAPARI_BOUNDARY_SEG_CACHE", str(_plugin_cache_dir))
    return _plugin_cache_dir


@pytest.fixture(scope="session")
def train_tiny():
    """``train_tiny(out_dir, images, labels, spacing, axis, modalities=None) -> DoneEvent``:
    one epoch of a tiny UNet (2 levels, width 4, 32x32 slices, batch 3, CPU, no
    validation) on one in-memory case, for tests that need a real checkpoint."""
    from napari_boundary_seg.core.data import case_from_arrays
    from napari_boundary_seg.core.progress import run_to_end
    from napari_boundary_seg.core.train import TrainConfig, train

    def run(out_dir, images, labels, spacing, axis, modalities=None):
        case = case_from_arrays(list(images), labels, spacing, case_id="c", modalities=modalities)
        config = TrainConfig(
            out_dir=str(out_dir),
            epochs=1,
            batch_size=3,
            slice_size=32,
            axis=axis,
            depth=2,
            base_channels=4,
            device="cpu",
            val_fraction=0.0,
            loss="gdl+bl",  # its fine-tunes follow an α schedule
        )
        return run_to_end(train(config, [case]))

    return run
