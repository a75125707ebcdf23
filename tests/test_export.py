"""Model packages: export (bioimage.io spec 0.5, TorchScript + ONNX, model card),
bioimage.io.core's own test, the weights against the checkpoint, reading a package
(predict --model) and the packages it refuses."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_boundary_seg.cli import main
from napari_boundary_seg.core.checkpoint import load_checkpoint, save_checkpoint
from napari_boundary_seg.core.io import read_nifti
from napari_boundary_seg.core.model_package import PackageError, read_package
from napari_boundary_seg.core.predict import predict_volume

pytest.importorskip("bioimageio.spec", reason="export needs bioimageio.spec (the export extra)")
pytest.importorskip("onnx", reason="export needs onnx (the export extra)")
pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (the export extra)")

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lesjak2017-ms"
TINY_TRAIN = [
    "--slice-size", "32", "--depth", "2", "--base-channels", "4", "--batch-size", "8",
    "--val-fraction", "0.34", "--device", "cpu", "--epochs", "2", "--loss", "gdl+bl",
]  # fmt: skip
TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 2D run on 3 synthetic cases (2 epochs) and its package."""
    root = tmp_path_factory.mktemp("export")
    data, run = root / "data", root / "run"
    synth = ["synth", "--out", str(data), "--cases", "3", "--shape", "24", "28", "8"]
    assert main([*synth, "--spacing", "2", "2", "3", "--anatomy", "phantom"]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), *TINY_TRAIN]) == 0
    package = root / "model.zip"
    assert main(["export", str(run / "best.pt"), "--out", str(package)]) == 0
    return {"data": data, "run": run, "checkpoint": run / "best.pt", "package": package}


def _case(data: Path, name: str = "case_002") -> tuple[np.ndarray, tuple, np.ndarray]:
    vols = [read_nifti(p) for p in sorted((data / "imagesTr").glob(f"{name}_*.nii.gz"))]
    return np.stack([v.data for v in vols]), vols[0].spacing[:3], vols[0].affine


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of a package with its rdf.yaml changed by ``edit(rdf)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "rdf.yaml":
                rdf = yaml.safe_load(data)
                edit(rdf)
                data = yaml.safe_dump(rdf).encode()
            zout.writestr(item, data)
    return dst


def test_bioimageio_core_test_passes(exported):
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed")
    summary = core.test_description(str(exported["package"]))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "(onnx)" in names and "(torchscript)" in names  # both weight formats were run


def test_weights_reproduce_the_checkpoint_on_the_test_tensor(exported):
    import onnxruntime as ort

    with zipfile.ZipFile(exported["package"]) as z:
        x = np.load(z.open("test_input.npy"))
        expected = np.load(z.open("test_output.npy"))
        scripted = torch.jit.load(z.open("weights_torchscript.pt"))
        session = ort.InferenceSession(z.read("weights.onnx"))
    model, _ = load_checkpoint(exported["checkpoint"])
    with torch.inference_mode():
        reference = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
        ts = torch.softmax(scripted(torch.from_numpy(x)), 1).numpy()
    ox = torch.softmax(torch.from_numpy(session.run(None, {"input": x})[0]), 1).numpy()
    assert x.shape[:2] == (1, 2) and expected.shape[:2] == (1, 2)
    for probs in (expected, ts, ox):
        np.testing.assert_allclose(probs, reference, atol=TOL, rtol=0)


def test_package_predicts_a_volume_like_its_checkpoint(exported):
    images, spacing, affine = _case(exported["data"])
    reference, _ = predict_volume(
        load_checkpoint(exported["checkpoint"]), images, spacing, affine=affine
    )
    package = read_package(exported["package"])
    for weights in ("torchscript", "onnx", "checkpoint"):
        probs, _ = predict_volume(package.predictor(weights), images, spacing, affine=affine)
        np.testing.assert_allclose(probs, reference, atol=TOL, rtol=0, err_msg=weights)


