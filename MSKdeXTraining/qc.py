"""Segmentation quality control before a case is prepared for training.

The paper dropped 13 of 552 cases whose automatic segmentation failed. For every object of an
object map :func:`segmentation_qc` reports the volume (cm3), the number of connected
components (26-connectivity), the number of holes (enclosed background cavities) and the
volume of the largest component, and flags:

* ``missing`` - the object (or one of its declared sides) has no voxel: **fails** the case;
* ``volume_low`` / ``volume_high`` - volume outside the plausible range: **fails** the case;
* ``fragmented`` - less than ``MIN_LARGEST_FRACTION`` of the volume is in the largest component
  (of each side, for objects with sides; the two largest for an object without sides, which
  may hold both sides in one label): a warning (bones may be cut by the field of view, muscles
  have islands);
* ``holes`` - enclosed cavities: a warning;
* ``truncated`` - the object touches a face of the label map (the scan range or field of view
  cut it, so its volume and mass fall short): **fails** the case for a muscle, a warning for a
  bone (hip CTs end in the femur; a bone's target is the part scanned) and for an object the
  map marks ``cut_at_region`` (e.g. TotalSegmentator's iliopsoas, which runs up the spine);
* ``sides_swapped`` - an object's ``left`` side lies to the patient's right of its ``right``
  side (LPS x, +x the patient's left: bounding-box centres): the object map's sides, or the
  CT's orientation, are wrong: **fails** the case, as every per-side result would be the other
  side's;
* ``metal`` - with the CT given, at least ``METAL_MIN_CM3`` of voxels at or above ``METAL_HU``
  (an implant, e.g. a hip prosthesis or screws, or its artefacts) inside the object's bounding
  box (of each side, for objects with sides) widened by ``METAL_MARGIN_MM``: **fails** the
  case. Its DRRs, volume and mass would show metal and streaks rather than tissue, and the
  radiograph the implant.

Plausible ranges (cm3, the whole object, both sides together) are deliberately wide: they
catch a swapped, truncated or exploded label, not normal variation. Bones may be cut by the
scan range, so their lower bounds are low.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import InputError
from .imaging.hu import SCHNEIDER_LOWER_HU
from .imaging.volume import Volume
from .objects import ObjectMap
from .progress import Progress

#: Plausible volume range (cm3) of each of the paper's objects, both sides together.
PLAUSIBLE_VOLUME_CM3: dict[str, tuple[float, float]] = {
    "gluteus_maximus": (150.0, 3000.0),
    "gluteus_medius": (80.0, 1500.0),
    "gluteus_minimus": (20.0, 600.0),
    "iliacus": (30.0, 1500.0),
    "obturator_externus": (5.0, 300.0),
    "pectineus": (5.0, 300.0),
    "pelvis": (150.0, 2500.0),
    "femur": (30.0, 3000.0),
    "sacrum": (30.0, 800.0),
}
#: Below this fraction of an object's volume in its largest component, it is "fragmented".
MIN_LARGEST_FRACTION = 0.9
#: CT numbers (HU) at or above this are metal: Schneider et al. 2000's metal section (their
#: highest), above any bone and at the 3071 HU ceiling of 12-bit scanners.
METAL_HU = SCHNEIDER_LOWER_HU[-1]
#: Metal volume (cm3) near an object that fails the case: above a few stray bright voxels,
#: below any hip implant (a screw is about 1 cm3, a femoral stem 20-40 cm3).
METAL_MIN_CM3 = 0.5
#: Margin (mm) around an object's bounding box in which metal counts against it.
METAL_MARGIN_MM = 10.0
#: Plausible median HU inside the muscle labels of a CT in HU (lean muscle ~50, fatty ~-50).
MUSCLE_HU_RANGE = (-200.0, 200.0)
#: A hip CT in HU holds values below this: subcutaneous fat (-50 to -150) and air (-1000). A
#: label map, or any image of values >= 0, holds none.
FAT_OR_AIR_HU = -50.0
#: Flags that make a case fail; the others are warnings.
FAILING_FLAGS = ("missing", "volume_low", "volume_high", "sides_swapped", "metal")
#: Flags that make a case fail unless the object may be cut (:attr:`ObjectQC.may_be_cut`).
UNCUT_FAILING_FLAGS = ("truncated",)
#: Names of the label map's faces, in the order :func:`_faces` checks them.
FACES = ("first slice", "last slice", "first row", "last row", "first column", "last column")


@dataclass
class ObjectQC:
    """QC figures of one object: volume (cm3), components, holes, flags."""

    name: str
    #: a bone, or an object its map marks ``cut_at_region``: a scan may cut it (a warning)
    may_be_cut: bool
    volume_cm3: float
    components: int
    holes: int
    largest_fraction: float
    side_volumes_cm3: dict[str, float] = field(default_factory=dict)
    #: metal (cm3) in the widened bounding box of the object (of each side, summed); None when
    #: the CT was not checked
    metal_cm3: float | None = None
    #: the sides with at least :data:`METAL_MIN_CM3` of metal near them
    metal_sides: list[str] = field(default_factory=list)
    #: the faces of the label map (:data:`FACES`) the object touches
    faces: list[str] = field(default_factory=list)
    #: LPS x (mm, +x the patient's left) of the bounding-box centre of each side present
    side_x_mm: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def fails(self, flag: str) -> bool:
        """Whether ``flag`` fails the case for this object (else it is a warning)."""
        return flag in FAILING_FLAGS or (not self.may_be_cut and flag in UNCUT_FAILING_FLAGS)

    @property
    def failing(self) -> bool:
        """Whether any of its flags fails the case."""
        return any(self.fails(f) for f in self.flags)

    def to_json(self) -> dict:
        d = {"volume_cm3": round(self.volume_cm3, 3), "components": self.components,
             "holes": self.holes, "largest_fraction": round(self.largest_fraction, 4),
             "flags": list(self.flags), "messages": list(self.messages)}
        if self.side_volumes_cm3:
            d["side_volumes_cm3"] = {k: round(v, 3) for k, v in self.side_volumes_cm3.items()}
        if self.metal_cm3 is not None:
            d["metal_cm3"] = round(self.metal_cm3, 3)
        if self.metal_sides:
            d["metal_sides"] = list(self.metal_sides)
        if self.faces:
            d["faces"] = list(self.faces)
        if self.side_x_mm:
            d["side_x_mm"] = {k: round(v, 1) for k, v in self.side_x_mm.items()}
        return d


@dataclass
class SegmentationQC:
    """QC of a label map: per object figures; ``failed`` lists the reasons a case fails."""

    objects: dict[str, ObjectQC]

    @property
    def failed(self) -> list[str]:
        return [m for o in self.objects.values() for f, m in zip(o.flags, o.messages) if o.fails(f)]

    @property
    def warnings(self) -> list[str]:
        return [m for o in self.objects.values() for f, m in zip(o.flags, o.messages) if not o.fails(f)]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict:
        return {"ok": self.ok, "failed": self.failed, "warnings": self.warnings,
                "objects": {k: v.to_json() for k, v in self.objects.items()}}


def segmentation_qc(labels: Volume, objects: ObjectMap,
                    ranges: Mapping[str, tuple[float, float]] | None = None,
                    ct: Volume | None = None, progress: Progress | None = None) -> SegmentationQC:
    """Check every object of ``objects`` in the label map ``labels`` (see module docs), and
    for metal near it in ``ct`` (HU, the labels' grid) when given.

    ``ranges`` {object: (min, max) cm3} overrides :data:`PLAUSIBLE_VOLUME_CM3`; objects
    without a range are only checked for presence. ``progress`` gets the fraction of objects
    checked after each.
    """
    ranges = {**PLAUSIBLE_VOLUME_CM3, **(ranges or {})}
    voxel_cm3 = labels.voxel_volume_cm3
    metal = None if ct is None else _metal_mask(ct, labels)
    metal_anywhere = metal is not None and bool(metal.any())
    out: dict[str, ObjectQC] = {}
    for done, spec in enumerate(objects.objects, 1):
        # objects with sides are checked side by side (two femurs are two components); one
        # without may be bilateral, so its two largest components count as its main part
        parts = list(spec.sides.values()) or [spec.labels]
        masks = [np.isin(labels.array, v) for v in parts]
        topo = [_topology(m, 1 if spec.sides else 2) for m in masks]
        counts = [float(m.sum()) for m in masks]
        q = ObjectQC(spec.name, spec.kind == "bone" or spec.cut_at_region, sum(counts) * voxel_cm3,
                     sum(t[0] for t in topo), sum(t[2] for t in topo),
                     min((t[1] / c for t, c in zip(topo, counts) if c > 0), default=1.0))
        q.side_volumes_cm3 = {side: c * voxel_cm3 for side, c in zip(spec.sides, counts)}
        q.faces = [face for face in FACES if any(face in _faces(m) for m in masks)]
        q.side_x_mm = {side: float(labels.box_center(m)[0]) for side, m, c in zip(spec.sides, masks, counts) if c}
        if metal is not None and not metal_anywhere:  # most CTs: no full-volume masks per object
            q.metal_cm3 = 0.0
        elif metal is not None:
            near = [_near(m, labels.spacing) for m in masks]
            q.metal_cm3 = float(np.count_nonzero(metal & np.logical_or.reduce(near)) * voxel_cm3)
            q.metal_sides = [side for side, n in zip(spec.sides, near)
                             if np.count_nonzero(metal & n) * voxel_cm3 >= METAL_MIN_CM3]
        _flag(q, spec.labels, ranges.get(spec.name))
        out[spec.name] = q
        if progress is not None:
            progress(done / len(objects.objects), f"checked {spec.name} ({done} of {len(objects.objects)})")
    return SegmentationQC(out)


def _flag(q: ObjectQC, values: tuple[int, ...], plausible: tuple[float, float] | None) -> None:
    def add(flag: str, message: str) -> None:
        q.flags.append(flag)
        q.messages.append(f"{q.name}: {message}")

    if q.volume_cm3 == 0:
        add("missing", f"no voxels with label values {list(values)}")
        return
    for side, v in q.side_volumes_cm3.items():
        if v == 0:
            add("missing", f"{side} side has no voxels")
    flag = volume_flag(q.volume_cm3, plausible)
    if flag is not None:
        add(*flag)
    x = q.side_x_mm
    if "left" in x and "right" in x and x["left"] < x["right"]:
        add("sides_swapped", f"its left side lies to the patient's right of its right side (LPS x {x['left']:.0f} "
                             f"vs {x['right']:.0f} mm; +x is the patient's left): are the object map's sides "
                             "swapped, or the CT's orientation wrong?")
    if q.largest_fraction < MIN_LARGEST_FRACTION:
        add("fragmented", f"{q.components} components, the largest holds "
                          f"{100 * q.largest_fraction:.0f} % of the volume")
    if q.holes:
        add("holes", f"{q.holes} enclosed hole(s)")
    if q.faces:
        add("truncated", f"touches the label map's {', '.join(q.faces)}: cut by the scan range or "
                         "field of view, its volume and mass fall short")
    if q.metal_cm3 is not None and q.metal_cm3 >= METAL_MIN_CM3:
        where = f"its {' and '.join(q.metal_sides)} side" if q.metal_sides else "it"
        add("metal", f"{q.metal_cm3:.1f} cm3 of CT voxels at or above {METAL_HU:g} HU within "
                     f"{METAL_MARGIN_MM:g} mm of the bounding box of {where} (an implant or its "
                     "artefacts): its DRRs, volume and mass would not be tissue's")


def check_hu(ct: Volume, labels: Volume, objects: ObjectMap, source: object) -> None:
    """Refuse a CT (named ``source``) whose muscles do not read as HU (e.g. a lost rescale
    intercept: +1024) or that holds neither fat nor air (e.g. a label map given as the CT), which
    would make every lean fraction and density wrong."""
    muscle = np.isin(labels.array, [v for o in objects.objects if o.is_muscle for v in o.labels])
    if muscle.any():
        median = float(np.median(ct.array[muscle]))
        lo, hi = MUSCLE_HU_RANGE
        if not lo <= median <= hi:
            raise InputError(f"{source}: the muscles' median is {median:g}, not HU (expected {lo:g} to {hi:g}; "
                             "a stored value without its rescale slope / intercept?)")
    lowest = float(ct.array.min())
    if lowest >= FAT_OR_AIR_HU:
        raise InputError(f"{source}: its lowest value is {lowest:g}, not HU: a hip CT holds fat and air, below "
                         f"{FAT_OR_AIR_HU:g} HU (is it a label map or another image given as the CT, or stored "
                         "values without their rescale intercept?)")


def check_map_fits(labels: Volume, objects: ObjectMap, source: object) -> None:
    """Refuse a label map (named ``source``) that holds none of the objects of ``objects``: the
    wrong object map for it, which would make every ground truth 0."""
    present = np.unique(labels.array)
    if not any(np.isin(o.labels, present).any() for o in objects.objects):
        held = [int(v) for v in present[present != 0]]
        shown = "only background" if not held else f"labels {held[:12]}{' ...' if len(held) > 12 else ''}"
        raise InputError(f"{source}: holds none of the labels of {objects.title} (the file has "
                         f"{shown}); is {objects.name!r} the map of this segmentation?")


def _faces(mask: np.ndarray) -> list[str]:
    """The :data:`FACES` of the volume that ``mask`` ([k, j, i]) touches."""
    ends = (mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1])
    return [face for face, end in zip(FACES, ends) if end.any()]


def _metal_mask(ct: Volume, labels: Volume) -> np.ndarray:
    """Voxels of ``ct`` at or above :data:`METAL_HU`; the CT must lie on the labels' grid."""
    differences = ct.grid_differences(labels)
    if differences:
        raise InputError(f"segmentation QC: the CT and the labels lie on different grids "
                         f"({'; '.join(differences)}); expected the labels on the CT's grid")
    return ct.array >= METAL_HU


def _near(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The bounding box of ``mask`` widened by :data:`METAL_MARGIN_MM` (spacing in (i, j, k)
    order, mm), as a mask; empty for an empty ``mask``."""
    near = np.zeros_like(mask, bool)
    if mask.any():
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        margin = np.ceil(METAL_MARGIN_MM / np.asarray(spacing)[::-1]).astype(int)
        near[tuple(slice(max(s.start - m, 0), s.stop + m) for s, m in zip(box, margin))] = True
    return near


def plausible_volume(name: str) -> tuple[float, float] | None:
    """Plausible volume range (cm3) of an object of :data:`PLAUSIBLE_VOLUME_CM3`, or of one side
    of it (``<name>_left`` / ``_right``: half the range); None for other objects."""
    if name in PLAUSIBLE_VOLUME_CM3:
        return PLAUSIBLE_VOLUME_CM3[name]
    base, _, side = name.rpartition("_")
    if side in ("left", "right") and base in PLAUSIBLE_VOLUME_CM3:
        lo, hi = PLAUSIBLE_VOLUME_CM3[base]
        return lo / 2, hi / 2
    return None


def volume_flag(volume_cm3: float, plausible: tuple[float, float] | None) -> tuple[str, str] | None:
    """``("volume_low" | "volume_high", message)`` for a volume (cm3) outside ``plausible``
    (min, max cm3), else None (also without a range)."""
    if plausible is None:
        return None
    lo, hi = plausible
    if volume_cm3 < lo:
        return "volume_low", f"volume {volume_cm3:.1f} cm3 below the plausible {lo:g}-{hi:g} cm3"
    if volume_cm3 > hi:
        return "volume_high", f"volume {volume_cm3:.1f} cm3 above the plausible {lo:g}-{hi:g} cm3"
    return None


def _topology(mask: np.ndarray, main: int = 1) -> tuple[int, int, int]:
    """(components, voxels of the ``main`` largest components, enclosed holes) of a 3D mask."""
    if not mask.any():
        return 0, 0, 0
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = np.pad(mask[box], 1)
    lab, n = ndimage.label(sub, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel())[1:]
    # background components (6-connectivity, dual of 26) not touching the padded border
    bg, n_bg = ndimage.label(~sub)
    outside = np.unique(np.concatenate([bg[0].ravel(), bg[-1].ravel(), bg[:, 0].ravel(),
                                        bg[:, -1].ravel(), bg[:, :, 0].ravel(), bg[:, :, -1].ravel()]))
    holes = n_bg - int(np.count_nonzero(outside))
    return int(n), int(np.sort(sizes)[-main:].sum()), holes
