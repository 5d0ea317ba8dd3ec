"""Anatomy templates: real label maps turned into the label values of the synthetic cohort.

A *template folder* holds a label map (``label.*`` or ``labels.*``: MetaImage, NIfTI, NRRD),
optionally a body mask (``mask.*``), and a ``template.json`` (in the folder or its parent)::

    {"format": "mskdex-template", "version": 1,
     "object_map": "pelvic_reference",     # built-in object map name or a JSON path
     "spine_labels": [4],                  # optional: label values of the spine (bone)
     "other_labels": "muscle",             # other non-zero labels: "muscle" or "soft_tissue"
     "label_file": "label.mhd", "mask_file": "mask.mhd"}   # optional file names

Objects of the template's map are matched by name to the built-in map ``synthetic``; objects
with ``sides`` keep them, the others (e.g. the pelvic reference labels, where left and right
are merged) are split at the mid-sagittal plane (the LPS x of the pelvis + sacrum centroid;
+x is the patient's left). Without a body mask the body is the labelled region closed and
dilated by 10 mm. The bundled templates (``MSKdeXTraining/data/templates``) are four manually
labelled pelvic CTs, direction identity, 1 x 1 x 3 mm: their voxel axes run to the patient's
left, posterior and superior (checked on the anatomy: rectus abdominis at low j, erector
spinae at high j, femurs at low k, spine at high k), i.e. their world frame is LPS as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..fileio import read_format_json
from ..imaging.geometry import apply, fit_sphere
from ..imaging.volume import Volume, read_labels
from ..objects import ObjectMap, load_object_map

TEMPLATE_FORMAT = "mskdex-template"
#: Internal label of body voxels that no structure claims (fat / other soft tissue).
BODY = 255
#: Cohort label values of tissues outside the object map (see docs/formats.md).
OTHER_MUSCLE = 30
SPINE = 31
LABEL_SUFFIXES = (".mhd", ".mha", ".nii.gz", ".nii", ".nrrd")


@dataclass(frozen=True)
class Template:
    """An anatomy template on its native grid, cropped to the body.

    ``labels.array`` holds cohort label values (``synthetic`` map, 30 other muscle, 31 spine),
    :data:`BODY` for unlabelled body voxels and 0 outside the body. ``hip_centres`` are the
    femoral head centres (LPS mm) per side, ``mid_x`` the mid-sagittal plane (LPS x, mm),
    ``region_z`` the superior-inferior extent (LPS z, mm) of the :func:`region_labels`.
    """

    name: str
    labels: Volume
    hip_centres: dict[str, np.ndarray]
    mid_x: float
    region_z: tuple[float, float]

    @property
    def centre(self) -> np.ndarray:
        """Midpoint of the two hip centres (LPS mm): the patient's reference point."""
        return (self.hip_centres["left"] + self.hip_centres["right"]) / 2


def bundled_templates_dir() -> Path:
    """Folder of the bundled pelvic templates (package data)."""
    return Path(str(resources.files("MSKdeXTraining").joinpath("data/templates")))


def find_templates(paths: list[str | Path] | None = None) -> list[Path]:
    """Template folders under ``paths`` (each a template folder or a folder of them), sorted.

    ``None`` gives the bundled templates. Raises :class:`InputError` naming a path that
    holds no template.
    """
    roots = [bundled_templates_dir()] if not paths else [Path(p) for p in paths]
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            raise InputError(f"{root}: template folder not found")
        if _holds_labels(root):
            found.append(root)
            continue
        subs = sorted(d for d in root.iterdir() if d.is_dir() and _holds_labels(d))
        if not subs:
            raise InputError(f"{root}: holds no label map (label.* / labels.* with suffix "
                             f"{LABEL_SUFFIXES}, or template.json's label_file) nor sub-folders with one")
        found += subs
    return found


def template_settings(folder: Path) -> tuple[dict, Path]:
    """The ``template.json`` of ``folder`` (or of its parent) and its path; an
    :class:`InputError` when there is none."""
    path = _settings_path(folder)
    if path is not None:
        settings = read_format_json(path, TEMPLATE_FORMAT, 1)
        for field in ("label_file", "mask_file"):  # file names, relative to the template's folder
            value = settings.get(field)
            if value is not None and not (isinstance(value, str) and value):
                raise InputError(f"{path}: field {field!r} must name a file in the template's folder, got {value!r}")
        return settings, path
    raise InputError(f"{folder}: no template.json in the folder or its parent; it names the "
                     "object map of the labels (see docs/cohort.md, 'Your own templates')")


