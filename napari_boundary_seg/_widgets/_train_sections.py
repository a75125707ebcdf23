"""The Train widget's form, one class per section: :class:`DataSection`,
:class:`ModeSection`, :class:`ScheduleSection`, :class:`AdvancedSection` and
:class:`RunSection`, and how its fields follow each other
(:class:`TrainFormLogic`: presets, the schedule kind, the mode, the labels).

The fields are made from ``_logic.train_fields()`` (:class:`SpecForm`): the
config's declared settings as the widget presents them, so a setting declared
with its metadata shows up in its section without touching the widget.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QPushButton, QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_boundary_seg._widgets._fields import (
    Form,
    LayerPicker,
    PathEdit,
    button_row,
    make_field,
    note_label,
)
from napari_boundary_seg._widgets._layers import is_segmentation_labels, offered_image
from napari_boundary_seg._widgets._logic import (
    BL_ALONE_WARNING,
    PRESET_HELP,
    FieldSpec,
    boundary_only_from_start,
    default_patch,
    field_specs,
    planned_weights,
    preset_values,
    schedule_fields,
    schedule_param_is_integer,
    schedule_params,
)
from napari_boundary_seg._widgets._plots import AlphaPlot, TrainingCurves
from napari_boundary_seg._widgets._progress import ProgressPanel


class SpecForm(Form):
    """A :class:`~_fields.Form` whose fields are made from ``FieldSpec``s;
    ``fields`` maps each field's name to its widget."""

    def __init__(self, specs: Sequence[FieldSpec] = ()) -> None:
        super().__init__(framed=True)
        self.fields: dict[str, Any] = {}
        for spec in specs:
            self.add_spec(spec)

    def add_spec(self, spec: FieldSpec) -> Any:
        field = make_field(spec)
        self.fields[spec.name] = field
        self.add(field)
        return field

    def add_field(self, name: str, field: Any, label: str | None = "") -> Any:
        """Add a field made here (not from a spec) under ``name``."""
        self.fields[name] = field
        return self.add(field, label)


class DataSection(SpecForm):
    """Where the data comes from: image and labels layers, or a dataset folder."""

    def __init__(self, viewer: Any) -> None:
        from magicgui.widgets import RadioButtons

        super().__init__()
        self.source = RadioButtons(
            choices=[("Layers", "layers"), ("Dataset folder", "folder")],
            value="layers",
            orientation="vertical",
            label="Source",
        )
        self.images = LayerPicker(
            viewer,
            offered_image,  # the same layers as the other widgets' image pickers
            multiple=True,
            show_all=lambda layer: offered_image(layer, True),
            show_all_text="list φ / probability layers too",
            tooltip="Modalities, stacked as channels in the viewer's order",
        )
        self.images.magic.native.setFixedHeight(62)
        # segmentations only: no outline, outcome map or live preview
        self.labels = LayerPicker(
            viewer, is_segmentation_labels, tooltip="Integer Labels layers only"
        )
        self.folder = PathEdit("folder")
        self.folder.magic.native.setToolTip("imagesTr/ + labelsTr/, WMH or ISLES layout")
        show_all = self.images.detach_show_all()
        self.add_field("source", self.source)
        self.add_field("images", self.images, "Image layer(s)")
        self.add_field("show_all_images", show_all, None)
        self.add_field("labels", self.labels, "Labels layer")
        self.add_field("folder", self.folder, "Dataset folder")
        for spec in field_specs("data"):
            self.add_spec(spec)


