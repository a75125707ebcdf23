"""Data-parallel training (core.distributed, train() under a process group) on the CPU.

The 2-process tests spawn two processes on this machine (gloo, a file store in
the test's folder: no network) and are bounded in time. The UNet's BatchNorm
normalises with the batch of each process on the CPU (torch has no
SyncBatchNorm there), so the exact equivalence "2 processes × batch b = 1
process × batch 2b" is checked with a per-sample norm (GroupNorm) in place of
BatchNorm; on CUDA the trainer converts BatchNorm to SyncBatchNorm, which gives
the same equivalence with BatchNorm.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from napari_boundary_seg.core import distributed
from napari_boundary_seg.core import train as train_mod
from napari_boundary_seg.core.data import case_from_arrays
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import (
    DoneEvent,
    EpochEvent,
    InfoEvent,
    StepEvent,
    TrainConfig,
    TrainControl,
    train,
)
from napari_boundary_seg.core.unet import UNet

TIMEOUT_S = 90
TINY = {
    "slice_size": 32,
    "depth": 2,
    "base_channels": 4,
    "device": "cpu",
    "val_fraction": 0.0,
}


def make_cases(n, seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        labels = np.zeros((20, 24, 4), np.int64)
        labels[4 + i : 9 + i, 6:12, 1:3] = 1
        images = [(rng.normal(0, 0.2, labels.shape) + labels).astype(np.float32)]
        cases.append(case_from_arrays(images, labels, (1.0, 1.2, 2.0), case_id=f"c{seed}-{i}"))
    return cases


def _per_sample_norm(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            _per_sample_norm(child)


class PerSampleNormUNet(UNet):
    """The UNet with GroupNorm(1, C) (per sample) in place of BatchNorm."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _per_sample_norm(self)


# ---------------------------------------------------------------------------
# pure helpers


