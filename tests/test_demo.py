"""The headless demo trains the quick-start preset and prints its held-out DSC and
wall time (here with the preset shrunk to seconds; the real run: README, Quick start)."""

from __future__ import annotations

import re

from napari_boundary_seg import _demo
from napari_boundary_seg.core import presets


def test_headless_demo_uses_the_quick_start_preset(plugin_cache, monkeypatch):
    calls = []
    real = presets.quick_start_config

    def tiny(**overrides):
        calls.append(overrides)
        return real(**{"epochs": 1, "depth": 2, "base_channels": 4, "max_steps_per_epoch": 2,
                       **overrides})  # fmt: skip

    monkeypatch.setattr(presets, "quick_start_config", tiny)
    lines: list[str] = []
    assert _demo.run_headless_demo(lines.append) == 0
    text = "\n".join(lines)
    assert calls and calls[0]["device"] == "cpu" and calls[0]["out_dir"]
    assert "3. Quick start" in text and "validated on that block" in text
    assert re.search(r"epoch 1/1: loss [\d.]+, validation DSC [\d.]+", text)
    assert "predicting with best.pt" in text
    found = re.search(r"Validation DSC ([\d.]+) on slices the model did not train on; "
                      r"wall time (\d+) s", text)  # fmt: skip
    assert found, text
    assert 0.0 <= float(found.group(1)) <= 1.0
    # a prediction is reported either as a foreground fraction or as empty, in words
    assert ("% of the voxels are lesion" in text) != ("No foreground predicted" in text)
