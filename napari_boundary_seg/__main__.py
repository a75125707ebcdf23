"""``python -m napari_boundary_seg``: the command line, as ``napari-boundary-seg``.

This is also the module that ``torchrun`` starts in every process of a
data-parallel run::

    torchrun --nproc_per_node 4 -m napari_boundary_seg train --data DIR --out RUN
"""

from __future__ import annotations

import sys

from napari_boundary_seg.cli import main

if __name__ == "__main__":
    sys.exit(main())
