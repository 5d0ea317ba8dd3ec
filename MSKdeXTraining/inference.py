"""Decompose a radiograph with a trained model: object-wise DRRs, volumes, masses, flags.

:class:`Decomposer` brings a :class:`~MSKdeXTraining.radiograph_io.Radiograph` onto its
*matched* detector (:meth:`~MSKdeXTraining.imaging.geometry.Geometry.matched`: the model's
pixels, centred, with the model's pixel size at the isocentre given the radiograph's
magnification; Gaussian anti-aliasing when shrinking), windows its intensities to [0, 1] as
the training radiographs were (:func:`~.radiograph_io.unit_range`), predicts the (3, N, H, W) DRR stack in
physical units per area of that detector and reads the per-object volume (cm3, VDRR sum x
pixel area) and lean muscle or bone mass (g, MDRR sum x pixel area) from it (a NaN or infinite
prediction, of a model whose training diverged, is an error, not a result). A radiograph of
unknown magnification is taken at the model's reference magnification, and the result says
so (volumes and masses depend strongly on the magnification's error, by no fixed factor).

Uncertainty: a calibrated interval (:data:`~MSKdeXTraining.calibration.LEVEL`, 90 %) from the
model's held-out errors when its run folder holds ``calibration.json`` (written by ``mskdex
train --fold``, ``mskdex evaluate`` and ``mskdex calibrate``; :mod:`MSKdeXTraining.calibration`),
and the standard deviation of the volumes/masses over ``tta`` test-time augmentations
(sub-pixel-to-few-pixel shifts and a small gain/gamma jitter, sampled from a seeded generator
and recorded): the model's sensitivity, not an error bar. The table's values are those of the
un-augmented prediction, so they equal the sums of the returned DRRs exactly.

Out-of-distribution flag (:class:`~MSKdeXTraining.ood.OODResult`): image-level checks plus
the model's scores against its training radiographs (:mod:`MSKdeXTraining.ood`).

Files in, result folders out, resumably: :mod:`MSKdeXTraining.batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .calibration import QUANTITIES, held_out_patients, interval, min_patients, read_calibration
from .decomposition_table import TABLE_FORMAT, TABLE_VERSION, write_table_csv
from .dicom_radiograph import HIP_ABOVE_TABLE_MM
from .drr_types import DRR_SHORT_UNITS, DRR_TYPES, volume_mass
from .environment import environment
from .errors import InputError
from .fileio import write_atomic, write_json
from .imaging.geometry import Geometry, resample_image
from .imaging.projector import per_pixel_area
from .imaging.volume import detector_image
from .ood import OODResult, ood_verdict
from .progress import Progress, part, silent
from .radiograph_io import SCALE_EFFECT, Radiograph
from .training.data import resize

#: A film spanning more than this times the model's field of view (along either axis, at the
#: matched magnification) gets a note to check its pixel spacing: on the demo model, the cohort's
#: films span 0.99x; with a spacing 1.3x too large the muscles' mass came out +50-76 % unflagged,
#: and the layout check flagged it from 1.7x.
LARGE_EXTENT = 1.5

#: Most test-time augmentations per radiograph (Slicer's TTA field has the same range): each
#: holds the model's whole output in memory until the spread is taken.
MAX_TTA = 32
#: Augmentations the model runs at once.
BATCH_SIZE = 4


def check_tta(tta: int, option: str = "tta") -> None:
    """InputError naming ``option`` unless ``tta`` augmentations lie in 1..:data:`MAX_TTA`."""
    if not 1 <= tta <= MAX_TTA:
        raise InputError(f"{option} must be in 1..{MAX_TTA} (1 = no augmentation), got {tta}")


def check_seed(seed: int, option: str = "seed") -> None:
    """InputError naming ``option`` unless the augmentations' ``seed`` is >= 0."""
    if seed < 0:
        raise InputError(f"{option} must be >= 0, got {seed}")