def test_real_case(exported, tmp_path):
    """A real MS scan (Lesjak 2018): its slice is the test tensor, and the package
    predicts the whole scan as the checkpoint does (the network is trained on
    synthetic data: an equality check, not a segmentation)."""
    if not (REAL_DATA / "imagesTr").is_dir():
        pytest.skip(f"real scans not here ({REAL_DATA}); see its README")
    files = [REAL_DATA / "imagesTr" / f"patient07_000{i}.nii.gz" for i in (0, 1)]
    labels = REAL_DATA / "labelsTr" / "patient07.nii.gz"
    package = tmp_path / "real.zip"
    args = ["export", str(exported["checkpoint"]), "--out", str(package), "--image"]
    assert main([*args, *map(str, files), "--labels", str(labels)]) == 0
    vols = [read_nifti(p) for p in files]
    images, spacing, affine = np.stack([v.data for v in vols]), vols[0].spacing[:3], vols[0].affine
    reference, _ = predict_volume(
        load_checkpoint(exported["checkpoint"]), images, spacing, affine=affine
    )
    probs, _ = predict_volume(read_package(package).predictor(), images, spacing, affine=affine)
    np.testing.assert_allclose(probs, reference, atol=TOL, rtol=0)


def test_model_card_and_files(exported):
    with zipfile.ZipFile(exported["package"]) as z:
        names = set(z.namelist())
        card = z.read("README.md").decode()
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert {"cover.png", "validation_curve.png", "checkpoint.pt", "weights.onnx"} <= names
    for text in ("gdl+bl", "α", "| 2 |", "Validation", "synthetic", "Lineage", "torch", "FLAIR"):
        assert text in card, text
    assert rdf["format_version"].startswith("0.5.")
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "softmax"
    settings = rdf["config"]["napari_boundary_seg"]
    assert settings["dims"] == 2 and settings["config"]["normalize"]
    checkpoint = read_package(exported["package"]).checkpoint()  # weights_only, no optimizer
    assert "optimizer_state" not in checkpoint and checkpoint["model"]["base_channels"] == 4
    path = read_package(exported["package"]).checkpoint_file(exported["run"] / "from-package")
    assert path == read_package(exported["package"]).checkpoint_file(path.parent)  # once
    _, loaded = load_checkpoint(path)  # a checkpoint file fine-tuning can start from
    assert loaded["model"] == checkpoint["model"]


def test_export_never_overwrites_without_asking(exported, tmp_path, capsys):
    package, checkpoint = exported["package"], exported["checkpoint"]
    before = package.read_bytes()
    assert main(["export", str(checkpoint), "--out", str(package)]) == 2
    assert "--overwrite" in capsys.readouterr().err and package.read_bytes() == before
    ck_bytes = checkpoint.read_bytes()
    assert main(["export", str(checkpoint), "--out", str(checkpoint), "--overwrite"]) == 2
    assert checkpoint.read_bytes() == ck_bytes
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.zip")]) == 2


