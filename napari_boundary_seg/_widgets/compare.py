"""Comparison widget: a prediction against the ground truth, in colours and figures.

Layers in: a prediction and a ground-truth Labels layer of integer labels
(the pickers offer nothing else) of the same shape, and a class (or any
foreground).
Core calls: :func:`core.metrics.case_metrics` for the volume and
:func:`core.metrics.per_slice_metrics` along the viewer's slicing axis, in a
``_runner.Runner``; spacing from the ground truth's ``layer.scale``.
Out:

- a Labels layer ``"TP/FP/FN <pred> vs <gt>"``: 1 = true positive, 2 = false
  positive, 3 = false negative, in Okabe-Ito colours that stay distinct with
  colour-blindness (legend in the widget); recomputing replaces its data;
- a table: DSC, HD, HD95, ASSD (mm) and the lesion-wise figures for the volume,
  then one row per slice that has foreground in either layer; clicking a slice
  row moves the viewer to that slice; "Export CSV..." saves the table.
  A distance to an empty mask (no foreground predicted, or none in the ground
  truth) is undefined: its cell shows "—" with a tooltip saying why (the CSV
  keeps ``inf``), and the summary says "no foreground predicted".

The outcome map and its counts are built in the worker; recomputing updates
the layer's data in place. See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_boundary_seg._widgets._fields import (
    Form,
    LayerCombo,
    button_row,
    note_label,
    scroll_layout,
)
from napari_boundary_seg._widgets._layers import (
    check_same_shape,
    fixed_label_colormap,
    format_number,
    geometry_kwargs,
    is_segmentation_labels,
    labels_array,
    layer_spacing,
    mark_output,
    move_to_slice,
    notify_errors,
    output_kind,
    require_layer,
    slicing_axis,
)
from napari_boundary_seg._widgets._runner import (
    Delivery,
    Runner,
    RunsWork,
    layer_steps,
    run_steps_now,
)
from napari_boundary_seg.core.metrics import case_metrics, per_slice_metrics
from napari_boundary_seg.core.progress import Progress

logger = logging.getLogger(__name__)

TP, FP, FN = 1, 2, 3
#: Okabe-Ito colours: bluish green, orange, sky blue.
OUTCOME_COLORS = {TP: "#009E73", FP: "#E69F00", FN: "#56B4E9"}
OUTCOME_NAMES = {TP: "true positive", FP: "false positive", FN: "false negative"}

#: (metric key, column header) of the table; lesion columns only when present.
SURFACE_COLUMNS = (
    ("dice", "DSC"),
    ("hd", "HD (mm)"),
    ("hd95", "HD95 (mm)"),
    ("assd", "ASSD (mm)"),
)
LESION_COLUMNS = (
    ("lesion_recall", "lesion recall"),
    ("lesion_precision", "lesion precision"),
    ("lesion_f1", "lesion F1"),
    ("avd", "AVD (%)"),
)


#: Metric keys that are distances (undefined, ``inf``, when a mask is empty).
DISTANCE_KEYS = frozenset({"hd", "hd95", "assd"})
#: What an undefined distance cell shows, and its tooltip.
UNDEFINED = "—"
UNDEFINED_TIP = (
    "undefined (inf): one of the two masks is empty here (no foreground predicted, "
    "or no lesion in the ground truth), so there is no surface to measure to"
)
NO_FOREGROUND = "no foreground predicted"


def outcome_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(*spatial)`` uint8: 1 TP, 2 FP, 3 FN, 0 true negative, from two boolean masks."""
    out = np.zeros(pred.shape, dtype=np.uint8)
    out[pred & target] = TP
    out[pred & ~target] = FP
    out[~pred & target] = FN
    return out


def _is_prediction(layer: Any) -> bool:
    """A model's prediction: marked so by this plugin, or named so."""
    return output_kind(layer) == "prediction" or "prediction" in str(layer.name).lower()


def overlay_name(pred_name: str, gt_name: str) -> str:
    """Name of the TP/FP/FN layer."""
    return f"TP/FP/FN {pred_name} vs {gt_name}"