class ModeSection(SpecForm):
    """2D slices or 3D patches, the patch size, the steps of a 3D epoch, augmentation."""

    def __init__(self) -> None:
        from magicgui import widgets as mw
        from qtpy.QtWidgets import QAbstractSpinBox

        super().__init__()
        dims, augment, steps = field_specs("mode")
        self.add_spec(dims)
        self.patch = [
            mw.SpinBox(value=p, min=1, max=4096, label=f"axis {k}")
            for k, p in enumerate(default_patch(None))
        ]
        self.patch_row = mw.Container(
            widgets=self.patch, layout="horizontal", labels=False, label="Patch (voxels)"
        )
        self.patch_row.margins = (0, 0, 0, 0)
        self.patch_row.native.layout().setSpacing(2)
        self.patch_row.tooltip = (
            "3D patch per numpy axis (the layer's axes 0, 1, 2). Default: 96×96×32 "
            "clipped to the volume; along the split axis also to the training block."
        )
        for box in self.patch:  # three in a row: no +/- buttons, so they fit the dock
            box.native.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
            box.native.lineEdit().setMinimumWidth(24)
            box.native.setStyleSheet("min-width: 22px;")  # napari's style asks for 90 px
        self.add_field("patch_row", self.patch_row)
        self.add_spec(steps)
        self.add_spec(augment)

    def patch_size(self) -> tuple[int, int, int]:
        """The patch fields (voxels, numpy axis order)."""
        return tuple(int(box.value) for box in self.patch)

    def set_patch(self, values: Sequence[int]) -> None:
        for box, value in zip(self.patch, values, strict=True):
            box.value = int(value)


class ScheduleSection(QWidget):
    """Epochs, learning rate, loss and its α schedule, with the planned weights
    (:class:`~_plots.AlphaPlot`) and the boundary-loss-alone warning."""

    def __init__(self) -> None:
        super().__init__()
        self.form = SpecForm(field_specs("schedule"))
        self.fields = self.form.fields
        f = self.fields
        self.alpha_boxes = (f["alpha_start"], f["alpha_step"], f["alpha_floor"])
        self.alpha_plot = AlphaPlot()
        self.warning = note_label(BL_ALONE_WARNING, "color: #ffb74d; font-weight: bold;")
        self.warning.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        for widget in (self.form, self.alpha_plot, self.warning):
            layout.addWidget(widget)

    def params(self) -> dict[str, float]:
        """The schedule's ``make_schedule`` parameters from the α fields."""
        return schedule_params(self.fields["schedule"].value, *(b.value for b in self.alpha_boxes))

    def follow_kind(self, reset_values: bool) -> None:
        """Label (and show) the α fields as the schedule kind names its
        parameters (``_logic.schedule_fields``); ``reset_values``: set them to
        the kind's defaults."""
        kind = self.fields["schedule"].value
        fields = schedule_fields(kind)
        for k, box in enumerate(self.alpha_boxes):
            self.form.show_row(box, k < len(fields))
            if k >= len(fields):
                continue
            name, box.label, value, help_text = fields[k]
            box.native.setDecimals(0 if schedule_param_is_integer(kind, name) else 3)
            if help_text:
                box.tooltip = help_text
            if reset_values:
                with box.changed.blocked():
                    box.value = value

    def update_view(self, binary: bool) -> str:
        """Redraw the planned weights and show the warning when the boundary
        loss alone would train a binary problem; returns an error text ("" if none)."""
        loss, kind = self.fields["loss"].value, self.fields["schedule"].value
        for box in (self.fields["schedule"], *self.alpha_boxes):
            box.enabled = loss == "gdl+bl"  # the schedule only drives GDL + BL
        params = self.params()
        error = ""
        try:
            weights = planned_weights(loss, kind, params, self.fields["epochs"].value)
        except (TypeError, ValueError) as exc:
            error, weights = f"α schedule: {exc}", []
        self.alpha_plot.set_weights(weights, loss)
        self.warning.setVisible(boundary_only_from_start(loss, kind, params) and binary)
        return error


class AdvancedSection(QCollapsible):
    """The rarely changed settings, folded away ("Advanced settings")."""

    def __init__(self) -> None:
        super().__init__("Advanced settings")
        self.form = SpecForm(field_specs("advanced"))
        self.fields = self.form.fields
        self.addWidget(self.form)
        self.setContentsMargins(0, 0, 0, 0)
        self.content().layout().setContentsMargins(0, 0, 0, 0)


