"""The Finetune widget's "Gain" table: DSC and HD95 of the model before (old)
and after (new) fine-tuning, on the corrected slices and on the untouched ones.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from napari_boundary_seg._widgets._checkpoints import NO_FOREGROUND
from napari_boundary_seg._widgets._layers import format_number

#: Columns: DSC (0-1) and HD95 (mm) of the model before (old) and after (new)
#: fine-tuning; n: the number of slices.
TABLE_COLUMNS = ("slices", "n", "DSC old", "DSC new", "HD95 old (mm)", "HD95 new (mm)")


class GainTable(QTableWidget):
    """Two rows (corrected, untouched slices) of :data:`TABLE_COLUMNS`, with
    headers of a word a line so that the columns fit a narrow dock (300 px)."""

    def __init__(self) -> None:
        super().__init__(2, len(TABLE_COLUMNS))
        self.setHorizontalHeaderLabels([c.replace(" ", "\n") for c in TABLE_COLUMNS])
        tips = ("", "number of slices", "0-1", "0-1", "95th-percentile Hausdorff distance, mm")
        for c, tip in enumerate((*tips, tips[-1])):
            if tip:
                self.horizontalHeaderItem(c).setToolTip(tip)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(22)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        for column in (0, 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFixedHeight(2 * 22 + 3 * self.fontMetrics().height() + 14)

    def fill(
        self,
        comparison: dict[str, dict[str, float]] | None,
        untouched_truth: dict[str, float] | None = None,
        foreground: dict[str, dict[str, bool]] | None = None,
    ) -> None:
        """Fill the table: the corrected row against the corrections; the
        untouched row against ``untouched_truth`` (the ground truth) or "n/a";
        an HD95 of a group with no foreground predicted shows "—"."""
        self.clearContents()
        if comparison is None:
            return
        rows = {"corrected": comparison["corrected"], "untouched": untouched_truth}
        for r, group in enumerate(("corrected", "untouched")):
            row = rows[group]
            n = int(comparison[group]["n_slices"])
            self.setItem(r, 0, QTableWidgetItem(group))
            self.setItem(r, 1, QTableWidgetItem(str(n)))
            for c, key in enumerate(("dice_old", "dice_new", "hd95_old", "hd95_new"), start=2):
                item = self._cell(group, key, row, foreground)
                self.setItem(r, c, item)

    @staticmethod
    def _cell(
        group: str,
        key: str,
        row: dict[str, float] | None,
        foreground: dict[str, dict[str, bool]] | None,
    ) -> QTableWidgetItem:
        if row is None:
            item = QTableWidgetItem("n/a")
            item.setToolTip(
                "No ground truth chosen: on untouched slices the corrections are the old "
                "prediction, so comparing against them means nothing (old DSC 1 by "
                "construction). Choose a ground-truth layer to measure them."
            )
            return item
        tag = key.rsplit("_", 1)[1]
        has_fg = (foreground or {}).get(tag, {}).get(group, True)
        if key.startswith("hd95") and not has_fg and int(row.get("n_slices", 1)) > 0:
            item = QTableWidgetItem("—")
            item.setToolTip(
                f"{NO_FOREGROUND} on these slices: HD95 is undefined (inf), not the image diagonal"
            )
            return item
        digits = 3 if key.startswith("dice") else 1
        return QTableWidgetItem(format_number(row[key], digits, nan="–", none="–"))
