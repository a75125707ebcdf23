"""core.checkpoint: the format's round trip, old checkpoints, the training mode, imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import napari_boundary_seg.core as core_pkg
from napari_boundary_seg.core.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    InferenceSettings,
    inference_settings,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    training_mode,
)
from napari_boundary_seg.core.data import PreprocessConfig
from napari_boundary_seg.core.unet import UNet

CORE = Path(core_pkg.__file__).parent


def _core_imports(module: str) -> set[str]:
    """The ``napari_boundary_seg.core`` modules ``module`` imports, lazily or not."""
    tree = ast.parse((CORE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("napari_boundary_seg.core."):
                found.add(node.module.split(".")[2])
            elif node.module == "napari_boundary_seg.core":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_boundary_seg.core."):
                    found.add(alias.name.split(".")[2])
    return found - {module}


def test_train_and_predict_do_not_import_each_other():
    assert "train" not in _core_imports("predict")
    assert not {"train", "predict"} & _core_imports("checkpoint")
    assert not {"train", "predict", "checkpoint"} & _core_imports("device")


def test_core_imports_point_down():
    graph = {path.stem: _core_imports(path.stem) for path in CORE.glob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, node, dep])}")
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def _write(path, model, config, **extra):
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.hparams,
            "model_state": model.state_dict(),
            "config": config,
            **extra,
        },
    )
    return path


def test_round_trip_holds_dims_and_patch_size(tmp_path):
    model = UNet(1, 2, depth=2, base_channels=4, spatial_dims=3, strides=((1, 2, 2),))
    config = {"dims": 3, "patch_size": [16, 16, 8], "axis": 2, "slice_size": None}
    path = _write(
        tmp_path / "a.pt",
        model,
        config,
        format_version=CHECKPOINT_VERSION,
        **training_mode(config),
    )
    loaded, ckpt = load_checkpoint(path)
    assert (ckpt["dims"], ckpt["patch_size"]) == (3, (16, 16, 8))
    assert loaded.spatial_dims == 3 and loaded.strides == ((1, 2, 2),)
    settings = inference_settings(ckpt)
    assert settings == InferenceSettings(3, (16, 16, 8), PreprocessConfig(slice_size=None))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_a_version_1_checkpoint_reads_as_2d(tmp_path):
    # written as the trainer wrote them before 3D: no dims, no patch_size, 2D hparams only
    model = UNet(1, 2, depth=2, base_channels=4)
    hparams = {k: v for k, v in model.hparams.items() if k not in ("spatial_dims", "strides")}
    save_checkpoint(
        tmp_path / "old.pt",
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": 1,
            "model": hparams,
            "model_state": model.state_dict(),
            "config": {"slice_size": 32, "axis": 0},
        },
    )
    ckpt = read_checkpoint(tmp_path / "old.pt")
    assert training_mode(ckpt) == {"dims": 2, "patch_size": None}
    settings = inference_settings(ckpt)
    assert (settings.dims, settings.patch_size, settings.axis, settings.slice_size) == (
        2,
        None,
        0,
        32,
    )


def test_training_mode_of_configs_and_bad_values():
    assert training_mode({}) == {"dims": 2, "patch_size": None}
    assert training_mode({"dims": 3, "patch_size": (8, 8, 4)}) == {
        "dims": 3,
        "patch_size": (8, 8, 4),
    }
    # the checkpoint's own keys win over its config's
    ckpt = {"config": {"dims": 2}, "dims": 3, "patch_size": [4, 4, 4]}
    assert training_mode(ckpt)["patch_size"] == (4, 4, 4)
    # a 2D checkpoint's inference uses whole slices whatever its training patch size
    assert inference_settings({"config": {"dims": 2, "patch_size": [64, 64]}}).patch_size is None
    with pytest.raises(ValueError, match="dims must be 2 or 3, got 4"):
        training_mode({"dims": 4})
    with pytest.raises(ValueError, match="dims=3 needs a patch_size"):
        training_mode({"dims": 3})
    with pytest.raises(ValueError, match="3D patch_size needs 3 values"):
        training_mode({"dims": 3, "patch_size": [8, 8]})
    with pytest.raises(ValueError, match="positive integers"):
        training_mode({"dims": 3, "patch_size": [8, 0, 8]})


def test_the_trainer_writes_the_mode(tmp_path):
    import numpy as np

    from napari_boundary_seg.core.data import case_from_arrays
    from napari_boundary_seg.core.progress import run_to_end
    from napari_boundary_seg.core.train import TrainConfig, train

    labels = np.zeros((12, 12, 2), np.int64)
    labels[3:7, 4:8] = 1
    case = case_from_arrays([labels.astype(np.float32)], labels, (1.0, 1.0, 2.0), case_id="c")
    config = TrainConfig(
        out_dir=str(tmp_path), epochs=1, slice_size=16, depth=1, base_channels=2, device="cpu"
    )
    run_to_end(train(config, [case]))
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["format_version"] == CHECKPOINT_VERSION == 2
    assert (ckpt["dims"], ckpt["patch_size"]) == (2, None)
    assert inference_settings(ckpt).slice_size == 16