class RunSection(QWidget):
    """What a run adds, Start / Pause / Stop, the progress bars, the status,
    the verdict of a run that ended badly and the live curves."""

    STATUS_HELP = (
        "Epochs and steps are counted from 1. 'HD —': the Hausdorff distance of an "
        "empty prediction is infinite, so it is not shown as a number (nor as the "
        "image diagonal the averages use)."
    )

    def __init__(self) -> None:
        super().__init__()
        self.form = SpecForm(field_specs("run"))
        self.fields = self.form.fields
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.progress = ProgressPanel(levels=2)
        self.status = note_label("Ready.")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setToolTip(self.STATUS_HELP)
        self.verdict_label = note_label("", "color: #ff8a65; font-weight: bold;")
        self.verdict_label.setVisible(False)
        self.curves = TrainingCurves()
        curves_box = QGroupBox("Live curves")
        curves_layout = QVBoxLayout(curves_box)
        curves_layout.setContentsMargins(2, 2, 2, 2)
        curves_layout.addWidget(self.curves)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.form)
        layout.addLayout(button_row(self.start_button, self.pause_button, self.stop_button))
        for widget in (self.progress, self.status, self.verdict_label, curves_box):
            layout.addWidget(widget)


class TrainFormLogic:
    """How the Train widget's fields follow each other (a part of
    ``train.TrainWidget``: it reads the widget's fields and sections)."""

    # -- field logic ---------------------------------------------------------
    def _on_preset(self, value: str) -> None:
        if value != "custom":
            self._apply_preset(value)
        self.preset_help.setText(PRESET_HELP[value])

    def _apply_preset(self, preset: str) -> None:
        """Set the fields to a preset's values (``"quick"`` or ``"paper"``)."""
        values = preset_values(preset)
        self._applying_preset = True
        try:
            self.preset.value = preset
            self.schedule.value = values.pop("schedule")
            for name, value in values.items():
                getattr(self, name).value = value
        finally:
            self._applying_preset = False
        self.preset_help.setText(PRESET_HELP[preset])
        self._update_schedule_view()

    def _to_custom(self, *_: Any) -> None:
        if not self._applying_preset and self.preset.value != "custom":
            self._applying_preset = True
            try:
                self.preset.value = "custom"
            finally:
                self._applying_preset = False
            self.preset_help.setText(PRESET_HELP["custom"])

    def _on_source(self, *_: Any) -> None:
        layers = self.source.value == "layers"
        self.labels.setEnabled(layers)
        self.folder.setEnabled(not layers)
        self.num_classes.enabled = not layers
        self._on_labels()

    def _on_labels(self, *_: Any) -> None:
        """Follow the labels layer: its class count and whether it is binary."""
        if self.source.value == "layers":
            layer = self.labels.value
            if layer is not None:
                try:
                    top = int(np.max(np.asarray(layer.data))) if layer.data.size else 0
                    self.num_classes.value = max(top + 1, 2)
                except (TypeError, ValueError):
                    pass
                self._fit_default_patch(layer.data.shape)
        self._update_preview_at()
        self._update_schedule_view()

    def _fit_default_patch(self, shape: Sequence[int]) -> None:
        """Set the patch to the default clipped to ``shape`` unless the user changed it."""
        if self.patch_size() != self._patch_auto:
            return
        self._patch_auto = default_patch(shape)
        applying, self._applying_preset = self._applying_preset, True
        try:
            self.mode.set_patch(self._patch_auto)
        finally:
            self._applying_preset = applying

    def patch_size(self) -> tuple[int, int, int]:
        """The patch fields (voxels, numpy axis order)."""
        return self.mode.patch_size()

    def _on_dims(self, *_: Any) -> None:
        """Show the fields of the chosen mode: the patch, the steps of an epoch and
        the foreground share in 3D, the slice size and the empty-slice filter in 2D."""
        three = self.dims.value == 3
        self.mode.show_row(self.patch_row, three)
        self.mode.show_row(self.steps_per_epoch, three)
        self.advanced.form.show_row(self.oversample, three)
        self.advanced.form.show_row(self.slice_size, not three)
        self.advanced.form.show_row(self.skip_empty, not three)

    def _on_schedule_kind(self, *_: Any) -> None:
        self.schedule_section.follow_kind(reset_values=not self._applying_preset)
        if not self._applying_preset:
            self._to_custom()
        self._update_schedule_view()

    def schedule_params(self) -> dict[str, float]:
        return self.schedule_section.params()

    def _update_schedule_view(self, *_: Any) -> None:
        error = self.schedule_section.update_view(binary=self.num_classes.value <= 2)
        if error:
            self.status.setText(error)
