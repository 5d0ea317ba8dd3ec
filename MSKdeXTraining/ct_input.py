"""A CT and its segmentation, read and checked as every step that takes them needs them.

``mskdex drr``, ``mskdex register`` and ``mskdex assemble`` read the same pair: a CT in HU and
a label map on its grid, whose labels an object map names. :func:`read_ct_and_labels` refuses,
naming the file, what would make every DRR, pose or ground truth wrong: differing grids, a
label map holding none of the map's objects (the wrong map) and a CT that does not read as HU.
"""

from __future__ import annotations

from pathlib import Path

from .imaging.volume import RESAMPLE_FIX, Volume, check_same_grid, read_ct, read_labels, resample_labels
from .objects import ObjectMap
from .qc import check_hu, check_map_fits


def read_ct_and_labels(ct_path: str | Path, labels_path: str | Path, objects: ObjectMap,
                       resample: bool = False, fix: str = RESAMPLE_FIX) -> tuple[Volume, Volume]:
    """Read a CT (HU) and its label map, checked against ``objects``.

    Raises :class:`InputError` naming the file and field: unreadable files, non-3D images,
    NaN/inf HU, non-integer labels, differing grids (size, spacing, origin, direction; the
    message ends with ``fix``), a label map holding none of the objects, a CT not in HU.
    ``resample`` resamples the labels onto the CT grid by nearest neighbour instead.
    """
    ct, labels = read_ct(ct_path), read_labels(labels_path)
    check_map_fits(labels, objects, labels_path)  # as read: resampling may leave out what lies outside the CT
    if resample and ct.grid_differences(labels):
        labels = resample_labels(labels, ct)
    check_same_grid(ct, labels, str(ct_path), str(labels_path), fix)
    check_hu(ct, labels, objects, ct_path)
    return ct, labels