def metric_item(key: str, value: Any) -> QTableWidgetItem:
    """A table cell: an infinite distance shows as "—" with :data:`UNDEFINED_TIP`."""
    if key in DISTANCE_KEYS and value is not None and np.isinf(float(value)):
        item = QTableWidgetItem(UNDEFINED)
        item.setToolTip(UNDEFINED_TIP)
        return item
    return QTableWidgetItem(format_number(value))


class CompareWidget(RunsWork, QWidget):
    """Dock widget: prediction vs ground truth (TP/FP/FN layer and metric table).

    Parameters
    ----------
    napari_viewer
        The viewer (npe2 passes it).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.volume_metrics: dict[str, float] = {}
        self.slice_rows: list[dict[str, float]] = []
        self.axis: int = 0
        self.columns: list[tuple[str, str]] = list(SURFACE_COLUMNS)
        self._gt_layer: Any = None
        self.delivery = Delivery(self)

        self.pred_combo = LayerCombo(napari_viewer, (Labels,), accept=is_segmentation_labels)
        self.gt_combo = LayerCombo(napari_viewer, (Labels,), accept=is_segmentation_labels)
        # a plain QSpinBox: magicgui's shows "0" instead of the special text,
        # which reads as the background class
        self.class_spin = QSpinBox()
        self.class_spin.setRange(0, 65535)
        self.class_spin.setSpecialValueText("any label (> 0)")
        self.class_spin.setToolTip(
            "Which voxels count as foreground: any label (every value above 0, the "
            "default), or only the label value chosen here. Background is never compared."
        )
        self.run_button = QPushButton("Compare")
        self.run_button.clicked.connect(self.compare)
        self.export_button = QPushButton("Export CSV...")
        self.export_button.clicked.connect(self.export_dialog)
        self.export_button.setEnabled(False)
        self.runner = Runner(self, "comparison", buttons=[self.run_button])
        self.runner.done.connect(self._on_returned)
        self.summary = note_label("")
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.cellClicked.connect(self.go_to_row)
        self.table.setMinimumHeight(160)

        form = Form(
            [
                ("Prediction", self.pred_combo),
                ("Ground truth", self.gt_combo),
                ("Foreground", self.class_spin),
            ]
        )
        layout = scroll_layout(self)
        layout.addWidget(form)
        layout.addLayout(button_row(self.run_button, self.export_button))
        layout.addLayout(self._legend())
        layout.addWidget(self.summary)
        layout.addWidget(self.table, stretch=1)
        self.choose_defaults()
        napari_viewer.layers.events.inserted.connect(self._on_inserted)
        napari_viewer.layers.events.removed.connect(self.choose_defaults)

    # ---------------------------------------------------------------- defaults
    def choose_defaults(self, *_: Any) -> None:
        """Never the same layer in both pickers when there is a choice: the
        ground truth is a segmentation that is not a prediction (the first
        one), the prediction the newest prediction (else another layer)."""
        offered = [layer for layer in self.viewer.layers if is_segmentation_labels(layer)]
        predictions = [layer for layer in offered if _is_prediction(layer)]
        truths = [layer for layer in offered if layer not in predictions]
        gt = self.gt_combo.layer()
        if truths and (gt is None or gt in predictions):
            self.gt_combo.set_layer(truths[0])
            gt = truths[0]
        pred = self.pred_combo.layer()
        if pred is None or pred is gt:
            others = [layer for layer in reversed(predictions) if layer is not gt] or [
                layer for layer in offered if layer is not gt
            ]
            if others:
                self.pred_combo.set_layer(others[0])

    def _on_inserted(self, event: Any) -> None:
        """A new segmentation layer: a prediction becomes the prediction to
        compare; the defaults are chosen again."""
        layer = getattr(event, "value", None)
        if layer is None or not is_segmentation_labels(layer):
            return  # other layers change no choice
        if _is_prediction(layer):
            self.pred_combo.set_layer(layer)
        self.choose_defaults()

    @staticmethod
    def _legend() -> QGridLayout:
        legend = QGridLayout()
        legend.setHorizontalSpacing(4)
        for i, (value, color) in enumerate(OUTCOME_COLORS.items()):
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            swatch.setStyleSheet(f"background-color: {color}; border: 1px solid #888;")
            row, col = divmod(i, 2)
            legend.addWidget(swatch, row, 2 * col)
            legend.addWidget(QLabel(OUTCOME_NAMES[value]), row, 2 * col + 1)
        legend.setColumnStretch(3, 1)
        return legend

    # ---------------------------------------------------------------- inputs
    def _inputs(self) -> dict[str, Any]:
        pred_layer = require_layer(self.pred_combo.layer(), "prediction")
        gt_layer = require_layer(self.gt_combo.layer(), "ground-truth")
        check_same_shape(pred_layer, gt_layer)
        pred, gt = labels_array(pred_layer), labels_array(gt_layer)
        label = self.class_spin.value() or None
        p = pred > 0 if label is None else pred == label
        t = gt > 0 if label is None else gt == label
        what = "foreground" if label is None else f"voxel of class {label}"
        if not t.any() and not p.any():
            raise ValueError(
                f"Neither '{pred_layer.name}' nor '{gt_layer.name}' has any {what}: "
                "nothing to compare."
            )
        if not t.any():
            show_warning(
                f"Ground truth '{gt_layer.name}' has no {what}: every predicted voxel is "
                "a false positive and the distances are inf."
            )
        elif not p.any():
            show_warning(
                f"Prediction '{pred_layer.name}' has no {what}: every lesion voxel is a "
                "false negative and the distances are inf."
            )
        axis = slicing_axis(self.viewer, gt_layer) if gt.ndim >= 3 else 0
        return {
            "pred_layer": pred_layer,
            "gt_layer": gt_layer,
            "p": p,
            "t": t,
            "spacing": layer_spacing(gt_layer),
            "axis": axis,
        }

    # ------------------------------------------------------------------- run
    def compare(self) -> Any:
        """Start the comparison; returns the worker (None on bad input)."""
        if self.runner.running:
            return None
        inputs = notify_errors(self._inputs)
        if inputs is None:
            return None
        p, t, spacing, axis = inputs["p"], inputs["t"], inputs["spacing"], inputs["axis"]

        def steps():
            yield Progress(0, 3, "volume")
            volume = case_metrics(p, t, spacing=spacing)
            yield Progress(1, 3, "slices")
            rows = per_slice_metrics(p, t, spacing=spacing, axis=axis)
            yield Progress(2, 3, "outcome map")
            outcome = outcome_map(p, t)
            counts = np.bincount(outcome.ravel(), minlength=4)
            yield Progress(3, 3, "done")
            return volume, rows, outcome, counts

        self._pending_inputs = inputs
        return self.runner.start(steps)

    def _on_returned(self, result: tuple[dict, list, np.ndarray, np.ndarray]) -> None:
        # the table, then the layer in its own event-loop turns
        self.delivery.run(*self._result_steps(self._pending_inputs, *result))

    def show_results(
        self,
        inputs: dict[str, Any],
        volume: dict[str, float],
        rows: list[dict[str, float]],
        outcome: np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        """Add (or update in place) the TP/FP/FN layer and fill the table.
        :meth:`compare` runs the same steps one per event-loop turn
        (``_runner.Delivery``)."""
        run_steps_now(self._result_steps(inputs, volume, rows, outcome, counts))

    def _result_steps(
        self,
        inputs: dict[str, Any],
        volume: dict[str, float],
        rows: list[dict[str, float]],
        outcome: np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> list[Any]:
        pred_layer, gt_layer = inputs["pred_layer"], inputs["gt_layer"]
        if outcome is None:
            outcome = outcome_map(inputs["p"], inputs["t"])
        if counts is None:
            counts = np.bincount(outcome.ravel(), minlength=4)
        name = overlay_name(pred_layer.name, gt_layer.name)
        geometry = geometry_kwargs(gt_layer)
        geometry["metadata"] = mark_output("outcome", geometry.get("metadata"))

        def fill() -> None:
            self._gt_layer = gt_layer
            self.axis = inputs["axis"]
            self.volume_metrics = volume
            self.slice_rows = rows
            self.columns = list(SURFACE_COLUMNS) + [c for c in LESION_COLUMNS if c[0] in volume]
            empty = ""
            undefined = "the distances are undefined (—). "
            if counts[TP] + counts[FP] == 0:
                empty = f"{NO_FOREGROUND.capitalize()} in '{pred_layer.name}': {undefined}"
            elif counts[TP] + counts[FN] == 0:
                empty = f"No foreground in the ground truth '{gt_layer.name}': {undefined}"
            self.summary.setText(
                f"{empty}TP {counts[TP]}, FP {counts[FP]}, FN {counts[FN]} voxels. "
                f"Rows: the volume, then the {len(rows)} slices with foreground along "
                f"axis {self.axis} (click one to go there)."
            )
            self._fill_table()
            self.export_button.setEnabled(True)

        if name in self.viewer.layers:  # updated in place (the user's display settings stay)

            def update() -> None:
                if name in self.viewer.layers:
                    self.viewer.layers[name].data = outcome

            return [fill, update]
        colormap = fixed_label_colormap(OUTCOME_COLORS)
        return [
            fill,
            *layer_steps(
                self.viewer,
                "labels",
                outcome,
                done=self._below_corrections,
                activate=not self._corrections_layers(),
                name=name,
                colormap=colormap,
                opacity=1.0,
                **geometry,
            ),
        ]

    def _corrections_layers(self) -> list[Any]:
        """The Labels layers being corrected for fine-tuning (Finetune's link)."""
        return [x for x in self.viewer.layers if "finetune" in getattr(x, "metadata", {})]

    def _below_corrections(self, layer: Any) -> None:
        """While correcting, the TP/FP/FN map goes under the corrections layer
        (which stays the active one), so the edits stay in view."""
        layers = self.viewer.layers
        editing = [layers.index(x) for x in self._corrections_layers() if x is not layer]
        if editing and layer in layers:
            here, lowest = layers.index(layer), min(editing)
            if here > lowest:
                layers.move(here, lowest)

    def table_rows(self) -> list[dict[str, Any]]:
        """The table as dicts: ``scope`` ("volume"/"slice"), ``slice``, metric keys."""
        keys = [key for key, _ in self.columns]
        out = [{"scope": "volume", "slice": None, **{k: self.volume_metrics.get(k) for k in keys}}]
        for row in self.slice_rows:
            out.append({"scope": "slice", "slice": row["slice"], **{k: row.get(k) for k in keys}})
        return out

    def _fill_table(self) -> None:
        headers = ["slice"] + [header for _, header in self.columns]
        rows = self.table_rows()
        self.table.setUpdatesEnabled(False)
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            first = "volume" if row["scope"] == "volume" else str(row["slice"])
            self.table.setItem(i, 0, QTableWidgetItem(first))
            for j, (key, _) in enumerate(self.columns, start=1):
                self.table.setItem(i, j, metric_item(key, row[key]))
        self.table.setUpdatesEnabled(True)

    # -------------------------------------------------------------- navigate
    def go_to_row(self, row: int, _column: int = 0) -> None:
        """Move the viewer to the slice of table row ``row`` (row 0 is the volume)."""
        if row < 1 or row > len(self.slice_rows) or self._gt_layer is None:
            return
        index = int(self.slice_rows[row - 1]["slice"])
        move_to_slice(self.viewer, self._gt_layer, self.axis, index)

    # ---------------------------------------------------------------- export
    def export_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the table to ``path`` as CSV (``inf`` for infinite distances).

        Raises
        ------
        FileExistsError
            ``path`` exists and ``overwrite`` is False.
        ValueError
            There is nothing to export yet.
        """
        if not self.volume_metrics:
            raise ValueError("Nothing to export: run a comparison first.")
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; not overwriting it.")
        rows = self.table_rows()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        logger.info("wrote %d rows to %s", len(rows), path)
        return path

    def export_dialog(self) -> None:
        """Ask for a file name (the dialog confirms replacing a file) and export."""
        path, _ = QFileDialog.getSaveFileName(
            self, "Export comparison table", "comparison.csv", "CSV files (*.csv)"
        )
        if path:
            notify_errors(self.export_csv, path, overwrite=True)
