"""The Finetune widget's rounds: the correction curve (one point per
fine-tune round), the reference it is measured against, and "Undo round".

A part of ``finetune.FinetuneWidget`` (a mixin: it reads its linked layer,
viewer, checkpoint field, status and busy state). What a round is worth is
computed in the worker (:func:`napari_boundary_seg.core.rounds.round_point`);
the history and the undo are :class:`napari_boundary_seg.core.rounds.Rounds`.
This part only shows them.

See docs/DESIGN.md, "The widgets" (fine-tune rounds).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtWidgets import QPushButton, QWidget

from napari_boundary_seg._widgets._fields import group_box, note_label
from napari_boundary_seg._widgets._layers import labels_array, notify_error
from napari_boundary_seg._widgets._plots import RoundsPlot
from napari_boundary_seg.core.rounds import AGREEMENT, Round, Rounds

UNDO_HELP = (
    "Make the checkpoint active before the last kept round the active model again "
    "(and its prediction the one the next round starts from). Nothing is deleted: "
    "the undone round's checkpoint and lineage stay on disk, and the lineage notes the undo."
)
NO_ROUND = "No round yet: each fine-tune adds a point (slices taught → DSC)."


class RoundsPart:
    """The rounds box, the reference labels and "Undo round" of the Finetune widget."""

    rounds: Rounds | None = None
    reference_name: str | None = None

    def _rounds_box(self) -> QWidget:
        """Box 5: the curve, a line on the last round, "Undo round"."""
        self.rounds_plot = RoundsPlot()
        self.rounds_label = note_label(NO_ROUND)
        self.undo_button = QPushButton("Undo round")
        self.undo_button.setToolTip(UNDO_HELP)
        self.undo_button.setEnabled(False)
        self.undo_button.clicked.connect(self.undo_round)
        return group_box("5. Rounds", self.rounds_plot, self.rounds_label, self.undo_button)

    def _reset_rounds(self, checkpoint: str) -> None:
        """A new session (a new linked layer) starting from ``checkpoint``."""
        self.rounds = Rounds(str(checkpoint))
        self._refresh_rounds(NO_ROUND)

    # -- the reference ----------------------------------------------------------------
    def _reference(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """A copy of the chosen reference labels (None when "(none)"), checked
        against ``shape``; its name is kept for the round's text."""
        layer = self.truth_combo.layer()
        self.reference_name = None if layer is None else str(layer.name)
        if layer is None:
            return None
        if layer is self.layer:
            raise ValueError(
                f"'{layer.name}' is the layer being corrected, not a ground truth: "
                "choose another layer or (none)."
            )
        truth = np.array(labels_array(layer), copy=True)
        if truth.shape != tuple(shape):
            raise ValueError(
                f"Shapes do not match: ground truth '{layer.name}' is {truth.shape}, "
                f"the corrections {tuple(shape)}."
            )
        return truth

    # -- a round ends -----------------------------------------------------------------
    def _add_round(self, ft: Any, evaluation: dict[str, Any], prediction: str) -> None:
        """The finished fine-tune ``ft`` as a round (pending until Keep / Discard)."""
        point = evaluation.get("round")
        if self.rounds is None or point is None:
            return
        try:
            done = self.rounds.add(ft.checkpoint, ft.parent, ft.lineage_path, point, prediction)
        except (OSError, ValueError) as exc:
            notify_error(exc)
            return
        self._refresh_rounds(self._round_text(done))

    def _round_text(self, done: Round) -> str:
        p = done.point
        head = f"Round {done.index}: {p.verified} slice(s) taught"
        if math.isnan(p.value):
            return f"{head}; no untouched slice left to measure."
        if p.measure == AGREEMENT:
            return (
                f"{head}; its prediction agrees with the previous round's at DSC "
                f"{p.value:.3f} on {p.untouched} untouched slice(s) (1 = settled; "
                "choose reference labels to measure accuracy)."
            )
        reference = f" '{self.reference_name}'" if self.reference_name else ""
        return (
            f"{head}; DSC {p.value:.3f} on {p.untouched} untouched slice(s) against "
            f"the reference{reference} (the parent: {p.before:.3f})."
        )

    def _round_decided(self, keep: bool) -> None:
        if self.rounds is not None and self.rounds.decide(keep) is not None:
            self._refresh_rounds()

    def _refresh_rounds(self, text: str | None = None) -> None:
        """Redraw the curve; enable "Undo round" when a kept round can be undone
        and nothing runs; ``text``: the line under the curve."""
        rounds = self.rounds
        self.rounds_plot.set_points([] if rounds is None else rounds.curve())
        if text is not None:
            self.rounds_label.setText(text)
        self.undo_button.setEnabled(
            rounds is not None and rounds.can_undo() and not self.busy and self.pending is None
        )

    # -- undo ---------------------------------------------------------------------------
    def undo_round(self) -> bool:
        """Make the checkpoint active before the last kept round the active model
        again (:meth:`Rounds.undo`, noted in the lineage, nothing deleted)."""
        rounds = self.rounds
        try:
            if self.busy:
                raise ValueError("A prediction or fine-tune is running: undo when it ends.")
            if self.pending is not None:
                raise ValueError("Keep or discard the new model first.")
            if rounds is None or not rounds.can_undo():
                raise ValueError("No round to undo: no fine-tuned model has been kept.")
            undone, restored = rounds.undo()
        except (OSError, ValueError) as exc:
            notify_error(exc)
            return False
        checkpoint = rounds.active_checkpoint
        self.link["checkpoint"] = checkpoint
        self.checkpoint.setText(checkpoint)
        self.current_pred, source = self._restored_prediction(restored)
        name = "the starting model" if restored is None else f"round {restored.index}'s model"
        text = (
            f"Undid round {undone.index}: {name} is active again ({checkpoint}); {source}. "
            f"Round {undone.index}'s checkpoint stays on disk ({undone.checkpoint})."
        )
        self.status.setText(text)
        self._refresh_rounds(text)
        return True

    def _restored_prediction(self, restored: Round | None) -> tuple[np.ndarray | None, str]:
        """The prediction of the model made active again, and where it came from:
        the starting prediction, the round's prediction layer when it is still in
        the viewer, else None (the next fine-tune predicts with the model again)."""
        if restored is None:
            return self.link.get("prediction"), "the next round compares with its prediction"
        name = restored.prediction
        if name and name in self.viewer.layers:
            data = np.asarray(self.viewer.layers[name].data)
            if data.shape == np.shape(self.link.get("prediction")):
                return data.copy(), f"the next round compares with '{name}'"
        return None, "its prediction layer is gone: the next round predicts with it again"