@dataclass
class Augmentation:
    """One test-time augmentation: shift (rows, cols, pixels), gain and gamma of [0, 1] input."""

    shift: tuple[float, float] = (0.0, 0.0)
    gain: float = 1.0
    gamma: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = np.clip(x, 0.0, 1.0) ** self.gamma * self.gain
        if self.shift != (0.0, 0.0):
            y = ndimage.shift(y, self.shift, order=1, mode="constant", cval=0.0)
        return np.clip(y, 0.0, 1.0).astype(np.float32)


def sample_augmentations(n: int, seed: int = 0, max_shift_px: float = 4.0,
                         jitter: float = 0.05) -> list[Augmentation]:
    """``n`` augmentations: the identity first, then random shifts/gain/gamma (seeded)."""
    rng = np.random.default_rng(seed)
    out = [Augmentation()]
    for _ in range(max(0, n - 1)):
        out.append(Augmentation(tuple(float(v) for v in rng.uniform(-max_shift_px, max_shift_px, 2)),
                                float(1.0 + rng.uniform(-jitter, jitter)),
                                float(np.exp(rng.uniform(-jitter, jitter)))))
    return out


def output_files(target: Path, drr_types: Sequence[str] = DRR_TYPES) -> dict[str, Path]:
    """The files :meth:`Decomposition.write` writes into ``target``: ``csv`` and ``json`` (the
    table; the JSON written last) and, per DRR type, its stack."""
    return {"csv": target / "decomposition.csv", "json": target / "decomposition.json",
            **{t: target / f"decomposition_{t}.nii.gz" for t in drr_types}}


