"""Benchmarks: result schema, the cross-checks they print, and the command line."""

import re
import sys
import time

import numpy as np
import pytest

from napari_boundary_seg import bench
from napari_boundary_seg.cli import main
from napari_boundary_seg.core import metrics


def test_blob_mask_reaches_its_fraction_deterministically():
    a = bench.blob_mask((40, 48, 40), 0.01, seed=3)
    assert a.dtype == bool and 0.01 <= a.mean() < 0.02
    assert np.array_equal(a, bench.blob_mask((40, 48, 40), 0.01, seed=3))
    with pytest.raises(ValueError, match="fraction"):
        bench.blob_mask((8, 8), 0.0)


def test_bench_distance_small_agrees_with_the_baseline_outside():
    result = bench.bench_distance(
        repeats=1, volume_shape=(24, 28, 20), slices=2, slice_shape=(32, 32), fraction=0.02
    )
    assert result["benchmark"] == "distance" and len(result["cases"]) == 3
    volume, slices, stall = result["cases"]
    assert stall["worker_backend"] == "scipy" and stall["bar"] is None
    for case in (volume, slices):
        assert case["ratio"] == pytest.approx(case["baseline_s"] / case["ours_s"])
        assert case["passed"] == (case["ratio"] >= case["bar"])
        assert case["max_abs_diff_outside"] < 1e-4


def test_worst_main_thread_gap_sees_a_worker_that_holds_the_gil():
    def busy(seconds):  # pure Python: lets go of the GIL only at the switch interval
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        held = bench.worst_main_thread_gap(lambda: busy(0.3))
    finally:
        sys.setswitchinterval(interval)
    released = bench.worst_main_thread_gap(lambda: time.sleep(0.3))
    assert held > 0.25 and released < 0.1
    with pytest.raises(ZeroDivisionError):  # a worker's error reaches the caller
        bench.worst_main_thread_gap(lambda: 1 / 0)


def test_lesion_case_misses_some_lesions_and_adds_false_positives():
    pred, target = bench.lesion_case((40, 48, 40), 0.01, seed=1)
    figures = metrics.case_metrics(pred, target)
    assert 0 < figures["lesion_recall"] < 1 and 0 < figures["lesion_precision"] < 1
    assert 0.5 < figures["dice"] < 1


def test_bench_metrics_matches_plain_scipy():
    result = bench.bench_metrics(repeats=1, shape=(40, 48, 40), fraction=0.01)
    evaluation, face, full = result["cases"]
    assert evaluation["max_abs_diff"] < 1e-9 and evaluation["n_target"] > 5
    assert face["same_count"] and full["same_count"]
    assert all(case["bar"] is None and case["passed"] is None for case in result["cases"])


def test_plain_scipy_baseline_sees_a_shift():
    target = np.zeros((20, 20, 20), bool)
    target[5:10, 5:10, 5:10] = True
    pred = np.roll(target, 3, axis=0)
    base = bench.plain_scipy_case_metrics(pred, target, (1.0, 1.0, 1.0))
    assert base["hd"] == pytest.approx(3.0) and base["dice"] == pytest.approx(0.4)


def test_cli_bench_metrics_prints_ratios(capsys, monkeypatch):
    small = bench.bench_metrics

    def tiny(repeats, seed):
        return small(repeats=repeats, seed=seed, shape=(32, 32, 32), fraction=0.01)

    monkeypatch.setattr(bench, "bench_metrics", tiny)
    assert main(["bench", "metrics", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "benchmark: metrics" in out and "max_abs_diff=" in out and "scipy.ndimage.label" in out


def test_bench_data_memory_does_not_grow_with_cases_and_cli_prints_it(capsys):
    args = ["bench", "data", "--small", "2", "--large", "6", "--shape", "24", "28", "24"]
    args += ["--patch-size", "16", "16", "8", "--steps", "1", "--workers", "--phi-samples", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if "peak resident memory" in row)
    assert "PASS" in line  # 6 cases take at most 1.3x the memory of 2
    peaks = [float(v) for v in re.findall(r"(\d+) MiB", line)]
    assert len(peaks) == 2 and all(p > 50 for p in peaks)  # torch alone is more than that


def test_bench_data_loader_and_phi_figures_on_tiny_sizes(tmp_path):
    from napari_boundary_seg.core.data import case_from_arrays
    from napari_boundary_seg.core.patches import iter_cache_cases
    from napari_boundary_seg.core.progress import run_to_end

    labels = np.zeros((20, 20, 10), np.int64)
    labels[5:9, 5:9, 3:6] = 1
    case = case_from_arrays([labels.astype(np.float32)], labels, (1.0, 1.0, 2.0))
    entries = run_to_end(iter_cache_cases([case], tmp_path, 2))
    (loader,) = bench._loader_cases(entries, (16, 16, 8), (0,), 2, seed=0)
    assert loader["batches_per_s"] > 0 and loader["ratio"] == 1.0
    phi2d = bench._phi_share_2d((1, 32), 2, 4, 1, 0)
    phi3d = bench._phi_share_3d((1, (16, 16, 8)), 2, 4, 2, 0, (24, 28, 24))
    for case in (phi2d, phi3d):
        assert case["phi_s_per_sample"] > 0 and case["share_all"] > 0
        assert case["share_expected"] == pytest.approx(0.2 * case["share_all"])
    assert phi3d["whole_volume_fallbacks"].endswith("/2")


def test_workers_and_waiting_share_by_hand():
    # 10 patches/s per worker, batch 2 every 30 ms: 66.7 patches/s, so 7 workers
    assert bench.loader_workers(10.0, 2, 0.030) == 7
    assert bench.loader_workers(1000.0, 2, 0.030) == 1
    assert bench.waiting_share(10.0, 7, 2, 0.030) == 0.0
    # 2 workers deliver a batch every 0.1 s; a 30 ms step waits 70 % of the loop
    assert bench.waiting_share(10.0, 2, 2, 0.030) == pytest.approx(0.7)


def test_bench_data_loader_rate_lines_read_exactly():
    cases = bench.loader_rate_cases((40, 48, 38), (16, 16, 8), 3, 0, 0.030, 2)
    names = [case["name"] for case in cases]
    for kind in ("no augmentation", "intensity only", "flips only", "every sample warped"):
        assert f"loader, {kind}" in names
    out = bench.format_bench({"benchmark": "data", "cases": cases})
    lines = [line.strip() for line in out.splitlines()]
    rate = [
        re.fullmatch(r"loader, every sample warped: (\S+) patches/s per worker", x) for x in lines
    ]
    phi = [re.fullmatch(r"warped-sample φ: median (\S+) ms, p95 (\S+) ms", x) for x in lines]
    (rate,) = [m for m in rate if m]
    (phi,) = [m for m in phi if m]
    assert float(rate.group(1)) > 0 and 0 < float(phi.group(1)) <= float(phi.group(2))
    (case,) = [c for c in cases if c["name"] == "warped-sample φ"]
    assert case["max_abs_phi_diff_mm"] <= 1e-4  # the same φ as the whole-volume path
    (feed,) = [c for c in cases if c["name"].startswith("workers that feed")]
    warped = next(c for c in cases if c["name"] == "loader, every sample warped")
    assert feed["workers_every_sample_warped"] == bench.loader_workers(
        1.0 / warped["ours_s"], 2, 0.030
    )
