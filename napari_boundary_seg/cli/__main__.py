"""``python -m napari_boundary_seg.cli``: the command line."""

import sys

from napari_boundary_seg.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