@dataclass
class Decomposition:
    """The result for one radiograph (see module docstring): ``table`` has one dict per object
    with the columns of :data:`~.decomposition_table.TABLE_COLUMNS` (volume cm3, lean muscle or
    bone mass g, their interval ends and TTA SDs), ``ood`` the flag and its reasons and notes,
    ``drr`` the DRR stack whose sums give the table."""

    drr: np.ndarray                  # (3, N, H, W) float32, WVDRR 1, VDRR cm, MDRR g/cm2
    xray: np.ndarray                 # (H, W) model input in [0, 1] on ``geometry``
    geometry: Geometry
    names: list[str]
    kinds: list[str]
    drr_types: list[str]
    table: list[dict]
    ood: OODResult
    source: dict
    augmentations: list[Augmentation]
    model: dict = field(default_factory=dict)  # the model's origin (run folder, SHA-256s, calibration)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write :func:`output_files`: the table as CSV, one NIfTI stack per DRR type (image
        axes: detector columns x rows x objects; spacing column, row in mm) and, last, the JSON;
        each atomically, replacing files of those names (``mskdex decompose`` and
        :mod:`MSKdeXTraining.batch` refuse a folder holding another result first)."""
        paths = output_files(Path(out_dir), self.drr_types)
        write_table_csv(self.table, paths["csv"], self.ood.flag)
        for t, dtype in enumerate(self.drr_types):
            image = detector_image(self.drr[t], self.geometry)  # (N, H, W) -> x = column
            write_atomic(paths[dtype], lambda p, im=image: sitk.WriteImage(im, str(p), True))
        write_json(paths["json"], self.record({t: paths[t].name for t in self.drr_types}))
        return paths

    def record(self, drr_stacks: dict[str, str] | None = None) -> dict:
        """The ``decomposition.json`` record (docs/formats.md): table, OOD verdict and notes,
        geometry, source, model, augmentations, the names of the DRR stack files written
        beside it (``drr_stacks``, type -> file name; none when only the record is written) and
        the software and machine that computed it (:func:`~MSKdeXTraining.environment.environment`)."""
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION,
                "units": {"volume_cm3": "cm3", "mass_g": "g", "drr": DRR_SHORT_UNITS},
                "objects": self.table, "ood": asdict(self.ood), "geometry": self.geometry.to_json(),
                "source": self.source, "model": self.model,
                "augmentations": [asdict(a) for a in self.augmentations], "drr_stacks": drr_stacks or {},
                "environment": environment()}


def to_detector(array: np.ndarray, spacing: tuple[float, float],
                geometry: Geometry) -> tuple[np.ndarray, float]:
    """Resample a centred image with pixel ``spacing`` (row, col mm) onto ``geometry``'s
    detector (same centre, :func:`~MSKdeXTraining.imaging.geometry.resample_image`). Returns
    (image, coverage), coverage being the fraction of the detector that the image covers."""
    source = Geometry(rows=array.shape[0], cols=array.shape[1], pixel_spacing=spacing)
    f = np.array(geometry.pixel_spacing) / np.array(spacing, float)  # input px per output px

    def covered(n_in: int, n_out: int, step: float) -> float:
        pos = (np.arange(n_out) - (n_out - 1) / 2) * step + (n_in - 1) / 2
        return float(((pos >= -0.5) & (pos <= n_in - 0.5)).mean())

    coverage = covered(array.shape[0], geometry.rows, f[0]) * covered(array.shape[1], geometry.cols, f[1])
    return resample_image(array, source, geometry), coverage


class Decomposer:
    """A trained model ready to decompose radiographs (see the module docstring).

    ``model`` is a :class:`MSKdeXTraining.modelio.LoadedModel` (``predict``: (B, 1, H, W) in
    [0, 1] -> (B, 3, N, H, W) physical DRRs; ``ood``: per-image scores against the training
    radiographs; ``geometry``; ``meta``).
    """

    def __init__(self, model, calibration: dict | None = None) -> None:
        self.model = model
        self.geometry: Geometry = model.geometry
        self.names = list(model.meta["objects"])
        self.kinds = list(model.meta["kinds"])
        self.drr_types = list(model.meta["drr_types"])
        self.calibration = calibration
        self.origin = {**model.origin, "calibration": None if calibration is None else {
            "sha256": calibration["sha256"], "level": calibration["level"],
            "held_out_cases": len(calibration["held_out_ids"]),
            "held_out_patients": held_out_patients(calibration)}}

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> Decomposer:
        """Load ``RUN/model.safetensors`` + ``model.json`` (never unpickles) and
        ``RUN/calibration.json`` when there is one, onto ``device`` (auto: the GPU if any)."""
        from .modelio import load_model
        from .training.distributed import pick_device

        model = load_model(Path(run), device=pick_device(device))
        return cls(model, calibration=read_calibration(run, model.origin["weights_sha256"],
                                                       list(model.meta["objects"])))

    def predict(self, x: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """(B, H, W) model inputs in [0, 1] -> (B, 3, N, H, W) float32 physical DRRs;
        ``progress`` gets the fraction done after each batch."""
        outs = []
        for b in range(0, len(x), BATCH_SIZE):
            t = torch.from_numpy(np.ascontiguousarray(x[b:b + BATCH_SIZE], np.float32))[:, None]
            outs.append(self.model.predict(t).float().cpu().numpy())
            if progress is not None:
                done = min(b + BATCH_SIZE, len(x))
                progress(done / len(x), f"predicting: {done} of {len(x)} images")
        return np.concatenate(outs)

    def matched_detector(self, radiograph: Radiograph) -> Geometry:
        """The radiograph's matched detector (its magnification, else the model's). A
        magnification of 1 (spacing calibrated at the patient) is a parallel view."""
        m = radiograph.magnification or self.geometry.magnification
        if m <= 1.0:
            own = replace(self.geometry, rows=radiograph.shape[0], cols=radiograph.shape[1],
                          pixel_spacing=radiograph.pixel_spacing, parallel=True)
        else:
            sdd = float(radiograph.source.get("sdd_mm") or self.geometry.sdd)
            own = Geometry(*radiograph.shape, radiograph.pixel_spacing, sdd, sdd / m)
        return own.matched(self.geometry)

    def model_input(self, radiograph: Radiograph) -> tuple[np.ndarray, Geometry, dict]:
        """The radiograph in [0, 1] on its matched detector, that detector, and what was done.
        As in training: resampled onto the matched detector at the prepared dataset's pixel
        count (``model.json`` input ``prepared_shape``; older models: the model grid), then
        averaged onto the model grid."""
        x, method = radiograph.windowed()
        detector = self.matched_detector(radiograph)
        prepared = self.model.meta["input"].get("prepared_shape") or list(detector.shape)
        x, coverage = to_detector(x, radiograph.pixel_spacing, detector.resized(*prepared))
        extent = np.multiply(radiograph.shape, radiograph.pixel_spacing) / detector.field_of_view_mm
        x = resize(torch.from_numpy(x), detector.shape).numpy()
        return x, detector, {
            "input_shape": list(radiograph.shape),
            "input_pixel_spacing_mm": list(radiograph.pixel_spacing),
            "magnification": detector.magnification,
            "magnification_field": f"assumed: the model's reference {detector.magnification:.3f}"
            if radiograph.magnification is None else radiograph.source.get("magnification_field", "none"),
            "detector_pixel_spacing_mm": list(detector.pixel_spacing),
            "model_shape": list(self.geometry.shape), "coverage": coverage,
            "film_extent_ratio": float(extent.max()), "intensity": method}

    def decompose(self, radiograph: Radiograph, tta: int = 8, seed: int = 0,
                  progress: Progress | None = None) -> Decomposition:
        """Decompose one radiograph; ``tta`` augmentations, 1..:data:`MAX_TTA` (the first is the identity). A
        prediction that is NaN or infinite anywhere (any augmentation) is an :class:`InputError`
        naming the radiograph, the model and the objects: no table of empty values."""
        check_tta(tta)
        check_seed(seed)
        report = progress or silent
        x, detector, info = self.model_input(radiograph)
        augs = sample_augmentations(tta, seed)
        report(0.1, "predicting")
        drrs = per_pixel_area(self.predict(np.stack([a.apply(x) for a in augs]),
                                           part(report, 0.1, 0.8)),
                              self.geometry.pixel_area_cm2, detector.pixel_area_cm2)
        finite = np.isfinite(drrs).all(axis=(0, 1, 3, 4))  # per object, over augmentations and DRR types
        if not finite.all():
            raise InputError(f"{radiograph.source.get('path', 'the radiograph')}: the model "
                             f"{self.origin.get('run', '')} predicts NaN or infinite DRRs for "
                             f"{', '.join(n for n, ok in zip(self.names, finite) if not ok)}; no result: "
                             "a model whose training diverged cannot be used, retrain it")
        report(0.9, "tabulating")
        vol, mass = volume_mass(drrs, detector.pixel_area_cm2, self.drr_types)  # (T, N) each

        def sd(values: np.ndarray) -> float | None:  # over the augmentations; one measures no spread
            return float(values.std(ddof=1)) if tta > 1 else None

        table = []
        for i, (name, kind) in enumerate(zip(self.names, self.kinds)):
            q = self.calibration["objects"][name] if self.calibration else {}
            v_low, v_high = interval(float(vol[0, i]), q.get("volume_log_q"))
            m_low, m_high = interval(float(mass[0, i]), q.get("mass_log_q"))
            table.append({"object": name, "kind": kind, "volume_cm3": float(vol[0, i]),
                          "volume_low_cm3": v_low, "volume_high_cm3": v_high, "volume_sd_cm3": sd(vol[:, i]),
                          "mass_g": float(mass[0, i]), "mass_low_g": m_low, "mass_high_g": m_high,
                          "mass_sd_g": sd(mass[:, i])})
        ood = self.check_ood(x, radiograph.source, info)
        source = {**radiograph.source, "resampling": info, "tta": tta, "seed": seed}
        report(1.0, "done")
        return Decomposition(drrs[0], x, detector, self.names, self.kinds, self.drr_types,
                             table, ood, source, augs, self.origin)

    def check_ood(self, x: np.ndarray, source: dict, info: dict) -> OODResult:
        """The out-of-distribution verdict (:func:`~MSKdeXTraining.ood.ood_verdict`) on the model
        input ``x`` (H, W) in [0, 1], from the model's scores against its training radiographs
        (:meth:`~MSKdeXTraining.modelio.LoadedModel.ood`), the reading's ``source`` and the
        resampling ``info`` (its coverage), with the result's :meth:`notes`."""
        stats = self.model.meta["ood"]
        scores = self.model.ood(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None])
        return ood_verdict(x, scores, source, info["coverage"], stats.get("layout_r_min_median"),
                           self.notes(source, info, "layout_mean" in stats))

    def notes(self, source: dict, info: dict, orientation_checked: bool) -> list[str]:
        """What a reader of the result should know besides the flags ("note: ..."): checks
        not made, values given or assumed, intervals missing or not covering an assumption."""
        notes = [f"note: {n}" for n in source.get("notes", [])]  # what reading assumed or changed
        if not orientation_checked:
            notes.append("note: the model predates the orientation check (model.json 'ood' lacks "
                         "layout_mean): a film upside down, turned or with bone dark is not flagged; "
                         "retrain to add it")
        beyond = "; the interval does not include this error" if self.calibration else ""
        if str(source.get("spacing_field", "")).startswith("argument"):
            notes.append("note: pixel spacing given by the user, not read from the file "
                         f"({SCALE_EFFECT}{beyond})")
        if info.get("film_extent_ratio", 1.0) > LARGE_EXTENT:
            notes.append(f"note: the film spans {info['film_extent_ratio']:.1f}x the model's field of view; "
                         "for a film framed like the training ones, check that its pixel spacing is not too "
                         "large (the anatomy then looks larger, and volumes and masses grow with it)")
        if "direction" in source:
            notes.append(f"note: the file's direction matrix {source['direction']} is not the identity; "
                         "its pixels were used in their stored order (row 0 at the top): check that the "
                         "film is upright and not mirrored")
        if "hip_above_table_mm" in source and "(0018,1111)" in str(source.get("magnification_field")):
            notes.append(f"note: magnification from the DICOM source distances, with the hip joint centres "
                         f"assumed {HIP_ABOVE_TABLE_MM:g} mm above the table that DistanceSourceToPatient reaches "
                         f"(+-30 mm: about +-3.5 % in magnification; {SCALE_EFFECT}{beyond}); "
                         "give it when it is known (--magnification; in Slicer: Magnification)")
        if source.get("magnification") is None:
            problem = f" ({source['magnification_problem']})" if "magnification_problem" in source else ""
            notes.append(f"note: magnification unknown{problem}, {info['magnification_field']} "
                         f"({SCALE_EFFECT}{beyond}); give it "
                         "(--magnification; in Slicer: Magnification)")
        if self.calibration is None:
            notes.append("note: no calibrated interval: the model's run folder has no calibration.json "
                         "(a model trained with --fold k/K, or in Slicer with the hold-out ticked, gets one "
                         "from the cases it held out, as do `mskdex evaluate`'s fold models; `mskdex "
                         "calibrate` writes one afterwards; a model trained on every case cannot have one)")
        else:
            level = self.calibration["level"]
            missing = [n for n, o in self.calibration["objects"].items()
                       if any(o[f"{q}_log_q"] is None for q in QUANTITIES)]
            if missing:
                n, need = held_out_patients(self.calibration), min_patients(level)
                why = (f"{n} held-out patients calibrate it, {need} needed" if n < need else
                       "held-out cases with a prediction or truth <= 0")
                notes.append(f"note: no {100 * level:.0f} % interval for {', '.join(missing)}: {why}")
        return notes
