"""Form sections shared by several widgets.

:class:`ModelInputs`: the "checkpoint + images + device" rows of the Predict
and Finetune widgets (a checkpoint file, the image layers stacked as the
model's channels, with the modalities the model was trained on shown under
them, and the device). An empty checkpoint field takes the model that the
image layers name in their metadata (``_checkpoints.layer_model``; the sample
case names the shipped starter model), so Predict works on the first click.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

from typing import Any

from napari_boundary_seg._widgets._checkpoints import layer_model, modalities_of
from napari_boundary_seg._widgets._fields import DeviceCombo, Form, LayerList, PathEdit
from napari_boundary_seg._widgets._layers import follow_layer_list

#: The checkpoint picker's file filter.
CHECKPOINT_FILTER = "Checkpoints and model packages (*.pt *.pth *.ckpt *.zip);;All files (*)"


class ModelInputs(Form):
    """Checkpoint, image layer(s) and device rows (a :class:`~_fields.Form`).

    Attributes
    ----------
    checkpoint
        :class:`~_fields.PathEdit` of the checkpoint file.
    images
        Multi-select image :class:`~_fields.LayerPicker`; its hint shows the
        checkpoint's modality names.
    device
        :class:`~_fields.DeviceCombo`.
    """

    def __init__(self, viewer: Any) -> None:
        from napari.layers import Image

        self.checkpoint = PathEdit("file", CHECKPOINT_FILTER, "best.pt")
        self.images = LayerList(viewer, Image)
        self.device = DeviceCombo()
        super().__init__(
            [
                ("Checkpoint", self.checkpoint),
                ("Image layer(s)", self.images),
                ("Device", self.device),
            ]
        )
        self.checkpoint.magic.changed.connect(self.show_modalities)
        follow_layer_list(viewer, self.take_layer_model)
        self.take_layer_model()

    def take_layer_model(self, *_: Any) -> None:
        """Fill an empty checkpoint field with the model the chosen image layers
        name in their metadata (the sample case names the starter model)."""
        try:
            model = "" if self.checkpoint.text() else layer_model(self.images.selected_layers())
            if model:
                self.checkpoint.setText(model)
        except RuntimeError:  # the Qt side is gone (widget closed)
            pass

    def show_modalities(self, *_: Any) -> None:
        """Show the checkpoint's modality names under the image picker."""
        text = self.checkpoint.text()
        names = modalities_of(text) if text else []
        self.images.set_hint(f"model trained on: {', '.join(names)}" if names else "")