def test_failed_export_leaves_no_file(exported, tmp_path, monkeypatch):
    import bioimageio.spec

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", broken)
    out = tmp_path / "m.zip"
    assert main(["export", str(exported["checkpoint"]), "--out", str(out)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_package_whole(exported, tmp_path, monkeypatch):
    import bioimageio.spec

    def interrupted(descr, output_path, **kwargs):
        Path(output_path).write_bytes(b"PK half a zip")
        raise KeyboardInterrupt

    old = tmp_path / "m.zip"
    old.write_bytes(exported["package"].read_bytes())
    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", interrupted)
    args = ["export", str(exported["checkpoint"]), "--out", str(old), "--overwrite"]
    assert main(args) == 130
    assert list(tmp_path.iterdir()) == [old]
    assert old.read_bytes() == exported["package"].read_bytes()


def test_python_tags_in_the_description_are_not_run(exported, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(exported["package"]) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "rdf.yaml":
                tag = f"name: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n"
                data = tag.encode() + data
            zout.writestr(item, data)
    with pytest.raises(PackageError, match="rdf.yaml is not valid YAML"):
        read_package(bad)
    assert not (tmp_path / "pwned").exists()


def test_missing_dependency_is_named(exported, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["export", str(exported["checkpoint"]), "--out", str(tmp_path / "m.zip")]) == 2
    err = capsys.readouterr().err
    assert "'onnx'" in err and "napari-boundary-seg[export]" in err


def test_predict_cli_with_a_package(exported, tmp_path):
    data = exported["data"] / "imagesTr"
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        main(["predict", str(data), "--checkpoint", str(exported["checkpoint"]), "--out", str(a)])
        == 0
    )
    assert main(["predict", str(data), "--model", str(exported["package"]), "--out", str(b)]) == 0
    for path in sorted(a.glob("*.nii.gz")):
        np.testing.assert_array_equal(read_nifti(path).data, read_nifti(b / path.name).data)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.update(format_version="0.4.10"), "format_version"),
        (lambda r: r.update(type="dataset"), "type"),
        (lambda r: r.update(weights={"keras_hdf5": {"source": "weights.onnx"}}), "weights"),
        (lambda r: r["weights"]["torchscript"].update(source="https://x.org/w.pt"), "weights.torchscript.source"),
        (lambda r: r["inputs"][0]["axes"].append({"type": "space", "id": "z", "size": 4}), "inputs[0].axes"),
        (lambda r: r["inputs"][0]["axes"][1].update(channel_names=["FLAIR"]), "inputs[0].axes channel"),
        (lambda r: r.pop("config"), "config.napari_boundary_seg"),
    ],
)  # fmt: skip
def test_bad_packages_are_refused_naming_the_field(exported, tmp_path, edit, field, capsys):
    def drop_checkpoint(rdf):
        edit(rdf)
        if "config" in rdf and "weights" in str(field):
            rdf["config"]["napari_boundary_seg"].pop("checkpoint")

    bad = _rewrite(exported["package"], tmp_path / "bad.zip", drop_checkpoint)
    with pytest.raises(PackageError, match=field.replace("[", r"\[").replace("]", r"\]")):
        read_package(bad)
    out = tmp_path / "pred"
    data = exported["data"] / "imagesTr"
    assert main(["predict", str(data), "--model", str(bad), "--out", str(out)]) == 2
    assert field in capsys.readouterr().err and not out.exists()  # refused before any work


def test_a_3d_package_refuses_a_2d_scan_and_not_a_zip(exported, tmp_path):
    with pytest.raises(PackageError, match="not a zip"):
        read_package(exported["checkpoint"].parent / "metrics.csv")
    package = read_package(exported["package"])
    with pytest.raises(PackageError, match="inputs\\[0\\].axes channel"):
        package.check_fits(3, channels=1)


def _as_3d(rdf):
    """The 2D package described as a 3D one (its weights stay 2D: never loaded)."""
    settings = rdf["config"]["napari_boundary_seg"]
    settings.update(dims=3, patch_size=[8, 16, 16])
    for kind in ("inputs", "outputs"):
        rdf[kind][0]["axes"].insert(2, {"type": "space", "id": "z", "size": 8})


def _weights_must_not_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("weights loaded before the checks")

    monkeypatch.setattr(torch.jit, "load", fail)


def test_input_axes_that_do_not_fit_are_refused_before_the_weights_load(
    exported, tmp_path, monkeypatch, capsys
):
    from napari_boundary_seg._widgets._checkpoints import load_checked_checkpoint
    from napari_boundary_seg.core.io import write_nifti

    package3d = _rewrite(exported["package"], tmp_path / "m3d.zip", _as_3d)
    assert read_package(package3d).dims == 3
    scans = tmp_path / "scans2d"
    scans.mkdir()
    volume, _, affine = _case(exported["data"])
    for channel in range(2):
        write_nifti(scans / f"slice_{channel:04d}.nii.gz", volume[channel, :, :, 4], affine=affine)
    _weights_must_not_load(monkeypatch)
    out = tmp_path / "pred"
    # the command line: a 3D package and a 2D scan; a 2-modality package and one modality
    assert main(["predict", str(scans), "--model", str(package3d), "--out", str(out)]) == 2
    assert "inputs[0].axes are 3D" in capsys.readouterr().err and not out.exists()
    one = tmp_path / "one"
    one.mkdir()
    write_nifti(one / "case_0000.nii.gz", volume[0], affine=affine)
    assert main(["predict", str(one), "--model", str(exported["package"]), "--out", str(out)]) == 2
    assert "inputs[0].axes channel" in capsys.readouterr().err and not out.exists()
    # the widgets (their worker's first step)
    with pytest.raises(ValueError, match=r"inputs\[0\]\.axes are 3D"):
        load_checked_checkpoint(package3d, 2, spatial_ndim=2)
    with pytest.raises(ValueError, match=r"inputs\[0\]\.axes channel"):
        load_checked_checkpoint(exported["package"], 1, spatial_ndim=3)


