"""The widgets' one way to build a form: plain Qt layouts made by small
factories, fields being magicgui widgets.

- Fields: :func:`make_field` (a magicgui widget from a ``_logic.FieldSpec``:
  label, help as tooltip, bounds, step, decimals, choices), :func:`int_spin`,
  :func:`double_spin`, :func:`declared_spin` (a spin box of a declared setting); :class:`PathEdit` (``FileEdit``), :class:`DeviceCombo`
  (the devices present here), :class:`LayerPicker` (one layer picker on a
  magicgui ``ComboBox``, or a ``Select`` with ``multiple=True``, offering the
  layers its ``accept`` predicate takes and following the layer list;
  :func:`LayerCombo`, :func:`LayerList` make the usual ones).
- Layouts: :class:`Form` (label and field rows; a row's label follows the
  field's magicgui ``label``, :meth:`Form.show_row` hides a whole row),
  :func:`section_title`, :func:`note_label`, :func:`button_row`,
  :func:`group_box`, :func:`collapsible` (superqt ``QCollapsible``),
  :func:`scroll_layout` (a dock widget that scrolls and fits a 1366×768
  screen), :func:`compact_children` (long entries elided, not widening a dock).

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari.layers import Labels, Layer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_boundary_seg._widgets._layers import follow_layer_list, offered_image
from napari_boundary_seg.core.settings import plain_help

#: The widest a scrolling form asks to be (px): a third of a 1366 px screen.
MAX_FORM_WIDTH = 440


# ------------------------------------------------------------------ fields
class _MagicWrapper(QWidget):
    """A QWidget holding one magicgui widget (``self.magic``). ``value`` is the
    magicgui widget's; other attributes it does not have are looked up on the
    magicgui widget, then on its native Qt widget (so a :class:`LayerPicker`
    answers ``count()``, ``currentText()`` as the ``QComboBox`` it wraps)."""

    magic: Any = None

    def _embed(self, *widgets: QWidget) -> QVBoxLayout:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        for w in widgets:
            layout.addWidget(w)
        return layout

    @property
    def value(self) -> Any:
        return self.magic.value

    @value.setter
    def value(self, value: Any) -> None:
        self.magic.value = value

    def __getattr__(self, name: str) -> Any:
        magic = self.__dict__.get("magic")
        if magic is None or name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(magic, name)
        except AttributeError:
            return getattr(magic.native, name)


def compact_combo(combo: QComboBox, chars: int = 14) -> QComboBox:
    """Let ``combo`` shrink to ``chars`` characters (long layer names or choices
    are elided instead of widening the dock); it grows with the form."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return combo


