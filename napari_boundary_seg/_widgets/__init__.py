"""Dock widgets of the napari plugin (one module per widget; thin: layers in, core, layers out)."""
