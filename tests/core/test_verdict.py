"""The rule saying a run ended badly (core.verdict)."""

from __future__ import annotations

import math

from napari_boundary_seg.core.verdict import USEFUL_DSC, judge_run


def test_a_good_run_is_not_judged_bad():
    assert not judge_run(0.83, 7000, 7137, 1_000_000).bad
    assert judge_run(0.83, 7000, 7137).text() == ""
    assert not judge_run(None).bad and not judge_run(math.nan).bad  # nothing to judge


def test_low_dsc_empty_and_nearly_everything():
    low = judge_run(0.130)
    assert low.bad and f"below {USEFUL_DSC:g}" in low.text() and "Try:" in low.text()
    assert not judge_run(USEFUL_DSC).bad
    empty = judge_run(0.5, 0, 7137)
    assert empty.bad and "empty" in empty.text() and "α" in empty.text()
    full = judge_run(0.130, 212_189, 7_137)
    assert len(full.problems) == 2 and "30× the 7,137 labelled ones" in full.text()
    assert full.short() == "best DSC 0.13 < 0.3, prediction 30× the labels"
    assert not judge_run(None, 5 * 7137, 7137).bad  # up to 5x is not "everything"
    share = judge_run(None, 300, None, 1000)
    assert share.bad and "30 % of the volume" in share.text()


def test_the_advice_fits_the_loss_and_names_each_change_once():
    # GDL has no α schedule: no α advice; GDL + BL (and an unknown loss) has it
    for loss in ("gdl", "ce", "dice", "gdl+ce"):
        text = judge_run(0.1, 0, 7137, loss=loss).text()
        assert "α" not in text and "train for more epochs" in text, text
    assert "keep α at 1 longer" in judge_run(0.1, loss="gdl+bl").text()
    assert "keep α at 1 longer" in judge_run(0.1).text()
    assert "GDL or GDL + BL" in judge_run(0.5, 0, 7137, loss="bl").text()
    # a low DSC and a prediction of nearly everything: every change once
    text = judge_run(0.2, 91_032, 7_137, loss="gdl+ce").text()
    advice = text.split("Try: ")[1].rstrip(".").split("; ")
    assert len(advice) == len(set(advice)) == 4, advice
    assert advice[0] == "train for more epochs" and "check the slice plane" in advice