@lru_cache(maxsize=16)
def load_template(folder: str | Path) -> Template:
    """Read a template folder (cached per process) and convert it to cohort label values."""
    folder = Path(folder)
    settings, settings_path = template_settings(folder)
    source = str(settings_path)
    name = settings.get("object_map", "pelvic_reference")
    if not isinstance(name, str) or not name:
        raise InputError(f"{source}: field 'object_map' must name a built-in object map or a JSON file, got {name!r}")
    try:  # a path is relative to the template.json
        objects = load_object_map(settings_path.parent / name if name.endswith(".json") else name)
    except InputError as e:
        raise InputError(f"{source}: field 'object_map': {e}") from None
    label_path = _label_file(folder, settings)
    if label_path is None:
        raise InputError(f"{folder}: no label map found (expected label.* or labels.*)")
    raw = read_labels(label_path)
    other = settings.get("other_labels", "muscle")
    if other not in ("muscle", "soft_tissue"):
        raise InputError(f"{source}: field 'other_labels' must be 'muscle' or 'soft_tissue', got {other!r}")
    spine = settings.get("spine_labels", [])
    if not isinstance(spine, list) or not all(isinstance(v, int) and v > 0 for v in spine):
        raise InputError(f"{source}: field 'spine_labels' must be a list of positive integers, got {spine!r}")
    body = _body_mask(folder, settings, raw)
    labels = convert_labels(raw, objects, tuple(spine), other, body, str(label_path))
    labels = _crop(labels, labels.array > 0)
    mid_x = mid_sagittal_x(labels)
    hips = {side: hip_centre(labels, value, str(label_path))
            for side, value in (("left", FEMUR["left"]), ("right", FEMUR["right"]))}
    region = np.isin(labels.array, region_labels())
    if not region.any():
        raise InputError(f"{label_path}: template has none of the pelvis, sacrum or muscle labels")
    return Template(folder.name, labels, hips, mid_x, z_extent(labels, region))


#: Cohort label values of the femurs per side (built-in map ``synthetic``).
FEMUR = {"left": 3, "right": 4}
PELVIS_LABELS = (1, 2)  # pelvis, sacrum


def synthetic_map() -> ObjectMap:
    """The ``synthetic`` object map: the label values the cohort writes (mappings/synthetic.json)."""
    return load_object_map("synthetic")


def region_labels() -> tuple[int, ...]:
    """Cohort label values of the clinically relevant region of a hip CT: pelvis, sacrum and
    the muscles, the ``synthetic`` map's objects not ``cut_at_region`` (a synthetic CT is cropped
    to their extent, as assemble crops a CT by its map)."""
    return tuple(sorted(synthetic_map().region_labels()))