class LayerPicker(_MagicWrapper):
    """A layer picker of the viewer's layers, in the viewer's order, kept up to date.

    The choices are a callable over ``viewer.layers`` (napari's way for layer
    pickers), reset whenever a layer is added, removed, moved or renamed.

    Parameters
    ----------
    viewer
        The napari viewer.
    accept
        Only layers for which ``accept(layer)`` is true are offered.
    multiple
        A compact multi-select list (magicgui ``Select``; every offered layer
        chosen at first look) instead of a ``ComboBox``.
    allow_none
        Add an empty "(none)" entry at the top (one choice only).
    show_all
        Offer a check box (``show_all_text``) that also lists the layers
        ``show_all(layer)`` takes (this plugin's maps and probabilities).
    rows, tooltip
        Height of a list in rows; the list's tooltip.
    """

    NONE_TEXT = "(none)"

    def __init__(
        self,
        viewer: Any,
        accept: Callable[[Layer], bool],
        multiple: bool = False,
        allow_none: bool = False,
        show_all: Callable[[Layer], bool] | None = None,
        show_all_text: str = "show all layers",
        rows: int = 3,
        tooltip: str = "",
    ) -> None:
        super().__init__()
        from magicgui.widgets import CheckBox, ComboBox, Select

        self._viewer = viewer
        self._accept = accept
        self._also = show_all
        self._allow_none = allow_none and not multiple
        self.multiple = multiple
        self._seen = False
        self.show_all_field = CheckBox(value=False, text=show_all_text)
        self.show_all = self.show_all_field.native
        self.show_all.setToolTip("Also list this plugin's outputs (φ maps, probabilities)")
        self.show_all.setVisible(show_all is not None)
        self.show_all_field.changed.connect(self.refresh)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setVisible(False)
        if multiple:
            self.magic = Select(choices=self._choices)
            native = self.magic.native
            native.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
            native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            native.setFixedHeight(rows * 20 + 6)
            native.setMinimumWidth(60)
        else:
            self.magic = ComboBox(choices=self._choices)
            compact_combo(self.magic.native)
        if tooltip:
            self.magic.native.setToolTip(tooltip)
        self._embed(self.magic.native, self.show_all, self.hint)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        follow_layer_list(viewer, self.refresh)
        self.refresh()

    def detach_show_all(self) -> Any:
        """Take the "show all" check box (magicgui ``CheckBox``) out of the
        picker, for a form to show it in a row of its own."""
        self.layout().removeWidget(self.show_all)
        return self.show_all_field

    def _offered(self, layer: Layer) -> bool:
        if self._accept(layer):
            return True
        return self._also is not None and self.show_all.isChecked() and self._also(layer)

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        layers = [(layer.name, layer) for layer in self._viewer.layers if self._offered(layer)]
        return [(self.NONE_TEXT, None), *layers] if self._allow_none else layers

    def refresh(self, *_: Any) -> None:
        """Rebuild the list in the viewer's order, keeping the current choice."""
        try:
            if self.multiple:
                self._refresh_list()
            else:
                self._refresh_combo()
        except RuntimeError:  # the Qt side is gone (widget closed)
            pass

    reset_choices = refresh

    def _refresh_combo(self) -> None:
        current = self.magic.value
        combo = self.magic.native
        combo.blockSignals(True)
        combo.clear()  # magicgui keeps stale names of renamed layers otherwise
        self.magic.reset_choices()
        if current is not None and current in self.magic.choices:
            self.magic.value = current
        combo.blockSignals(False)

    def _refresh_list(self) -> None:
        native = self.magic.native
        chosen = [item.data(0x0100) for item in native.selectedItems()]  # UserRole
        first = not self._seen
        native.blockSignals(True)
        native.clear()
        self.magic.reset_choices()
        for i in range(native.count()):
            item = native.item(i)
            layer = item.data(0x0100)
            item.setSelected(any(layer is c for c in chosen) or (first and not chosen))
        native.blockSignals(False)
        self._seen = self._seen or native.count() > 0

    # -- one choice
    def layer(self) -> Layer | None:
        """The chosen layer, or None when nothing (or "(none)") is chosen."""
        layer = self.magic.value
        if layer is None or layer not in self._viewer.layers:
            return None
        return layer

    def set_layer(self, layer: Layer | str) -> None:
        """Choose ``layer`` (a layer or its name); a layer not offered is not chosen."""
        self.refresh()
        name = layer if isinstance(layer, str) else layer.name
        self.magic.native.setCurrentText(name)

    def names(self) -> list[str]:
        """The names offered, in order."""
        return [self.magic.native.itemText(i) for i in range(self.magic.native.count())]

    # -- several choices
    def set_hint(self, text: str) -> None:
        """Show ``text`` under the list (e.g. the model's modality names); "" hides it."""
        self.hint.setText(text)
        self.hint.setVisible(bool(text))

    def selected_names(self) -> list[str]:
        native = self.magic.native
        return [native.item(i).text() for i in range(native.count()) if native.item(i).isSelected()]

    def select(self, names: Sequence[str]) -> None:
        native = self.magic.native
        for i in range(native.count()):
            native.item(i).setSelected(native.item(i).text() in names)

    def selected_layers(self) -> list[Any]:
        return [self._viewer.layers[n] for n in self.selected_names() if n in self._viewer.layers]


