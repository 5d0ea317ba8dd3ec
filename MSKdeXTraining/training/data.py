"""Reader of the prepared dataset v2 (``mskdex-dataset``, see docs/formats.md).

Each case file ``cases/<id>.safetensors`` holds ``xray`` (H, W) in [0, 1], ``drr``
(3, N, H, W) and ``aligned`` (3, Nb, H, W) in physical units (WVDRR 1, VDRR cm, MDRR g/cm2)
on the case's matched detector (its manifest entry's ``geometry``), and ``volume_cm3`` /
``mass_g`` (N,). The loader re-expresses the per-area DRRs per pixel of the dataset
geometry (:func:`~MSKdeXTraining.imaging.projector.per_pixel_area`), so that for every case
``sum x dataset pixel area`` is the volume/mass, and resamples the images to the model's grid
by area averaging (mean-preserving: the same holds on the model grid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info

from ..drr_types import DRR_TYPES
from ..errors import InputError
from ..fileio import read_format_json
from ..imaging.geometry import Geometry
from ..imaging.projector import per_pixel_area

FORMAT = "mskdex-dataset"
VERSION = 2
_REQUIRED = ("geometry", "objects", "kinds", "aligned_bones", "drr_types", "cases")


def read_manifest(root: str | Path) -> dict:
    """Read and validate ``root/manifest.json``; raises InputError naming the field."""
    path = Path(root) / "manifest.json"
    m = read_format_json(path, FORMAT, VERSION, _REQUIRED, InputError,
                         f"{root} is not a prepared dataset (no manifest.json); run `mskdex prepare`")
    if list(m["drr_types"]) != list(DRR_TYPES):
        raise InputError(f"{path}: field 'drr_types' must be {list(DRR_TYPES)}, got {m['drr_types']}")
    missing = [b for b in m["aligned_bones"] if b not in m["objects"]]
    if missing:
        raise InputError(f"{path}: aligned_bones {missing} are not in 'objects' {m['objects']}")
    for k, case in enumerate(m["cases"]):
        for key in ("id", "patient", "file", "status"):
            if key not in case:
                raise InputError(f"{path}: cases[{k}] has no field {key!r}")
        if case["status"] == "ok" and "geometry" not in case:
            raise InputError(f"{path}: cases[{k}] ({case['id']}) has no field 'geometry'")
        if case["status"] == "ok" and not isinstance(case["file"], str):
            raise InputError(f"{path}: cases[{k}] ({case['id']}) field 'file' is {case['file']!r}; expected the "
                             "path of its case file (an excluded case may have none)")
    return m


def ok_ids(manifest: dict) -> list[str]:
    """Ids of the cases usable for training (status "ok"), in manifest order."""
    return [c["id"] for c in manifest["cases"] if c["status"] == "ok"]


def patient_of(manifest: dict) -> dict[str, str]:
    """Each case id's patient (as text), from a dataset manifest."""
    return {c["id"]: str(c["patient"]) for c in manifest["cases"]}


def split_folds(manifest: dict, k: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """K-fold cross-validation split by patient: ``[(train ids, test ids)] * k``.

    Patients are shuffled with ``seed`` and dealt round-robin into folds, so all cases of a
    patient fall into the same fold. Only cases with status "ok" are used.
    """
    ids = ok_ids(manifest)
    patient = patient_of(manifest)
    patients = sorted({patient[i] for i in ids})
    if len(patients) < 2:
        raise InputError(f"the dataset has {len(patients)} patient(s) with cases prepared ok; a split by "
                         "patient needs at least 2 (its manifest.json gives the reason of each case excluded)")
    if k < 2 or k > len(patients):
        raise InputError(f"number of folds must be in 2..{len(patients)} (patients), got {k}")
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[p]: n % k for n, p in enumerate(order)}
    return [([i for i in ids if fold_of[patient[i]] != f], [i for i in ids if fold_of[patient[i]] == f])
            for f in range(k)]


def mirrored_order(names: list[str]) -> list[int]:
    """Channel order of ``names`` seen in a mirror: ``<name>_left`` and ``<name>_right`` trade
    places (where both exist); every other object stays."""
    def partner(name: str) -> str:
        for side, other in (("_left", "_right"), ("_right", "_left")):
            if name.endswith(side):
                return name[:-len(side)] + other
        return name

    index = {n: i for i, n in enumerate(names)}
    return [index.get(partner(n), i) for i, n in enumerate(names)]


def aligned_ok(case: dict, bones: list[str]) -> torch.Tensor:
    """(N_b,) bool: which aligned-bone DRRs of a manifest case come from a successful
    registration. A bone is its rigid bodies (the femur: both femurs); one the case's
    ``registration`` records as failed (kept by ``prepare --include-failed``) is not used by the
    bone loss. Without registration records (e.g. the toy dataset) every bone counts."""
    done = case.get("registration") or {}
    bodies = {"femur": ("femur_left", "femur_right")}  # registration.rigid_bodies' names
    return torch.tensor([not done or all(done.get(b, {}).get("ok", False) for b in bodies.get(bone, (bone,)))
                         for bone in bones])


