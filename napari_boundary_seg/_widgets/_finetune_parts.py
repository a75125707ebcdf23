"""The Finetune widget's parts after a prediction: the list of corrected
slices and saving the corrections (:class:`Corrections`), and the result of
a fine-tune, its gain table and Keep / Discard (:class:`Gain`).

Both are parts of ``finetune.FinetuneWidget`` (mixins: they read its linked
layer, tracker, viewer, table and status).

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_boundary_seg._widgets._checkpoints import NO_FOREGROUND
from napari_boundary_seg._widgets._edits import CHANGE_COLORS
from napari_boundary_seg._widgets._layers import (
    compact_labels,
    fixed_label_colormap,
    labels_array,
    mark_output,
    notify_error,
    output_label_colormap,
    unique_layer_name,
)
from napari_boundary_seg._widgets._runner import layer_steps


class Corrections:
    """The corrected slices of the linked layer, and saving them."""

    # -- 2. correct -------------------------------------------------------------------
    def _update_edited(self) -> None:
        tracker = self.tracker
        if tracker is None:
            self.edited_label.setText("No layer linked yet.")
            return
        if tracker.reset_reason:
            self.edited_label.setText(f"Tracking stopped: {tracker.reset_reason}.")
            return

        def listed(slices: list[int]) -> str:
            return ", ".join(str(s) for s in slices[:40]) + (" …" if len(slices) > 40 else "")

        painted, checked = sorted(tracker.painted), sorted(tracker.manual - tracker.painted)
        extra = " (data replaced: all slices are candidates)" if tracker.replaced else ""
        text = (
            f"'{self.layer.name}', axis {tracker.axis}: {len(painted)} edited slice(s)"
            f"{extra}{': ' + listed(painted) if painted else ''}"
        )
        if checked:
            text += f"; {len(checked)} checked: {listed(checked)}"
        self.edited_label.setText(text)

    def current_slice(self) -> int:
        """The slice of the linked layer shown in the viewer (along the slicing axis)."""
        if self.layer is None or self.tracker is None:
            raise ValueError("No layer linked: predict or use a layer first.")
        if self.layer.ndim == 2:
            return 0
        data_pos = self.layer.world_to_data(self.viewer.dims.point)
        return int(round(float(data_pos[self.tracker.axis])))

    def add_current_slice(self) -> None:
        def add() -> None:
            self.tracker.add(self.current_slice())

        try:
            add()
        except (ValueError, TypeError) as exc:
            notify_error(exc)

    def checked_slices(self, labels: np.ndarray) -> list[int]:
        """The slices marked checked that the user did not change: right as
        predicted, passed to the fine-tune as ``verified_slices``."""
        return sorted(self.tracker.manual - self._changed_slices(labels))

    def clear_slices(self) -> None:
        if self.tracker is not None:
            self.tracker.clear()

    def slices_to_use(self, labels: np.ndarray) -> list[int]:
        """The listed slices that really differ from the starting prediction, plus
        the ones marked checked (one check on the listed slices only)."""
        return sorted(self._changed_slices(labels) | self.tracker.manual)

    def _changed_slices(self, labels: np.ndarray) -> set[int]:
        """The painted slices that differ from the starting prediction (all painted
        ones when the prediction is not known)."""
        from napari_boundary_seg.core.finetune import differing_slices

        tracker = self.tracker
        origin = self.link.get("prediction")
        if origin is None or np.shape(origin) != labels.shape:
            return set(tracker.painted)
        if labels.ndim == 2:
            return {0} if np.any(labels != origin) and tracker.painted else set()
        return set(differing_slices(labels, origin, tracker.axis, tracker.painted))

    # -- save ---------------------------------------------------------------------------
    def save_corrected(self, path: str | Path | None = None) -> Path | None:
        """Write the corrected labels as NIfTI with the image's affine.

        Without ``path`` a file dialog asks (it confirms overwriting); with a
        ``path`` that exists, a message box asks first.
        """
        from napari_boundary_seg.core.io import write_nifti

        try:
            if self.layer is None:
                raise ValueError("No corrected layer to save: predict or use a layer first.")
            if path is None:
                chosen, _ = QFileDialog.getSaveFileName(
                    self, "Save corrected labels", "", "NIfTI (*.nii.gz *.nii)"
                )
                if not chosen:
                    return None
                path, overwrite = Path(chosen), True
            else:
                path = Path(path)
                overwrite = False
                if path.exists():
                    answer = QMessageBox.question(self, "Overwrite?", f"{path} exists. Replace it?")
                    if answer != QMessageBox.StandardButton.Yes:
                        return None
                    overwrite = True
            labels = np.array(labels_array(self.layer), copy=True)
            affine, spacing = self._affine()
            written = write_nifti(
                path, labels, affine=affine, spacing=spacing, overwrite=overwrite, as_labels=True
            )
        except (ValueError, TypeError, OSError) as exc:
            notify_error(exc)
            return None
        self.status.setText(f"Saved the corrected labels to {written}.")
        return written

    def _affine(self) -> tuple[np.ndarray | None, tuple[float, ...] | None]:
        names = self.link.get("images") or []
        for layer in [*(self.viewer.layers[n] for n in names if n in self.viewer.layers)]:
            if "affine" in layer.metadata:
                return np.asarray(layer.metadata["affine"]), None
        if "affine" in self.layer.metadata:
            return np.asarray(self.layer.metadata["affine"]), None
        return None, tuple(float(abs(s)) for s in self.layer.scale)


class Gain:
    """A fine-tune's result: its layers, the gain table, Keep / Discard."""

    def _on_finetuned(self, result: tuple[Any, dict[str, Any] | None]) -> None:
        ft, evaluation = result
        self.last_result = ft
        self.progress.finish(f"fine-tune {ft.reason}" if evaluation is None else "done")
        self.link.setdefault("lineage", []).append(ft.lineage_path)
        if evaluation is None:
            self.status.setText(
                f"Fine-tune {ft.reason}; the current model stays {Path(self.link['checkpoint'])}. "
                f"Lineage: {ft.lineage_path}"
            )
            return
        self.comparison = evaluation["comparison"]
        self._set_table(
            self.comparison, evaluation.get("untouched_truth"), evaluation.get("foreground")
        )
        stack = self._stack_used
        prefix = stack.names[0]
        geometry = dict(stack.geometry)
        metadata = geometry.pop("metadata", None)
        new_labels = evaluation.get("new_labels")
        if new_labels is None:
            new_labels = compact_labels(evaluation["new_pred"])
        changes_name = f"{prefix} changes"
        prediction_name = unique_layer_name(self.viewer, f"{prefix} fine-tuned prediction")
        steps = layer_steps(  # a new prediction never replaces an earlier one
            self.viewer,
            "labels",
            new_labels,
            activate=False,
            name=prediction_name,
            visible=False,
            metadata=mark_output("prediction", metadata),
            colormap=output_label_colormap("prediction"),
            **geometry,
        )
        if changes_name in self.viewer.layers:  # updated in place, not removed and re-added

            def update_changes() -> None:
                if changes_name in self.viewer.layers:
                    self.viewer.layers[changes_name].data = evaluation["changes"]

            steps.append(update_changes)
        else:
            steps += layer_steps(
                self.viewer,
                "labels",
                evaluation["changes"],
                name=changes_name,
                colormap=fixed_label_colormap(CHANGE_COLORS),
                metadata=mark_output("changes", metadata),
                **geometry,
            )
        # one step per event-loop turn: the window draws in between
        self.delivery.run(*steps)
        self.pending = (ft, evaluation)
        self._add_round(ft, evaluation, prediction_name)
        for b in (self.keep_button, self.discard_button):
            b.setEnabled(True)
        n = int((evaluation["changes"] > 0).sum())
        empty = ""
        if not any(evaluation.get("foreground", {}).get("new", {True: True}).values()):
            empty = f" The new model: {NO_FOREGROUND}."
        checked = [s for s in ft.verified_slices if s not in ft.slices]
        also = f" and checked slices {checked}" if checked else ""
        self.status.setText(
            f"Fine-tuned on slices {list(ft.slices)}{also}: {n} voxel(s) changed "
            f"(green gained, red lost).{empty} Keep the new model or discard it."
        )

    def _set_table(
        self,
        comparison: dict[str, dict[str, float]] | None,
        untouched_truth: dict[str, float] | None = None,
        foreground: dict[str, dict[str, bool]] | None = None,
    ) -> None:
        self.table.fill(comparison, untouched_truth, foreground)

    # -- 4. keep / discard ------------------------------------------------------------
    def decide(self, keep: bool) -> None:
        """Keep the new checkpoint (it becomes the current model) or discard it
        (the parent stays); both stay on disk, the decision goes into the lineage."""
        from napari_boundary_seg.core.finetune import record_decision

        if self.pending is None:
            return
        ft, evaluation = self.pending
        self.pending = None
        for b in (self.keep_button, self.discard_button):
            b.setEnabled(False)
        try:
            record_decision(ft.lineage_path, keep)
        except (OSError, ValueError) as exc:
            notify_error(exc)
        self._round_decided(keep)
        if keep:
            self.link["checkpoint"] = ft.checkpoint
            self.checkpoint.setText(ft.checkpoint)
            self.current_pred = evaluation["new_pred"]
            self.status.setText(f"Now using {ft.checkpoint} (parent {ft.parent}).")
        else:
            self.status.setText(f"Discarded; going on with {self.link['checkpoint']}.")
