"""benchmarks/basin_gradients.py on tiny synthetic slices: the boundary term's
arithmetic on the labels, the gradient table at a small UNet, resuming and the report."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.distance import phi_maps
from napari_boundary_seg.core.unet import UNet

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "basin_gradients.py"


@pytest.fixture(scope="module")
def basin():
    spec = importlib.util.spec_from_file_location("basin_gradients", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def sample(basin):
    labels = np.zeros((5, 16, 16), dtype=np.uint8)  # slice 4 empty: no edge effect
    labels[1:4, 5:10, 5:10] = 1  # 3 slices thick: 9 interior voxels (φ < 0) in slice 2
    labels[0, 12:14, 12:14] = 1  # one slice thick: all on ∂G, φ = 0
    spacing = (3.0, 1.5, 1.5)
    phi_mm = phi_maps(labels, 2, spacing, "3d", "mm")
    phi_vox = phi_maps(labels, 2, spacing, "3d", "voxels")
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 1, 16, 16))).float()
    images += torch.from_numpy(labels)[:, None].float()
    return basin.Sample(
        images=images,
        labels=torch.from_numpy(labels).long(),
        phi_mm=torch.from_numpy(np.ascontiguousarray(np.swapaxes(phi_mm, 0, 1))),
        phi_vox=torch.from_numpy(np.ascontiguousarray(np.swapaxes(phi_vox, 0, 1))),
        num_classes=2,
        info={},
    )


def test_label_arithmetic(basin, sample):
    out = basin.label_arithmetic(sample)
    assert out["lesion_voxels"] == 79 and out["slices_with_lesion"] == 4
    assert out["lesion_phi_zero_share"] == pytest.approx(1 - 9 / 79)
    assert out["n_voxels"] == 5 * 16 * 16
    for units in ("mm", "vox"):
        assert out[f"bl_{units}_empty"] == 0.0
        assert out[f"bl_{units}_perfect"] < 0.0
        assert out[f"bl_{units}_reward"] == out[f"bl_{units}_perfect"]
        assert out[f"bl_{units}_half"] > 0.0 > out[f"bl_{units}_perfect"]
        for d in basin.FP_DISTANCES:
            cost = out[f"bl_{units}_fp_cost_{d:g}"]
            assert cost == pytest.approx(d / out["n_voxels"])
            assert out[f"bl_{units}_fp_to_cancel_{d:g}"] * cost == pytest.approx(
                -out[f"bl_{units}_reward"]
            )
    # the reward is the sum of φ inside the lesions over N: φ in mm is 1.5x φ in voxels in-plane
    assert out["bl_mm_perfect"] * out["n_voxels"] == pytest.approx(
        out["phi_mm_in_lesion_mean"] * out["lesion_voxels"], rel=1e-5
    )
    assert out["gdl_perfect"] == pytest.approx(0.0, abs=1e-6)
    assert out["gdl_empty"] > out["gdl_dilated"] > out["gdl_perfect"]


def test_gradient_table_is_finite(basin, sample):
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=2, depth=2, base_channels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = basin.term_gradients(model, sample, batch_size=2, weights=(0.9, 0.1))
    for key, value in model.state_dict().items():  # the network is left as it was
        assert torch.equal(value, before[key]), key
    for key, value in out.items():
        assert math.isfinite(value), key
    for term in basin.TERMS:
        assert out[f"{term}_grad_norm"] > 0
        # the head bias's gradient is the sum of ∂L/∂z_fg over the pixels
        assert out[f"{term}_dbias_fg"] == pytest.approx(
            out[f"{term}_dz_fg_sum"], rel=1e-4, abs=1e-8
        )
        assert 0.0 <= out[f"{term}_dz_bg_share"] <= 1.0
    for key in ("cos_gdl_bl_mm", "cos_gdl_bl_vox", "cos_bl_mm_bl_vox", "cos_total_gdl"):
        assert -1.0 - 1e-6 <= out[key] <= 1.0 + 1e-6
    # an untrained network (p_fg near 0.5 everywhere): φ > 0 on most pixels, so the
    # boundary term asks for less foreground everywhere
    assert out["bl_mm_dbias_fg"] > 0 and out["bl_vox_dbias_fg"] > 0
    assert out["cos_bl_mm_bl_vox"] > 0.9
    assert 0.0 < out["p_fg_mean"] < 1.0
    assert out["weighted_bl_over_gdl"] == pytest.approx(
        0.1 * out["bl_mm_grad_norm"] / (0.9 * out["gdl_grad_norm"]), rel=1e-5
    )
    g, b = out["gdl_grad_norm"], out["bl_mm_grad_norm"]
    assert (1 - out["w_b_equal_norm"]) * g == pytest.approx(out["w_b_equal_norm"] * b, rel=1e-5)
    assert model.training  # the mode is restored


def test_resume_and_report(basin, tmp_path):
    folder = tmp_path / "load_0.6"
    folder.mkdir()
    arithmetic = {"lesion_voxels": 3, "bl_mm_perfect": -0.1}
    (folder / "labels.json").write_text(json.dumps({"sample": arithmetic, "all": arithmetic}))
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"x")
    source = basin.ModelSource("gdl-seed0.last", "last", "gdl", 0, ckpt)
    record = {
        "model": source.name,
        "kind": "last",
        "arm": "gdl",
        "seed": 0,
        "loss": "gdl",
        "epoch": 30,
        "val_dice_at_epoch": 0.02,
        "p_fg_mean": 0.01,
        "gdl_grad_norm": 0.5,
    }
    out_file = folder / f"{source.name}.json"
    assert basin._needs(out_file, source)
    basin._write_json(out_file, {**record, "finished": True, "stamp": [0, 0]})
    assert not basin._needs(out_file, source)  # a finished run's JSON is kept
    basin._write_json(out_file, {**record, "finished": False, "stamp": [0, 0]})
    assert basin._needs(out_file, source)  # an unfinished run's checkpoint moved on
    basin._write_json(out_file, {**record, "finished": False, "stamp": basin._stamp(ckpt)})
    assert not basin._needs(out_file, source)
    best = {**record, "model": "gdl-seed0.best", "kind": "best", "gdl_grad_norm": 0.7}
    basin._write_json(folder / "gdl-seed0.best.json", best)  # the same epoch as last.pt
    fresh = {"model": "init-seed0", "kind": "init", "arm": "init", "seed": 0, "epoch": 0}
    basin._write_json(folder / "init-seed0.json", {**fresh, "gdl_grad_norm": 0.3})
    states = basin.state_rows(basin.read_results(tmp_path)[1])
    assert {(r["state"], r["n"], r["gdl_grad_norm"]) for r in states} == {
        ("fresh", 1, 0.3),
        ("basin, gdl, last", 1, 0.5),
    }
    md = basin.write_report(tmp_path).read_text()
    assert "| 0.6 | gdl-seed0.last |" in md and "| 0.6 | all training | – | 3 |" in md
    assert (tmp_path / "gradients.csv").read_text().startswith("load,model")


def test_only_complete_load_folders(basin, tmp_path):
    for name, labels in (("load_3", 2), ("load_0.6", 1), ("load_0.03", 0)):
        folder = tmp_path / name
        (folder / "labelsTr").mkdir(parents=True)
        for k in range(labels):
            (folder / "labelsTr" / f"case_{k:03d}.nii.gz").write_bytes(b"")
        if name != "load_0.03":  # dataset.json comes last: load_0.03 is still being written
            cases = [{"label": f"./labelsTr/case_{k:03d}.nii.gz"} for k in range(2)]
            (folder / "dataset.json").write_text(json.dumps({"training": cases}))
    assert basin.load_folders(tmp_path, None) == [("3", tmp_path / "load_3")]
    assert basin.load_folders(tmp_path, ["0.6"]) == []