def LayerCombo(  # noqa: N802 - a picker's constructor
    viewer: Any,
    layer_types: Sequence[type[Layer]] = (Labels,),
    allow_none: bool = False,
    parent: QWidget | None = None,
    accept: Callable[[Layer], bool] | None = None,
) -> LayerPicker:
    """A :class:`LayerPicker` of one layer of ``layer_types`` that ``accept`` takes."""
    types = tuple(layer_types)

    def offered(layer: Layer) -> bool:
        return type(layer) in types and (accept is None or accept(layer))

    picker = LayerPicker(viewer, offered, allow_none=allow_none)
    if parent is not None:
        picker.setParent(parent)
    return picker


def LayerList(viewer: Any, layer_type: type, rows: int = 3) -> LayerPicker:  # noqa: N802
    """A multi-select :class:`LayerPicker` of ``layer_type`` layers. An Image
    picker leaves out this plugin's maps and probabilities
    (``_layers.is_scan_image``) unless "show all layers" is ticked."""
    from napari.layers import Image

    if layer_type is Image:
        return LayerPicker(
            viewer,
            offered_image,
            multiple=True,
            show_all=lambda layer: offered_image(layer, True),
            rows=rows,
            tooltip="Modalities, stacked as channels in this order",
        )
    return LayerPicker(
        viewer, lambda layer: isinstance(layer, layer_type), multiple=True, rows=rows
    )


class PathEdit(_MagicWrapper):
    """A path picker (magicgui ``FileEdit``: a line edit and a "…" button) for
    a file (``mode="file"``), a folder (``"folder"``) or a file to write (``"save"``).

    ``text()`` is what the user typed ("" when empty), not magicgui's ``Path(".")``.
    """

    def __init__(
        self, mode: str = "file", filter: str = "", placeholder: str = "", value: str = ""
    ):
        super().__init__()
        from magicgui.widgets import FileEdit

        modes = {"file": "r", "folder": "d", "save": "w"}
        options = {"value": value} if value else {}
        self.magic = FileEdit(mode=modes.get(mode, mode), filter=filter or None, **options)
        self.edit = self.magic.line_edit.native
        self.edit.setPlaceholderText(placeholder)
        button = self.magic.choose_btn.native
        button.setToolTip(button.text())  # "Select file", "Choose directory"...
        button.setText("…")
        button.setFixedWidth(28)
        self.edit.setMinimumWidth(60)
        self._embed(self.magic.native)

    def text(self) -> str:
        return self.magic.line_edit.value.strip()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        self.magic.line_edit.value = str(text)


class DeviceCombo(_MagicWrapper):
    """The devices present (magicgui ``ComboBox``), ``auto`` first and labelled
    with what it picks; ``value`` and :meth:`device` are the device name."""

    def __init__(self) -> None:
        super().__init__()
        from magicgui.widgets import ComboBox

        from napari_boundary_seg._widgets._logic import device_choices
        from napari_boundary_seg.core.device import resolve_device

        auto = f"auto ({resolve_device('auto')})"
        self.magic = ComboBox(choices=[(auto if d == "auto" else d, d) for d in device_choices()])
        self.magic.native.setToolTip("Only the devices present on this machine are listed")
        compact_combo(self.magic.native, 8)
        self._embed(self.magic.native)

    def device(self) -> str:
        """The chosen device name (``"auto"``, ``"cpu"``, ``"cuda:0"``...)."""
        return self.magic.value

    def set_device(self, name: str) -> None:
        if name in self.magic.choices:
            self.magic.value = name


def double_spin(
    value: float, low: float, high: float, step: float, decimals: int
) -> QDoubleSpinBox:
    """A float field (magicgui ``FloatSpinBox``; its Qt ``QDoubleSpinBox`` is
    returned) with range ``[low, high]``, ``step`` and ``decimals``."""
    from magicgui.widgets import FloatSpinBox

    magic = FloatSpinBox(min=low, max=high, step=step)
    box = magic.native
    box.setDecimals(decimals)
    box.setValue(value)
    box.magic = magic  # keep the magicgui side alive with its Qt widget
    return box


def int_spin(value: int, low: int, high: int, step: int = 1) -> QSpinBox:
    """An integer field (magicgui ``SpinBox``; its Qt ``QSpinBox`` is returned)
    with range ``[low, high]`` and ``step``."""
    from magicgui.widgets import SpinBox

    magic = SpinBox(value=value, min=low, max=high, step=step)
    box = magic.native
    box.magic = magic
    return box


