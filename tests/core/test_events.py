"""The event protocol: Outcome, DoneEvent/FinetuneResult outcomes, a torch-free module."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from napari_boundary_seg.core import train as train_mod
from napari_boundary_seg.core.events import DoneEvent, Outcome, TrainControl
from napari_boundary_seg.core.finetune import FinetuneResult


def test_outcome_is_a_word_in_json_and_logs():
    assert [o.value for o in Outcome] == ["completed", "stopped", "non-finite"]
    assert json.dumps({"outcome": Outcome.NON_FINITE}) == '{"outcome": "non-finite"}'
    assert f"{Outcome.STOPPED}" == "stopped" and Outcome("completed") is Outcome.COMPLETED


def test_done_event_outcome_defaults_to_what_stopped_says_and_must_agree():
    assert DoneEvent(None, None, [], False, "completed").outcome is Outcome.COMPLETED
    assert DoneEvent(None, None, [], True, "stopped by request").outcome is Outcome.STOPPED
    nan = DoneEvent(None, None, [], True, "non-finite loss", outcome="non-finite")
    assert nan.outcome is Outcome.NON_FINITE
    with pytest.raises(ValueError, match="outcome completed cannot have stopped=True"):
        DoneEvent(None, None, [], True, "x", outcome=Outcome.COMPLETED)
    with pytest.raises(ValueError, match="outcome stopped cannot have stopped=False"):
        DoneEvent(None, None, [], False, "x", outcome=Outcome.STOPPED)
    result = FinetuneResult(None, "p.pt", "out", "out/lineage.json", (1,), 0, stopped=True)
    assert result.outcome is Outcome.STOPPED


def test_the_events_module_needs_no_torch():
    code = (
        "import sys; import napari_boundary_seg.core.events as e; "
        "print('torch' in sys.modules, e.DoneEvent.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "DoneEvent"]


def test_train_sets_the_outcome_where_the_run_ends(tmp_path, monkeypatch):
    from napari_boundary_seg.core.data import case_from_arrays
    from napari_boundary_seg.core.events import StepEvent
    from napari_boundary_seg.core.losses import LossParts
    from napari_boundary_seg.core.progress import run_to_end

    labels = np.zeros((20, 24, 4), np.int64)
    labels[4:9, 6:12, 1:3] = 1
    image = (labels + np.random.default_rng(0).normal(0, 0.2, labels.shape)).astype(np.float32)
    cases = [case_from_arrays([image], labels, (1.0, 1.0, 2.0), case_id="c")]
    tiny = {"slice_size": 32, "depth": 2, "base_channels": 4, "batch_size": 2}
    tiny |= {"val_fraction": 0.0, "device": "cpu", "epochs": 1}

    def run(name, control=None, on_step=None):
        config = train_mod.TrainConfig(out_dir=str(tmp_path / name), **tiny)
        show = (
            (lambda e: on_step(control) if isinstance(e, StepEvent) else None) if on_step else None
        )
        return run_to_end(train_mod.train(config, cases, control), show)

    done = run("completed")
    assert (done.outcome, done.stopped, done.reason) == (Outcome.COMPLETED, False, "completed")
    control = TrainControl()
    done = run("stopped", control, lambda c: c.stop())
    assert done.outcome is Outcome.STOPPED and done.stopped
    real = train_mod.loss_for_kind

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        return LossParts(parts.total * math.nan, parts.region, parts.boundary)

    monkeypatch.setattr(train_mod, "loss_for_kind", poisoned)
    done = run("nan")
    assert done.outcome is Outcome.NON_FINITE and done.stopped
