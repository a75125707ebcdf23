"""The study's config: its options come from the declared settings, and the wmh
study's first run is built exactly as the committed results were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_boundary_seg.cli import build_parser
from napari_boundary_seg.core.checkpoint import checkpoint_config
from napari_boundary_seg.study import ARMS, STUDY_TRAIN, StudyConfig

DATA = Path(__file__).parent / "data" / "study_wmh_gdl_seed0.json"


def _study_config(argv: list[str], monkeypatch) -> StudyConfig:
    import napari_boundary_seg.study.command as command

    captured = {}

    def fake(config, **kwargs):
        captured["config"] = config
        raise SystemExit(0)
        yield  # a generator, as iter_study

    monkeypatch.setattr(command, "iter_study", fake)
    args = build_parser("study").parse_args(["study", *argv])
    with pytest.raises(SystemExit):
        args.func(args)
    return captured["config"]


def test_wmh_study_builds_the_committed_first_run(monkeypatch) -> None:
    """benchmarks/loss_study_wmh.sh, run gdl seed 0: the TrainConfig the study trains
    equals, field for field, the one captured from the code that ran the committed study."""
    saved = json.loads(DATA.read_text())
    config = _study_config(saved["argv"], monkeypatch)
    arm = next(a for a in ARMS if a.key == "gdl")
    built = config.run_config(arm, 0, config.runs_path / "gdl-seed0")
    # the record predates later settings: read as a checkpoint of its version is read
    assert built.to_dict() == checkpoint_config({"config": saved["train_config"]})
    assert built.steps_per_epoch is None and built.max_steps_per_epoch == 30
    # the script's arguments are what the file says
    script = (Path(__file__).parents[1] / "benchmarks" / "loss_study_wmh.sh").read_text()
    assert " ".join(saved["argv"][:4]) in " ".join(script.split())


def test_study_config_holds_a_train_config_and_reads_old_records(tmp_path) -> None:
    config = StudyConfig(data=tmp_path, out=tmp_path, epochs=3, dims=3, arms=("gdl",))
    assert config.train == STUDY_TRAIN.replace(epochs=3, dims=3)
    assert config.train.patch_size == (96, 96, 32)
    again = StudyConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    old = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "loss_study_wmh"
                      / "study.json").read_text())["config"]  # fmt: skip
    wmh = StudyConfig.from_dict(old)
    assert (wmh.train.lr_patience, wmh.train.slice_size, wmh.synth_cases) == (20, 128, 28)
    with pytest.raises(TypeError, match="loss"):
        StudyConfig(data=tmp_path, out=tmp_path, loss="bl")  # set per arm