def test_embedded_checkpoint_is_loaded_weights_only(exported, tmp_path):
    """A package whose checkpoint.pt holds a pickled object is refused, not unpickled."""
    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": "napari-boundary-seg.checkpoint", "x": zipfile.ZipInfo("a")}, evil)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(exported["package"]) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = (
                evil.read_bytes() if item.filename == "checkpoint.pt" else zin.read(item.filename)
            )
            zout.writestr(item, data)
    with pytest.raises(PackageError, match="checkpoint.pt"):
        read_package(bad).checkpoint()


def test_3d_export(exported, tmp_path):
    """An (untrained) 3D checkpoint: a patch of the training size is the test tensor;
    TorchScript and ONNX reproduce it, and the package predicts a volume as it does."""
    from napari_boundary_seg.core.unet import UNet

    _, checkpoint = load_checkpoint(exported["checkpoint"])
    torch.manual_seed(0)
    net = UNet(2, 2, depth=2, base_channels=4, spatial_dims=3)
    checkpoint = {
        **checkpoint,
        "model": net.hparams,
        "model_state": net.state_dict(),
        "dims": 3,
        "patch_size": (8, 16, 16),
        "config": {**checkpoint["config"], "dims": 3, "patch_size": [8, 16, 16]},
    }
    (tmp_path / "run3d").mkdir()
    path = save_checkpoint(tmp_path / "run3d" / "best.pt", checkpoint)
    images = sorted((exported["data"] / "imagesTr").glob("case_001_*.nii.gz"))
    package = tmp_path / "m3d.zip"
    assert main(["export", str(path), "--out", str(package), "--image", *map(str, images)]) == 0
    rdf = read_package(package).rdf
    assert [a.get("size") for a in rdf["inputs"][0]["axes"][2:]] == [8, 16, 16]
    volume, spacing, affine = _case(exported["data"], "case_001")
    reference, _ = predict_volume(load_checkpoint(path), volume, spacing, affine=affine)
    probs, _ = predict_volume(read_package(package).predictor(), volume, spacing, affine=affine)
    np.testing.assert_allclose(probs, reference, atol=TOL, rtol=0)


def test_native_size_package(exported, tmp_path):
    """Slices at their native size: the axes take any multiple of the network's
    size multiple, and bioimageio.core's test runs them at several sizes."""
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed")
    run, package = tmp_path / "run", tmp_path / "native.zip"
    tiny = ["--depth", "3", "--base-channels", "4", "--val-fraction", "0.34", "--device", "cpu"]
    assert (
        main(["train", "--data", str(exported["data"]), "--out", str(run), "--epochs", "1", *tiny])
        == 0
    )
    assert main(["export", str(run / "best.pt"), "--out", str(package)]) == 0
    axes = read_package(package).rdf["inputs"][0]["axes"][2:]
    assert [a["size"] for a in axes] == [{"min": 4, "step": 4}] * 2
    summary = core.test_description(str(package))
    assert summary.status == "passed", [d.name for d in summary.details if d.status != "passed"]
    images, spacing, affine = _case(exported["data"], "case_001")
    reference, _ = predict_volume(load_checkpoint(run / "best.pt"), images, spacing, affine=affine)
    probs, _ = predict_volume(read_package(package).predictor(), images, spacing, affine=affine)
    np.testing.assert_allclose(probs, reference, atol=TOL, rtol=0)
