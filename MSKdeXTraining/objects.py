"""The object catalogue: which bones and muscles are decomposed, and how label maps name them.

An *object map* (JSON, format ``mskdex-object-map`` version 1) maps the integer values of a
label map to objects::

    {"format": "mskdex-object-map", "version": 1, "name": "pelvic-reference",
     "unmapped_labels": "error",            # or "ignore": other non-zero labels are skipped
     "objects": [
        {"name": "femur", "kind": "bone", "labels": [2]},
        {"name": "gluteus_maximus", "kind": "muscle", "labels": [80, 81],
         "sides": {"left": [80], "right": [81]}},   # optional: per-side label values
        {"name": "femur", "kind": "bone", "labels": [2],
         "cut_at_region": true},                     # optional, default false: see below
        ...],
     "aliases": {"hip_left": 77}}                    # optional: other segment names -> label value

Label 0 is always background. Objects are listed in channel order; the DRR stack has one
channel per object in that order. ``sides`` lets the same map be expanded into per-side
objects (:meth:`ObjectMap.per_side`) and lets registration move each femur on its own.
``cut_at_region`` marks an object that runs on beyond the hip region (the femur's shaft;
TotalSegmentator's iliopsoas, up the lumbar spine): a CT is cropped to the other objects and cuts
it there, so its touching the scan's edge is expected (segmentation QC warns, never fails).
``aliases`` names label values otherwise than by their objects (e.g. a segmentation tool's own
class names), for segmentations whose segments are matched by name (the Slicer module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import InputError

FORMAT = "mskdex-object-map"
FORMAT_VERSION = 1

#: Largest label value (uint16, the label maps of NIfTI/NRRD segmentations and Slicer's): label
#: lookups are tables indexed by value.
MAX_LABEL = 65535

#: The paper's objects, in channel order: six muscles, then three bones.
DEFAULT_MUSCLES = (
    "gluteus_maximus", "gluteus_medius", "gluteus_minimus",
    "iliacus", "obturator_externus", "pectineus",
)
DEFAULT_BONES = ("pelvis", "femur", "sacrum")
DEFAULT_OBJECTS = DEFAULT_MUSCLES + DEFAULT_BONES
#: Bones whose DRRs are aligned with the radiograph by 2D/3D registration (paper Sec. 2.2).
ALIGNED_BONES = ("pelvis", "femur")
#: The rigid bodies registered to a radiograph, each on its own: the pelvis (with the sacrum) and
#: each femur (imaging.registration.rigid_bodies).
RIGID_BODIES = ("pelvis", "femur_left", "femur_right")
#: Short names used in tables and figures (paper Table 1).
DISPLAY_NAMES = {
    "gluteus_maximus": "Glu. max.", "gluteus_medius": "Glu. med.",
    "gluteus_minimus": "Glu. min.", "iliacus": "Ilia.", "obturator_externus": "Obt. ext.",
    "pectineus": "Pec.", "pelvis": "Pelv.", "femur": "Fem.", "sacrum": "Sac.",
}

Kind = Literal["muscle", "bone"]


class ObjectMapError(InputError):
    """An object map or a label map does not fit the expected format."""


@dataclass(frozen=True)
class ObjectSpec:
    """One decomposed object: a bone or a muscle and the label values that make it up."""

    name: str
    kind: Kind
    labels: tuple[int, ...]
    sides: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False, compare=True)
    cut_at_region: bool = False

    @property
    def is_muscle(self) -> bool:
        return self.kind == "muscle"


@dataclass(frozen=True)
class ObjectMap:
    """An ordered set of objects plus the policy for label values no object claims."""

    name: str
    objects: tuple[ObjectSpec, ...]
    unmapped_labels: Literal["error", "ignore"] = "error"
    # other segment names -> label value; not part of what the labels mean (to_json, ==)
    aliases: dict[str, int] = field(default_factory=dict, hash=False, compare=False)
    # the JSON file the map was read from ("" for a built-in map), named in errors
    origin: str = field(default="", hash=False, compare=False)

    @property
    def title(self) -> str:
        """How errors name the map: ``object map 'name'``, with its file when it came from one."""
        return f"object map {self.name!r}" + (f" ({self.origin})" if self.origin else "")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objects)

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(o.kind for o in self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, name: str) -> ObjectSpec:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"object {name!r} is not in {self.title} (has {self.names})")

    def index(self, name: str) -> int:
        return self.names.index(name)

    def lookup_table(self, labels: np.ndarray, source: str = "label map") -> np.ndarray:
        """Table ``t`` with ``t[label] = object index`` (-1 for background and ignored labels).

        Raises :class:`ObjectMapError` naming ``source`` if ``labels`` holds negative values,
        or values no object claims while ``unmapped_labels`` is ``"error"``.
        """
        present = np.unique(labels)
        if present.size and present[0] < 0:
            raise ObjectMapError(f"{source}: label values must be >= 0, found {present[0]}")
        top = int(max(present.max(initial=0), max((max(o.labels) for o in self.objects), default=0)))
        table = np.full(top + 1, -1, dtype=np.int64)
        for i, o in enumerate(self.objects):
            table[list(o.labels)] = i
        unknown = [int(v) for v in present if v != 0 and table[v] < 0]
        if unknown and self.unmapped_labels == "error":
            raise ObjectMapError(
                f"{source}: label values {unknown} are not in {self.title}; "
                f"add them to an object or set \"unmapped_labels\": \"ignore\" in the map")
        return table

    def region_labels(self) -> list[int]:
        """Label values of the objects inside the hip region: those not marked ``cut_at_region``."""
        return [v for o in self.objects if not o.cut_at_region for v in o.labels]

    def per_side(self) -> ObjectMap:
        """Expand objects that declare ``sides`` into ``<name>_<side>`` objects."""
        out: list[ObjectSpec] = []
        for o in self.objects:
            if o.sides:
                out += [ObjectSpec(f"{o.name}_{s}", o.kind, v, cut_at_region=o.cut_at_region)
                        for s, v in o.sides.items()]
            else:
                out.append(o)
        return ObjectMap(f"{self.name}-per-side", tuple(out), self.unmapped_labels, self.aliases, self.origin)

    def select(self, names: tuple[str, ...] | list[str]) -> ObjectMap:
        """The sub-map with the named objects, in the given order (and the aliases of their labels)."""
        objects = tuple(self[n] for n in names)
        kept = {v for o in objects for v in o.labels}
        return ObjectMap(self.name, objects, self.unmapped_labels,
                         {a: v for a, v in self.aliases.items() if v in kept}, self.origin)

    def to_json(self) -> dict:
        """The JSON form of what the label values mean, as cohorts, datasets and their hashes
        record it: without ``aliases``, which only name segments and change no label's meaning."""
        objs = []
        for o in self.objects:
            d = {"name": o.name, "kind": o.kind, "labels": list(o.labels)}
            if o.sides:
                d["sides"] = {k: list(v) for k, v in o.sides.items()}
            if o.cut_at_region:
                d["cut_at_region"] = True
            objs.append(d)
        return {"format": FORMAT, "version": FORMAT_VERSION, "name": self.name,
                "unmapped_labels": self.unmapped_labels, "objects": objs}

    @classmethod
    def from_json(cls, data: dict, source: str = "object map") -> ObjectMap:
        """Parse and validate the JSON form; errors name ``source`` and the offending field."""
        def fail(msg: str) -> ObjectMapError:
            return ObjectMapError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise fail(f"expected a JSON object with 'format' {FORMAT!r}, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise fail(f"field 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != FORMAT_VERSION:
            raise fail(f"field 'version' must be {FORMAT_VERSION}, got {data.get('version')!r}")
        policy = data.get("unmapped_labels", "error")
        if policy not in ("error", "ignore"):
            raise fail(f"field 'unmapped_labels' must be 'error' or 'ignore', got {policy!r}")
        raw = data.get("objects")
        if not isinstance(raw, list) or not raw:
            raise fail("field 'objects' must be a non-empty list")
        objects, seen_names, seen_labels = [], set(), {}
        for k, o in enumerate(raw):
            where = f"objects[{k}]"
            if not isinstance(o, dict):
                raise fail(f"{where} must be an object with 'name', 'kind' and 'labels', got {o!r}")
            name = o.get("name")
            if not isinstance(name, str) or not name:
                raise fail(f"{where}.name must be a non-empty string, got {name!r}")
            if name in seen_names:
                raise fail(f"{where}.name {name!r} appears twice")
            if o.get("kind") not in ("muscle", "bone"):
                raise fail(f"{where}.kind must be 'muscle' or 'bone', got {o.get('kind')!r}")
            labels = o.get("labels")
            if not isinstance(labels, list) or not labels or not all(map(_label_value, labels)):
                raise fail(f"{where}.labels must be a non-empty list of integers 1-{MAX_LABEL}, got {labels!r}")
            for v in labels:
                if v in seen_labels:
                    raise fail(f"{where}.labels: value {v} already belongs to {seen_labels[v]!r}")
                seen_labels[v] = name
            raw_sides = o.get("sides") or {}
            if not isinstance(raw_sides, dict) or not all(isinstance(v, list) and v and all(map(_label_value, v))
                                                          for v in raw_sides.values()):
                raise fail(f"{where}.sides must map each side to a non-empty list of its label values, "
                           f"got {raw_sides!r}")
            sides = {s: tuple(v) for s, v in raw_sides.items()}
            if sides and set(sides) != {"left", "right"}:  # the patient's: per-side names and QC's check use them
                raise fail(f"{where}.sides must name the patient's 'left' and 'right' sides, got {sorted(sides)}")
            if sides and sorted(x for v in sides.values() for x in v) != sorted(labels):
                raise fail(f"{where}.sides must partition {where}.labels {labels}, got {o['sides']}")
            cut = o.get("cut_at_region", False)
            if not isinstance(cut, bool):
                raise fail(f"{where}.cut_at_region must be true or false, got {cut!r}")
            seen_names.add(name)
            objects.append(ObjectSpec(name, o["kind"], tuple(labels), sides, cut))
        aliases = data.get("aliases", {})
        if not isinstance(aliases, dict):
            raise fail(f"field 'aliases' must map segment names to label values, got {aliases!r}")
        for alias, value in aliases.items():
            if not alias or any(alias == n or alias.startswith(f"{n}_") for n in seen_names):
                raise fail(f"aliases: {alias!r} must be a non-empty name that is neither an object's "
                           "nor begins with one and '_' (the map's own segment names)")
            if not _label_value(value) or value not in seen_labels:
                raise fail(f"aliases[{alias!r}] must be a label value of an object, got {value!r}")
        return cls(str(data.get("name", source)), tuple(objects), policy, dict(aliases))


def builtin_maps() -> list[str]:
    """Names of the object maps shipped with MSKdeX (``mappings/<name>.json``)."""
    files = resources.files(__package__).joinpath("mappings").iterdir()
    return sorted(Path(f.name).stem for f in files if f.name.endswith(".json"))


def _label_value(v: object) -> bool:
    """Whether ``v`` is a label value of a map: an integer 1-:data:`MAX_LABEL` (JSON's true is not)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_LABEL


def load_object_map(name_or_path: str | Path) -> ObjectMap:
    """Load a shipped map by name (see :func:`builtin_maps`) or a JSON file by path."""
    path = Path(name_or_path)
    if path.suffix != ".json" and str(name_or_path) in builtin_maps():
        text = resources.files(__package__).joinpath(f"mappings/{name_or_path}.json").read_text(encoding="utf-8")
        source, origin = f"built-in object map {name_or_path!r}", ""
    elif path.is_file():
        source = origin = str(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as Windows editors write
        except UnicodeDecodeError as e:
            raise ObjectMapError(f"{source}: not a JSON object map (not UTF-8 text: {e})") from None
    else:
        raise ObjectMapError(
            f"object map {str(name_or_path)!r} is neither a file nor a built-in map {builtin_maps()}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ObjectMapError(f"{source}: not valid JSON ({e})") from None
    return replace(ObjectMap.from_json(data, source), origin=origin)
