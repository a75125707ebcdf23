"""Numerical core: numpy, scipy and torch only (never napari, Qt or magicgui)."""