@pytest.mark.parametrize("n, world", [(10, 3), (12, 2), (7, 1), (5, 4)])
def test_shards_cover_the_epoch_once_with_equal_lengths(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [distributed.shard_indices(order, r, world) for r in range(world)]
    length = distributed.shard_length(n, world)
    assert all(len(s) == length for s in shards)
    seen = torch.cat(shards).tolist()
    assert sorted(set(seen)) == list(range(n))  # every sample of the epoch
    assert len(seen) - n == length * world - n < world  # padding: fewer than world repeats
    # global step k (batch b per process) covers positions [k*world*b, (k+1)*world*b)
    b = 2
    padded = order[torch.arange(length * world) % n]
    for k in range(math.ceil(length / b)):
        step = torch.cat([s[k * b : (k + 1) * b] for s in shards])
        assert sorted(step.tolist()) == sorted(padded[k * world * b : (k + 1) * world * b].tolist())


def test_shard_and_env_errors():
    with pytest.raises(ValueError, match="rank 2"):
        distributed.shard_indices(torch.arange(4), 2, 2)
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}
    assert distributed.launched_by_torchrun(env)
    with pytest.raises(ValueError, match="LOCAL_RANK='x'"):
        distributed.env_ranks(env)
    with pytest.raises(ValueError, match="RANK=3"):
        distributed.env_ranks({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert distributed.env_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    assert not distributed.launched_by_torchrun({"RANK": "0"})
    assert distributed.choose_backend("cpu", {}) == "gloo"


def test_resume_step_keeps_the_position_in_the_epoch():
    assert distributed.resume_step(0, 2, 1) == 0
    assert distributed.resume_step(3, 2, 2) == 3
    assert distributed.resume_step(1, 2, 1) == 2  # 1 step of 2 processes = 2 steps of 1
    assert distributed.resume_step(3, 1, 2) == 2  # position 3b: continue at 4b, skip b


def test_one_process_helpers_are_identities():
    ctx = distributed.current()
    assert ctx == distributed.DistContext() and ctx.is_writer and not ctx.is_distributed
    x = torch.tensor([1.0, float("nan")])
    assert distributed.mean_across(x) is x
    assert distributed.any_rank(True, ctx, torch.device("cpu"))
    rows = [{"d": 0.5, "n": 1}, {"d": float("nan"), "n": 0}, {"d": 1.0, "n": 2}]
    assert distributed.reduce_case_figures(rows, ctx, torch.device("cpu"), ["d"], ["n"]) == {
        "d": 0.75,
        "n": 3.0,
    }
    model = UNet(1, 2, depth=2, base_channels=4)
    assert distributed.wrap_model(model, torch.device("cpu"), ctx) == (model, "")


def test_sync_batchnorm_conversion_keeps_the_state_dict_keys():
    model = UNet(1, 2, depth=2, base_channels=4)
    keys = list(model.state_dict())
    distributed._to_sync_batchnorm(model)
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert list(model.state_dict()) == keys  # checkpoints load into a plain UNet
    UNet(1, 2, depth=2, base_channels=4).load_state_dict(model.state_dict())


# ---------------------------------------------------------------------------
# two processes


def _drive(config, cases, control=None, val_cases=None, on_event=None):
    events = []
    for event in train(config, cases, control, val_cases=val_cases):
        events.append(event)
        if on_event is not None and on_event(event) == "kill":
            return events  # abandon the run like a killed process: no stop checkpoint
    return events


def _summary(events):
    done = [e for e in events if isinstance(e, DoneEvent)]
    return {
        "infos": [e.message for e in events if isinstance(e, InfoEvent)],
        "steps": [(e.epoch, e.step, e.loss) for e in events if isinstance(e, StepEvent)],
        "epochs": [e.as_row() for e in events if isinstance(e, EpochEvent)],
        "reason": done[0].reason if done else "killed",
        "state": (
            {k: v.clone() for k, v in done[0].model.state_dict().items()}
            if done and done[0].model is not None
            else None
        ),
    }


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    root = Path(folder)
    distributed.init_process(rank, world, f"file://{root / 'store'}", "gloo")
    train_mod.UNet = PerSampleNormUNet
    results = {}
    train_cases, val_cases = make_cases(3), make_cases(3, seed=1)
    mine = root / f"rank{rank}"  # rank 1 gets a folder of its own, which must stay absent
    # A: two epochs with validation, batch 2 per process
    config = TrainConfig(out_dir=str(mine / "a"), epochs=2, batch_size=2, **TINY)
    results["a"] = _summary(_drive(config, train_cases, val_cases=val_cases))
    # B: a stop requested on rank 1 only, after the first step
    control = TrainControl()

    def stop_on_rank1(event):
        if rank == 1 and isinstance(event, StepEvent) and event.step == 0:
            control.stop()

    config = TrainConfig(out_dir=str(mine / "b"), epochs=2, batch_size=2, **TINY)
    results["b"] = _summary(_drive(config, train_cases, control, [], stop_on_rank1))
    # C: a non-finite loss on rank 1 only, at its second step
    original = train_mod.loss_for_kind
    calls = [0]

    def nan_on_rank1(*args, **kwargs):
        parts = original(*args, **kwargs)
        calls[0] += 1
        if rank == 1 and calls[0] == 2:
            parts = parts._replace(total=parts.total * float("nan"))
        return parts

    train_mod.loss_for_kind = nan_on_rank1
    config = TrainConfig(out_dir=str(mine / "c"), epochs=2, batch_size=2, **TINY)
    results["c"] = _summary(_drive(config, train_cases, val_cases=[]))
    train_mod.loss_for_kind = original
    # K: killed after the first epoch (both processes abandon the run)
    config = TrainConfig(out_dir=str(mine / "k"), epochs=2, batch_size=2, **TINY)
    kill = lambda e: "kill" if isinstance(e, EpochEvent) else None  # noqa: E731
    results["k"] = _summary(_drive(config, train_cases, val_cases=[], on_event=kill))
    torch.save(results, root / f"result{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    tic = time.monotonic()
    context = mp.start_processes(
        _worker, args=(2, str(folder)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        while not context.join(timeout=1):
            if time.monotonic() - tic > TIMEOUT_S:
                pytest.fail(f"the 2-process run did not finish in {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    results = [torch.load(folder / f"result{r}.pt", weights_only=False) for r in range(2)]
    return folder, results


def test_two_processes_batch_b_equal_one_process_batch_2b(two_process_run, monkeypatch):
    folder, results = two_process_run
    a0, a1 = results[0]["a"], results[1]["a"]
    assert a0["reason"] == a1["reason"] == "completed"
    assert any("2 processes (gloo)" in m and "global batch 4" in m for m in a0["infos"])
    assert not any("BatchNorm" in m for m in a0["infos"])  # no BatchNorm in this network
    # the same global step losses and validation figures on both ranks
    assert a0["steps"] == a1["steps"] and len(a0["steps"]) == 6  # 12 slices / 4 per step × 2
    assert a0["epochs"][-1]["val_dice"] == a1["epochs"][-1]["val_dice"]
    # one process with batch 4 on the same samples
    monkeypatch.setattr(train_mod, "UNet", PerSampleNormUNet)
    config = TrainConfig(out_dir=None, epochs=2, batch_size=4, **TINY)
    single = _summary(_drive(config, make_cases(3), val_cases=make_cases(3, seed=1)))
    np.testing.assert_allclose(
        [s[2] for s in single["steps"]], [s[2] for s in a0["steps"]], rtol=1e-5
    )
    for key in ("val_dice", "val_hd", "val_hd95", "train_loss"):
        assert single["epochs"][-1][key] == pytest.approx(a0["epochs"][-1][key], rel=1e-5)
    last = torch.load(folder / "rank0" / "a" / "last.pt", weights_only=False)
    for name, value in single["state"].items():
        torch.testing.assert_close(last["model_state"][name], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a1["state"][name], value, rtol=1e-4, atol=1e-5)
    assert last["world_size"] == 2


def test_only_rank0_writes(two_process_run):
    folder, _ = two_process_run
    assert not (folder / "rank1").exists()
    assert sorted(p.name for p in (folder / "rank0" / "a").iterdir()) == [
        "best.pt",
        "cache",  # the prepared cases (issue 11), written by rank 0 and read by all ranks
        "config.json",
        "last.pt",
        "metrics.csv",
    ]


def test_stop_on_one_rank_stops_all(two_process_run):
    folder, results = two_process_run
    for rank in range(2):
        assert results[rank]["b"]["reason"] == "stopped by request in epoch 1 after 1 step(s)"
    checkpoint = torch.load(folder / "rank0" / "b" / "last.pt", weights_only=False)
    assert checkpoint["position"] == {"epoch": 0, "step": 1}


def test_nan_on_one_rank_stops_all(two_process_run):
    _, results = two_process_run
    for rank in range(2):
        reason = results[rank]["c"]["reason"]
        assert reason.startswith("non-finite loss (nan) at epoch 1, step 2"), reason


@pytest.mark.parametrize("run", ["b", "k"])
def test_resume_with_one_process(two_process_run, monkeypatch, tmp_path, run):
    folder, results = two_process_run
    monkeypatch.setattr(train_mod, "UNet", PerSampleNormUNet)
    source = folder / "rank0" / run / "last.pt"
    saved = torch.load(source, weights_only=False)
    config = TrainConfig.from_dict(saved["config"]).replace(
        resume_from=str(source), out_dir=str(tmp_path)
    )
    events = _drive(config, make_cases(3), val_cases=[])
    summary = _summary(events)
    assert summary["reason"] == "completed"
    assert [row["epoch"] for row in summary["epochs"]] == ([0, 1] if run == "b" else [1])
    resumed = [m for m in summary["infos"] if m.startswith("resuming")][0]
    assert "written by 2 process(es), this run has 1" in resumed
    if run == "b":  # stopped after global step 0 of 2 processes: continue at step 2 of 1
        assert "the 1 step(s) done in the epoch count as 2" in resumed
        assert summary["steps"][0][:2] == (0, 2)
    history = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    assert len(history) == 2
    if run == "k":  # the epoch of the 2-process run is kept
        kept = results[0]["k"]["epochs"][0]
        assert (history[0]["epoch"], history[0]["train_loss"]) == (0, kept["train_loss"])


# ---------------------------------------------------------------------------
# the command line under torchrun


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_options_reach_the_config():
    from napari_boundary_seg.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "d",
            "--out",
            "o",
            "--precision",
            "bf16",
            "--channels-last",
            "--compile",
        ]
    )
    config = config_from_args(args)
    assert (config.precision, config.channels_last, config.compile) == ("bf16", True, True)
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--amp"])
    assert config_from_args(args).precision == "16-mixed"
    # resuming a 0.1 run that used amp, now in bf16
    args = build_parser().parse_args(["train", "--precision", "bf16"])
    config = config_from_args(args, {"amp": True, "data": "d"})
    assert (config.precision, config.amp) == ("bf16", False)


def test_torchrun_runs_the_cli_on_two_processes(tmp_path):
    from napari_boundary_seg.cli import main

    data, run = tmp_path / "data", tmp_path / "run"
    synth = ["synth", "--out", str(data), "--cases", "2", "--shape", "24", "28", "8"]
    assert main([*synth, "--anatomy", "phantom"]) == 0
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "napari_boundary_seg", "train", "--data", str(data), "--out", str(run),
        "--epochs", "1", "--slice-size", "32", "--depth", "2", "--base-channels", "4",
        "--batch-size", "2", "--val-fraction", "0", "--device", "cpu", "--precision", "bf16",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if done.returncode != 0 and "exitcode: -6" in done.stderr:
        # a rank killed by SIGABRT before any output of ours: seen twice in about 40 runs on
        # the shared 2-core CI machine under load, never reproduced alone; shown, then run
        # once more on a new port (any other failure, or a second one, fails the test)
        warnings.warn(
            f"torchrun: a rank aborted (SIGABRT), run again: {done.stderr[-600:]}", stacklevel=1
        )
        command[command.index("--master-port") + 1] = str(_free_port())
        shutil.rmtree(run, ignore_errors=True)
        done = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert output.count("2 processes (gloo)") == 1  # rank 0 alone reports
    assert output.count("train: completed") == 1
    # the prepared cases live in the per-user cache, not in the run folder
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "config.json",
        "last.pt",
        "metrics.csv",
    ]
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    assert checkpoint["world_size"] == 2 and checkpoint["config"]["precision"] == "bf16"


def test_a_runs_config_json_starts_the_same_run_elsewhere(tmp_path):
    """The widget's route to a cluster: config.json of an in-memory run (no data
    folder) + ``train --config config.json --data DIR --out DIR``."""
    from napari_boundary_seg.cli import main

    first = tmp_path / "widget-run"
    config = TrainConfig(out_dir=str(first), epochs=1, batch_size=4, precision="bf16", **TINY)
    run_to_end(train(config, make_cases(2)))
    saved = first / "config.json"
    assert json.loads(saved.read_text())["data"] is None
    data, run = tmp_path / "data", tmp_path / "cluster-run"
    synth = ["synth", "--out", str(data), "--cases", "2", "--shape", "24", "28", "8"]
    assert main([*synth, "--anatomy", "phantom"]) == 0
    assert main(["train", "--config", str(saved), "--data", str(data), "--out", str(run)]) == 0
    again = json.loads((run / "config.json").read_text())
    mine = json.loads(saved.read_text())
    for key in ("precision", "batch_size", "slice_size", "depth", "base_channels", "epochs"):
        assert again[key] == mine[key], key
    assert again["data"] == str(data) and again["out_dir"] == str(run)