def z_extent(vol: Volume, mask: np.ndarray) -> tuple[float, float]:
    """LPS z range (mm) covered by the ``mask`` voxels (their index bounding box, voxel edges)."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0) - 0.5, idx.max(0) + 0.5
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
    z = _index_to_world(vol, corners)[:, 2]
    return float(z.min()), float(z.max())


def convert_labels(raw: Volume, objects: ObjectMap, spine_labels: tuple[int, ...], other: str,
                   body: np.ndarray, source: str) -> Volume:
    """Template label values -> cohort label values (and :data:`BODY` for unlabelled body)."""
    target = synthetic_map()
    a = raw.array
    top = int(a.max())
    table = np.full(top + 1, OTHER_MUSCLE if other == "muscle" else BODY, np.uint8)
    table[0] = 0
    for v in spine_labels:
        if v <= top:
            table[v] = SPINE
    split: list[tuple[tuple[int, ...], int, int]] = []  # (template values, left, right)
    found = False
    for o in objects.objects:
        vals = [v for v in o.labels if v <= top]
        if o.name not in target.names:
            table[vals] = OTHER_MUSCLE if o.is_muscle else SPINE
            continue
        t = target[o.name]
        found = True
        if not t.sides:
            table[vals] = t.labels[0]
        elif o.sides and set(o.sides) == set(t.sides):
            for side, sv in o.sides.items():
                table[[v for v in sv if v <= top]] = t.sides[side][0]
        else:
            split.append((tuple(vals), t.sides["left"][0], t.sides["right"][0]))
    if not found:
        raise InputError(f"{source}: {objects.title} names none of the cohort "
                         f"objects {target.names}")
    out = table[a]
    if split:
        # mid-sagittal plane from the pelvis + sacrum (already converted), else the body
        ref = (out == PELVIS_LABELS[0]) | (out == PELVIS_LABELS[1])
        mid = _centroid_x(raw, ref if ref.any() else body)
        is_left = _world_coordinate(raw, 0) > mid
        for vals, left, right in split:
            lut = np.zeros(top + 1, bool)
            lut[list(vals)] = True
            sel = lut[a]
            out[sel & is_left] = left
            out[sel & ~is_left] = right
    out[(out == 0) & body] = BODY
    return raw.with_array(out)


def mid_sagittal_x(labels: Volume) -> float:
    """LPS x (mm) of the pelvis + sacrum centroid: the mid-sagittal plane."""
    a = labels.array
    ref = (a == PELVIS_LABELS[0]) | (a == PELVIS_LABELS[1])
    return _centroid_x(labels, ref if ref.any() else a > 0)


def hip_centre(labels: Volume, femur_value: int, source: str) -> np.ndarray:
    """Femoral head centre (LPS mm): sphere fitted to the femur surface facing the acetabulum.

    Uses femur voxels within 6 mm of the pelvis in the top 80 mm of the femur; falls back to
    the deepest femur point (largest inscribed ball) of that region when the fit is not a
    plausible head (radius outside 12-40 mm).
    """
    femur = labels.array == femur_value
    if not femur.any():
        raise InputError(f"{source}: template has no femur with cohort label {femur_value}; "
                         "cannot place the hip centre")
    zyx = np.argwhere(femur)
    z = _index_to_world(labels, zyx)[:, 2]
    top = z.max()
    near_top = zyx[z > top - 80.0]
    pad = np.ceil(20.0 / labels.spacing[::-1]).astype(int)
    lo = np.maximum(near_top.min(0) - pad, 0)
    hi = np.minimum(near_top.max(0) + pad + 1, labels.array.shape)
    sub = labels.array[tuple(slice(a, b) for a, b in zip(lo, hi))]
    head = (sub == femur_value) & (_world_coordinate(labels, 2, lo, sub.shape) > top - 80.0)
    pelvis = (sub == PELVIS_LABELS[0]) | (sub == PELVIS_LABELS[1])
    if pelvis.any():
        dist = ndimage.distance_transform_edt(~pelvis, sampling=labels.spacing[::-1])
        contact = head & (dist <= 6.0)
        if contact.sum() >= 20:
            sphere = fit_sphere(_index_to_world(labels, np.argwhere(contact) + lo))
            if sphere is not None and 12.0 <= sphere[1] <= 40.0:
                return sphere[0]
    inside = ndimage.distance_transform_edt(head, sampling=labels.spacing[::-1])
    best = np.unravel_index(int(np.argmax(inside)), inside.shape)
    return _index_to_world(labels, np.array([best]) + lo)[0]


def _index_to_world(vol: Volume, kji: np.ndarray) -> np.ndarray:
    return apply(vol.affine, np.asarray(kji, float)[:, ::-1])


def _world_coordinate(vol: Volume, axis: int, lo=(0, 0, 0), shape=None) -> np.ndarray:
    """World coordinate ``axis`` (0 x, 1 y, 2 z; mm) of the voxels of the box starting at
    index ``lo`` (k, j, i) with ``shape`` (default: the whole volume), broadcastable."""
    shape = vol.array.shape if shape is None else shape
    row = vol.affine[axis]
    k, j, i = (np.arange(l, l + n, dtype=float) for l, n in zip(lo, shape))
    out = np.full((1, 1, 1), row[3])
    for coef, values in ((row[2], k[:, None, None]), (row[1], j[None, :, None]), (row[0], i[None, None, :])):
        if coef != 0.0:
            out = out + coef * values
    return out


def _centroid_x(vol: Volume, mask: np.ndarray) -> float:
    """Mean LPS x (mm) of the ``mask`` voxels (from per-axis counts: no voxel list)."""
    row = vol.affine[0]
    n = mask.sum()
    mean_index = [(mask.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(mask.shape[ax])).sum() / n
                  for ax in (2, 1, 0)]  # i, j, k
    return float(row[:3] @ np.array(mean_index) + row[3])


def _holds_labels(folder: Path) -> bool:
    """Whether ``folder`` holds a label map: the ``label_file`` its template.json names, else label.* / labels.*."""
    settings = template_settings(folder)[0] if _settings_path(folder) is not None else {}
    return _label_file(folder, settings) is not None


def _settings_path(folder: Path) -> Path | None:
    """The ``template.json`` of ``folder``, else of its parent; None when neither has one."""
    return next((p for p in (folder / "template.json", folder.parent / "template.json") if p.is_file()), None)


def _label_file(folder: Path, settings: dict) -> Path | None:
    if settings.get("label_file"):
        p = folder / settings["label_file"]
        return p if p.is_file() else None
    for stem in ("label", "labels"):
        for suffix in LABEL_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _body_mask(folder: Path, settings: dict, raw: Volume) -> np.ndarray:
    name = settings.get("mask_file")
    candidates = [folder / name] if name else [folder / f"mask{s}" for s in LABEL_SUFFIXES]
    for path in candidates:
        if path.is_file():
            mask = read_labels(path)
            if mask.grid_differences(raw):
                raise InputError(f"{path}: body mask grid differs from the label map: "
                                 + "; ".join(mask.grid_differences(raw)))
            return mask.array > 0
    if name:
        raise InputError(f"{folder / name}: body mask named by 'mask_file' not found")
    labelled = raw.array > 0
    radius = np.maximum(np.round(10.0 / raw.spacing[::-1]).astype(int), 1)
    structure = np.ones(tuple(2 * r + 1 for r in radius), bool)
    body = ndimage.binary_closing(labelled, structure)
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    return ndimage.binary_dilation(body, structure)


def _crop(vol: Volume, mask: np.ndarray) -> Volume:
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    origin = vol.affine[:3, :3] @ lo[::-1].astype(float) + vol.origin
    return Volume(np.ascontiguousarray(vol.array[box]), vol.spacing, origin, vol.direction)
