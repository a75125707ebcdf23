"""benchmarks/gpu_check.sh runs end to end in its CPU smoke mode (tiny sizes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_prints_every_part():
    results = REPO / "benchmarks" / "results" / "gpu"
    before = sorted(results.iterdir()) if results.exists() else []
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "cpu smoke" in out and "device: cpu" in out
    for precision in ("32", "bf16"):
        line = re.search(rf"2D batch 2 × 32×32, .*{precision}: engine .* ratio (\S+)", out)
        assert line is not None, out
        assert float(line.group(1)) > 0
    assert re.search(r"16-mixed: precision '16-mixed' is for CUDA and MPS", out)
    assert re.search(r"3D batch 1 × 16×16×16.*(engine|3D not available in this build)", out)
    assert re.search(r"num_workers 1: \d+\.\d % of the step spent waiting", out)
    assert re.search(r"φ of a 40×48×38 volume .*: \d+\.\d\d s", out)
    assert re.search(r"DDP, 2 processes \(gloo, 0 GPU\(s\)\).*throughput × \d", out)
    after = sorted(results.iterdir()) if results.exists() else []
    assert after == before  # the smoke mode writes no result file