def declared_spin(config: type, name: str, decimals: int = 2, **override: Any) -> Any:
    """A spin box (:func:`int_spin`, :func:`double_spin`) of the declared
    setting ``name`` of the dataclass ``config``: its default, bounds, step and
    help (as tooltip); ``override`` replaces ``value``, ``low``, ``high`` or
    ``step`` (a form's narrower range)."""
    from napari_boundary_seg.core.settings import settings

    declared = {d.name: d for d in settings(config)}[name]
    low, high = declared.bounds or (0, None)
    facts = {
        "value": declared.default,
        "low": 0 if low is None else low,
        "high": 1_000_000 if high is None else high,
        "step": declared.step or 1,
    }
    facts.update(override)
    if declared.kind == "int":
        box = int_spin(
            int(facts["value"]), int(facts["low"]), int(facts["high"]), int(facts["step"])
        )
    else:
        box = double_spin(
            float(facts["value"]), facts["low"], facts["high"], facts["step"], decimals
        )
    box.setToolTip(plain_help(declared.help))
    return box


def make_field(spec: Any) -> Any:
    """The magicgui widget of a field described by ``spec`` (a
    ``_logic.FieldSpec``: magicgui's ``create_widget`` with its label, help as
    tooltip, bounds, step and choices; decimals on the Qt side). A path field
    is a :class:`PathEdit`."""
    from magicgui.widgets import create_widget

    if spec.widget == "device":
        field = DeviceCombo()
        field.magic.label = spec.label
        return field
    if spec.type is Path:
        field = PathEdit(spec.mode, spec.filter, value=str(spec.default or ""))
        field.magic.label = spec.label
        field.magic.tooltip = spec.help or None
        return field
    options: dict[str, Any] = {}
    if spec.choices is not None:
        options["choices"] = list(spec.choices)
    elif spec.bounds is not None:
        options["min"], options["max"] = spec.bounds
    if spec.step is not None and spec.choices is None:
        options["step"] = spec.step
    widget = create_widget(
        value=spec.default, annotation=spec.type, label=spec.label, options=options
    )
    if spec.help:
        widget.tooltip = spec.help
    if spec.decimals is not None:
        widget.native.setDecimals(spec.decimals)
    return widget


# ------------------------------------------------------------------ layouts
def _native(field: Any) -> QWidget:
    if isinstance(field, QWidget):
        return field
    return field.native


class Form(QWidget):
    """A form: rows of a label and a field (a magicgui widget, a wrapper or a
    QWidget); a magicgui check box (or ``label`` None) spans the row.

    ``grow``: every field as wide as the form (not only the expanding ones);
    ``framed``: the style's margins around the rows (a form on its own, not
    in a group box).
    A row's label follows its magicgui field's ``label``; :meth:`show_row` shows
    or hides a whole row (label and field).
    """

    def __init__(self, rows: Sequence[Any] = (), grow: bool = False, framed: bool = False) -> None:
        super().__init__()
        from qtpy.QtCore import Qt

        self.layout_ = QFormLayout(self)
        self.framed = framed
        if framed:  # margins around the rows, labels centred on their fields
            self.layout_.setContentsMargins(9, 9, 4, 9)  # 300 px wide docks fit
            self.layout_.setLabelAlignment(
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
            )
        else:
            self.layout_.setContentsMargins(0, 0, 0, 0)
        self.layout_.setHorizontalSpacing(4)
        if grow:
            self.layout_.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self._fields: list[Any] = []
        for row in rows:
            if isinstance(row, tuple):
                self.add(row[1], row[0])
            else:
                self.add(row)

    def add(self, field: Any, label: str | None = "") -> Any:
        """Add a row; ``label`` "" takes the magicgui field's label."""
        from magicgui.widgets import CheckBox

        widget = _native(field)
        magic = getattr(field, "magic", field)
        if label == "" and not isinstance(magic, CheckBox):
            label = getattr(magic, "label", "") or ""
        if not label:
            self.layout_.addRow(widget)
        else:
            text = QLabel(label)
            if self.framed:  # centred on a field taller than one line
                text.setMinimumHeight(widget.sizeHint().height())
                text.setAlignment(self.layout_.labelAlignment())
            self.layout_.addRow(text, widget)
            if hasattr(magic, "label_changed"):
                magic.label_changed.connect(lambda value, text=text: text.setText(value or ""))
            tip = getattr(magic, "tooltip", None)
            if tip:
                text.setToolTip(tip)
        self._fields.append(field)
        return field

    def add_row(self, layout: Any) -> None:
        """Add a row holding a layout (e.g. a :func:`button_row`)."""
        self.layout_.addRow(layout)

    def show_row(self, field: Any, visible: bool = True) -> None:
        """Show or hide the row of ``field``."""
        row, _ = self.layout_.getWidgetPosition(_native(field))
        if row >= 0:
            self.layout_.setRowVisible(row, visible)