def resize(images: torch.Tensor, size: tuple[int, int], zoom: float = 1.0) -> torch.Tensor:
    """Resample ``(..., H, W)`` (values per unit area) to ``size`` over the same field of view,
    magnified ``zoom`` times about its centre: each output pixel is the area-weighted mean of
    the input it covers, so the image sum times the pixel area (a volume, a mass) is kept
    exactly (times ``zoom`` squared where zoomed; less what a zoom above 1 pushes out of the
    field, and zero where one below 1 leaves the field empty)."""
    shape = tuple(images.shape[-2:])
    if shape == tuple(size) and zoom == 1.0:
        return images
    if images.numel() == 0:  # e.g. the aligned bones of a dataset without them
        return images.new_zeros(*images.shape[:-2], *size)
    if zoom == 1.0 and all(n % m == 0 for n, m in zip(shape, size)):  # whole blocks: the same means, faster
        x = F.avg_pool2d(images.reshape(1, -1, *shape), (shape[0] // size[0], shape[1] // size[1]))
        return x.reshape(*images.shape[:-2], *size)
    rows, cols = (_overlap(n, m, zoom).to(images.dtype) for n, m in zip(shape, size))
    return rows @ images @ cols.T


def _overlap(n_in: int, n_out: int, zoom: float = 1.0) -> torch.Tensor:
    """(n_out, n_in): the share of output pixel ``o``'s preimage covered by input pixel ``i``
    when both grids tile the same interval and the output is the input magnified ``zoom`` times
    about the centre (rows sum to 1 where the preimage lies inside the input)."""
    a = np.linspace(0.0, 1.0, n_in + 1)
    b = 0.5 + (np.linspace(0.0, 1.0, n_out + 1) - 0.5) / zoom  # output edges on the input
    overlap = np.minimum(b[1:, None], a[None, 1:]) - np.maximum(b[:-1, None], a[None, :-1])
    return torch.from_numpy(np.clip(overlap, 0.0, None) * n_out * zoom)


#: Bytes of cases on the model grid a :class:`PreparedDataset` keeps in memory by default: a
#: case is read and resampled once, not twice per epoch (the demo's 94 cases take 50 MB).
CACHE_BYTES = 2 ** 30


class PreparedDataset(Dataset):
    """Cases of a prepared dataset as tensors on the model grid.

    ``ids``: the cases to use (default: all with status "ok"); ``size``: (rows, cols) of the
    model grid (default: the dataset's). Item ``i`` is a dict with ``xray`` (1, H, W),
    ``drr`` (3, N, H, W), ``aligned`` (3, Nb, H, W), ``volume_cm3``/``mass_g`` (N,) and, for
    the unpaired losses, ``drr_unpaired``: the DRRs of case ``pairing[i]`` (see
    :meth:`set_epoch`). With ``flip_seed`` set, whole cases are flipped left-right at random
    (per epoch and case; image sums and the xray-aligned pairing are unchanged; the channels
    of objects named ``<name>_left`` / ``<name>_right`` trade places, as their anatomy does).
    With ``zoom_seed`` set, whole cases are zoomed about the centre by ``(1 + max_zoom)^u``,
    ``u ~ U(-1, 1)`` per epoch and case (:meth:`zoom`): the patient as if ``s`` times as large
    in every direction, so the radiograph and DRRs are magnified ``s`` times, the DRRs' values
    (thicknesses) and the targets ``s`` and ``s^3`` times; the radiograph's grey values are
    kept (a processed film's window hides the thicker path). The unpaired DRRs are flipped
    and zoomed as their own case, by draws of their own.

    Up to ``cache_bytes`` of cases are kept in memory once read (in the main process only,
    not in DataLoader workers); items share those tensors, so never change them in place.
    """

    def __init__(self, root: str | Path, ids: list[str] | None = None,
                 size: tuple[int, int] | None = None, flip_seed: int | None = None,
                 cache_bytes: int = CACHE_BYTES, zoom_seed: int | None = None, max_zoom: float = 0.0) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        usable = ok_ids(self.manifest)
        self.ids = list(usable if ids is None else ids)
        bad = [i for i in self.ids if i not in usable]
        if bad:
            raise InputError(f"{self.root / 'manifest.json'}: cases {bad} are missing or not 'ok'")
        if not self.ids:
            raise InputError(f"{self.root}: no usable cases (status 'ok')")
        self.files = {c["id"]: self.root / c["file"] for c in self.manifest["cases"] if c["status"] == "ok"}
        manifest = self.root / "manifest.json"
        self.case_geometry = {c["id"]: Geometry.from_json(c["geometry"], f"{manifest}: case {c['id']} geometry")
                              for c in self.manifest["cases"] if c["status"] == "ok"}
        self.objects = list(self.manifest["objects"])
        self.kinds = list(self.manifest["kinds"])
        self.bone_index = [self.objects.index(b) for b in self.manifest["aligned_bones"]]
        self.mirrored = mirrored_order(self.objects)
        self.mirrored_bones = mirrored_order(list(self.manifest["aligned_bones"]))
        self.aligned_ok = {c["id"]: aligned_ok(c, self.manifest["aligned_bones"])
                           for c in self.manifest["cases"]}
        self.dataset_geometry = Geometry.from_json(self.manifest["geometry"], f"{manifest}: geometry")
        self.size = tuple(size) if size else self.dataset_geometry.shape
        self.geometry = self.dataset_geometry.resized(*self.size)
        self.flip_seed = flip_seed
        self.zoom_seed, self.max_zoom = zoom_seed, max_zoom
        self.epoch = 0
        self.pairing = np.arange(len(self.ids))
        self.cache_bytes = cache_bytes
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Draw the unpaired DRR partner of every case for ``epoch`` (a seeded permutation)."""
        self.epoch = epoch
        self.pairing = np.random.default_rng([seed, epoch, 1]).permutation(len(self.ids))

    def load(self, index: int) -> dict[str, torch.Tensor]:
        """Case ``index`` on the model grid, without pairing or augmentation (see the class
        docs on the cache)."""
        if index in self._cache:
            return dict(self._cache[index])
        item = self._read(index)
        size = sum(t.nbytes for t in item.values())
        if get_worker_info() is None and self._cached + size <= self.cache_bytes:
            self._cache[index] = item
            self._cached += size
            return dict(item)
        return item

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        from ..modelio import read_safetensors
        case_id = self.ids[index]
        path = self.files[case_id]
        if not path.is_file():
            raise InputError(f"{path}: case file of {case_id!r} listed in the manifest is missing")
        t = read_safetensors(path)
        n, nb = len(self.objects), len(self.bone_index)
        rows, cols = self.dataset_geometry.shape
        expect = {"xray": (rows, cols), "drr": (3, n, rows, cols), "aligned": (3, nb, rows, cols),
                  "volume_cm3": (n,), "mass_g": (n,)}
        for key, shape in expect.items():
            if key not in t:
                raise InputError(f"{path}: missing tensor {key!r}")
            if tuple(t[key].shape) != shape:
                raise InputError(f"{path}: tensor {key!r} has shape {tuple(t[key].shape)}, expected {shape}")
            if not bool(torch.isfinite(t[key]).all()):
                raise InputError(f"{path}: tensor {key!r} holds NaN or infinite values, expected finite "
                                 "numbers (prepare the case again)")
        areas = (self.case_geometry[case_id].pixel_area_cm2, self.dataset_geometry.pixel_area_cm2)
        return {"xray": resize(t["xray"].float()[None], self.size),
                "drr": resize(per_pixel_area(t["drr"].float(), *areas), self.size),
                "aligned": resize(per_pixel_area(t["aligned"].float(), *areas), self.size),
                "volume_cm3": t["volume_cm3"].double(), "mass_g": t["mass_g"].double(),
                "aligned_ok": self.aligned_ok[case_id]}

    def _flip(self, index: int, stream: int) -> bool:
        if self.flip_seed is None:
            return False
        return bool(np.random.default_rng([self.flip_seed, self.epoch, index, stream]).random() < 0.5)

    def zoom(self, index: int, unpaired: bool = False) -> float:
        """The zoom of case ``index`` this epoch (1 without ``zoom_seed``): as the item itself or,
        with ``unpaired``, as another item's unpaired DRRs (a draw of its own)."""
        if self.zoom_seed is None or self.max_zoom == 0.0:
            return 1.0
        u = np.random.default_rng([self.zoom_seed, self.epoch, index, 3 if unpaired else 2]).uniform(-1.0, 1.0)
        return float((1.0 + self.max_zoom) ** u)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.load(index)
        if (s := self.zoom(index)) != 1.0:
            item["xray"] = resize(item["xray"], self.size, s)
            for key in ("drr", "aligned"):
                item[key] = resize(item[key], self.size, s) * s
            for key in ("volume_cm3", "mass_g"):
                item[key] = item[key] * s ** 3
        if self._flip(index, 0):
            item["xray"] = item["xray"].flip(-1)
            item["drr"] = item["drr"].flip(-1)[:, self.mirrored]
            item["aligned"] = item["aligned"].flip(-1)[:, self.mirrored_bones]
            item["aligned_ok"] = item["aligned_ok"][self.mirrored_bones]
            for key in ("volume_cm3", "mass_g"):
                item[key] = item[key][self.mirrored]
        partner = int(self.pairing[index])
        drr_u = self.load(partner)["drr"]
        if (s := self.zoom(partner, unpaired=True)) != 1.0:
            drr_u = resize(drr_u, self.size, s) * s
        item["drr_unpaired"] = drr_u.flip(-1)[:, self.mirrored] if self._flip(partner, 1) else drr_u
        item["index"] = torch.tensor(index)
        return item