def section_title(title: str) -> QLabel:
    """A bold section title."""
    label = QLabel(title)
    label.setStyleSheet("font-weight: bold; margin-top: 4px;")
    return label


def note_label(text: str, style: str = "") -> QLabel:
    """A word-wrapped line of text (``style``: a Qt style sheet)."""
    label = QLabel(text)
    label.setWordWrap(True)
    if style:
        label.setStyleSheet(style)
    return label


def button_row(*widgets: QWidget, stretch: Sequence[int] = ()) -> QHBoxLayout:
    """``widgets`` side by side (``stretch``: their stretch factors)."""
    row = QHBoxLayout()
    for k, widget in enumerate(widgets):
        row.addWidget(widget, stretch[k] if k < len(stretch) else 0)
    return row


def _scroll_area_class() -> type:
    from qtpy.QtCore import QSize
    from qtpy.QtWidgets import QScrollArea

    class FormScrollArea(QScrollArea):
        """Scrolls vertically only; as wide as its form needs (up to
        :data:`MAX_FORM_WIDTH`), a few rows high at least."""

        def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt naming
            body = self.widget()
            width = body.minimumSizeHint().width() if body is not None else 0
            width += self.verticalScrollBar().sizeHint().width() + 2
            return QSize(min(width, MAX_FORM_WIDTH), 120)

        def showEvent(self, event) -> None:  # noqa: N802 - Qt naming
            # napari sizes a dock from its size hint: hold the form's width
            self.setMinimumWidth(self.minimumSizeHint().width())
            super().showEvent(event)

    return FormScrollArea


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Put a scroll area in ``widget`` and return the layout of its content.

    A dock widget built on this layout scrolls vertically instead of being
    cut off (or forcing the window taller than a laptop screen): its minimum
    height is a few rows; its minimum width is its form's (at most
    :data:`MAX_FORM_WIDTH`). The area is ``widget.scroll_area``.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame

    body = QWidget()
    content = QVBoxLayout(body)
    area = _scroll_area_class()()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    widget.scroll_area = area
    return content


def collapsible(title: str, content: QWidget, expanded: bool = False) -> QWidget:
    """``content`` in a superqt ``QCollapsible`` section titled ``title``."""
    from superqt import QCollapsible

    section = QCollapsible(title)
    section.addWidget(content)
    if expanded:
        section.expand(animate=False)
    else:
        section.collapse(animate=False)
    return section


def compact_children(content: QWidget, chars: int = 4) -> None:
    """Let every combo box, line edit and list of ``content`` shrink (long
    entries are elided instead of widening the dock)."""
    from qtpy.QtWidgets import QAbstractSpinBox, QLineEdit

    for combo in content.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(chars)
    for edit in content.findChildren(QLineEdit):
        if not isinstance(edit.parent(), QAbstractSpinBox):  # a spin box sizes its own
            edit.setMinimumWidth(60)
    for view in content.findChildren(QAbstractItemView):
        view.setMinimumWidth(60)


def group_box(title: str, *items: Any) -> QWidget:
    """A titled box (``QGroupBox``) of ``items`` (widgets or layouts) one under the other."""
    from qtpy.QtWidgets import QGroupBox

    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    for item in items:
        if isinstance(item, QWidget):
            layout.addWidget(item)
        else:
            layout.addLayout(item)
    return box
