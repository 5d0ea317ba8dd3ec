"""Registration settings (optimiser levels, presets, per-body adaptations) and results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ...errors import InputError
from ..geometry import Geometry


#: GC (at full resolution, inside the bone region) below which a registration
#: is flagged as failed. Correct poses on the synthetic cohort score well above it.
GC_THRESHOLD = 0.35


#: Threshold for a femur (:func:`register_bodies`): less clutter around it than around the
#: pelvis, so correct femur poses score higher (about 0.6-0.8 on the cohort).
FEMUR_GC_THRESHOLD = 0.5


#: GC cost of a translation of one prior SD (``RegistrationSettings.translation_sd_mm``)^2.
PRIOR_WEIGHT = 0.005


#: Search scale of a femur registered after the pelvis (deg x3, mm x3): it turns about its
#: head by up to ~15-20 degrees, its head moves little.
FEMUR_SCALE = (8.0, 8.0, 8.0, 3.0, 3.0, 3.0)


#: Translation prior (mm) of a femur's head relative to the registered pelvis.
FEMUR_TRANSLATION_SD_MM = 3.0


#: Restarts of a femur's last CMA-ES level (deg x3, mm x3 added to that level's result): rx
#: +-12 degrees, a turn about the head in flexion (the camera's x axis, taken before the found
#: ry, rz of up to about 15 degrees), which an AP film hardly shows (docs/registration.md: a femur
#: that settled 11 degrees off in flexion, 15 mm mTRE and GC 0.672, ends 3.3 mm off, GC 0.696).
FEMUR_RESTARTS = ((12.0, 0.0, 0.0, 0.0, 0.0, 0.0), (-12.0, 0.0, 0.0, 0.0, 0.0, 0.0))


#: CMA-ES generations of each restart: about half the last level's, as many as found the same
#: poses on the 30-case benchmark (session 15).
RESTART_ITERATIONS = 7


#: In-plane shifts (mm, +-) searched when the pelvis starts from the default AP view.
START_SEARCH_MM = 48.0


#: Finest detector pixel (mm) registration works at. A clinical film's 0.1-0.2 mm pixels would
#: make the rendered samples (each under ``footprint_px`` pixels) and their memory grow with
#: the square of the ratio, tens of GB per CMA-ES generation; a finer film is area-averaged to
#: about this size first. The targets were met on 2.3 mm pixels (docs/registration.md).
FINEST_PIXEL_MM = 1.0


def binned(radiograph: Geometry, pixel_mm: float) -> Geometry:
    """The radiograph's field of view with pixels of about ``pixel_mm`` (a whole binning
    factor, at least 1: the radiograph's own pixels when they are that coarse)."""
    factor = max(1, round(pixel_mm / min(radiograph.pixel_spacing)))
    return radiograph.resized(max(8, radiograph.rows // factor), max(8, radiograph.cols // factor))


@dataclass(frozen=True)
class Level:
    """One pyramid level: detector pixel size, optimiser and its budget.

    ``pixel_mm``: the level's detector pixel size (mm); the radiograph is downsampled by
    ``round(pixel_mm / its spacing)`` (at least 1, i.e. its own resolution). ``sigma`` is the initial CMA-ES step in units of the search scale
    (:attr:`RegistrationSettings.scale`); ``iterations`` are CMA generations or, for
    Powell, the maximum number of function evaluations.
    """

    pixel_mm: float
    optimizer: str = "cma"
    iterations: int = 30
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("cma", "powell"):
            raise ValueError(f"Level.optimizer must be 'cma' or 'powell', got {self.optimizer!r}")
        if self.pixel_mm < 0 or self.iterations < 1 or self.sigma <= 0:
            raise ValueError(f"Level needs pixel_mm >= 0, iterations >= 1, sigma > 0, got {self}")

    def geometry(self, radiograph: Geometry) -> Geometry:
        """The level's detector: the radiograph's field of view with coarser pixels."""
        return binned(radiograph, self.pixel_mm)


@dataclass(frozen=True)
class RegistrationSettings:
    """Optimiser settings; :meth:`preset` gives the documented ``"accurate"``/``"fast"`` ones.

    ``scale`` (deg, deg, deg, mm, mm, mm): one search unit per parameter (the expected start
    error; depth is less observable, so wider). ``bounds`` (search units) limit each level's search about its start.
    ``footprint_px``: largest projected size of a rendered sample (detector pixels);
    ``blur_px``: Gaussian sigma applied to both images; ``mask_margin_mm``: GC is computed
    within this distance (detector mm) of the projected body at the level's start (None: the
    whole image). ``translation_sd_mm``: Gaussian prior on the translation away from the start
    (None: none); each SD costs ``prior_weight`` of GC (a femur registered after the
    pelvis keeps its head in the acetabulum). ``grid_search_mm`` (range, step): before the
    first level's optimiser, try every in-plane shift on this grid (a start far from the
    truth, e.g. the default AP view). ``restarts`` (deg x3, mm x3 each): the last CMA-ES level
    runs again, for ``restart_iterations`` generations, from its result plus each of them (in
    the optimiser's parameters), and the best run goes on. ``seed`` makes CMA-ES deterministic.

    How :func:`register_bodies` adapts them per body: the pelvis from the default view searches
    +-``start_search_mm`` in plane first; a femur uses ``femur_scale``,
    ``femur_translation_sd_mm``, ``femur_restarts`` and at least ``femur_gc_threshold``.
    """

    levels: tuple[Level, ...] = (Level(6.0, "cma", 40, 1.0), Level(3.0, "cma", 30, 0.3),
                                 Level(0.0, "cma", 15, 0.1), Level(0.0, "powell", 100))
    scale: tuple[float, ...] = (5.0, 5.0, 5.0, 8.0, 8.0, 20.0)
    bounds: float = 4.0
    popsize: int = 12
    footprint_px: float = 1.25
    blur_px: float = 0.25
    mask_margin_mm: float | None = 15.0
    translation_sd_mm: float | None = None
    grid_search_mm: tuple[float, float] | None = None
    gc_threshold: float = GC_THRESHOLD
    seed: int = 1
    prior_weight: float = PRIOR_WEIGHT
    start_search_mm: float = START_SEARCH_MM
    femur_scale: tuple[float, ...] = FEMUR_SCALE
    femur_translation_sd_mm: float = FEMUR_TRANSLATION_SD_MM
    femur_gc_threshold: float = FEMUR_GC_THRESHOLD
    restarts: tuple[tuple[float, ...], ...] = ()
    restart_iterations: int = RESTART_ITERATIONS
    femur_restarts: tuple[tuple[float, ...], ...] = FEMUR_RESTARTS

    def __post_init__(self) -> None:
        for name in ("restarts", "femur_restarts"):
            if any(len(r) != 6 for r in getattr(self, name)):
                raise InputError(f"registration setting {name!r} must list restarts of 6 values "
                                 f"(deg x3, mm x3), got {getattr(self, name)!r}")
        if self.restart_iterations < 1:
            raise InputError(f"registration setting 'restart_iterations' must be >= 1, got "
                             f"{self.restart_iterations!r} (no restarts: empty 'restarts')")

    @classmethod
    def preset(cls, name: str) -> RegistrationSettings:
        """``"accurate"`` (default) or ``"fast"`` (fewer evaluations per level, more gross
        failures).

        Measured on the demo cohort (one torch thread, the slower 2-core VM, sessions 14-15):
        accurate ~3.7 s pelvis, ~1.3 s femur (with its flexion restarts); fast ~2.5 s pelvis,
        ~1.0 s femur (docs/registration.md).
        """
        if name == "accurate":
            return cls()
        if name == "fast":
            return cls(levels=(Level(6.0, "cma", 25, 1.0), Level(3.0, "cma", 25, 0.3),
                               Level(0.0, "cma", 12, 0.1), Level(0.0, "powell", 80)), popsize=10)
        raise InputError(f"registration preset must be one of {PRESETS}, got {name!r}")

    def to_json(self) -> dict:
        return asdict(self)


PRESETS = ("accurate", "fast")


@dataclass
class RegistrationResult:
    """Pose found for one body: ``pose`` 4x4 world (LPS mm) -> camera (mm).

    ``params`` (deg, mm) are relative to the start pose about ``center_cam`` (mm); ``gc``
    is the final gradient correlation at full resolution (the radiograph's pixels, or about
    :data:`FINEST_PIXEL_MM` for a finer film); ``ok`` says whether it
    reaches ``gc_threshold`` (and, where ``mirror_gc`` was measured, beats it). ``level_gc``
    records the best GC of each level. ``mirror_gc``: the GC of the same body registered to the
    film mirrored left-right (:func:`register_bodies` with ``check_mirror``), ``None`` if not
    measured; a film that fits as well mirrored is likely stored mirrored.
    """

    pose: np.ndarray
    gc: float
    ok: bool
    params: np.ndarray
    center_cam: np.ndarray
    evaluations: int
    seconds: float
    level_gc: list[float] = field(default_factory=list)
    gc_threshold: float = GC_THRESHOLD
    mirror_gc: float | None = None

    @property
    def mirrored(self) -> bool:
        """Whether the film mirrored left-right fits this body at least as well as the film."""
        return self.mirror_gc is not None and self.mirror_gc >= self.gc

    def problem(self) -> str | None:
        """Why the registration is not ok, in words (``None`` when it is)."""
        if self.mirrored:
            return (f"the film mirrored left-right fits better (GC {self.mirror_gc:.3f} against {self.gc:.3f}): "
                    "it looks stored mirrored; check its orientation (an AP view shows the patient's right on "
                    "the viewer's left)")
        if not self.ok:
            return f"GC {self.gc:.3f} < {self.gc_threshold:g}"
        return None

    def to_json(self) -> dict:
        return {"pose": np.asarray(self.pose).tolist(), "gc": round(float(self.gc), 5),
                "ok": bool(self.ok), "params": [round(float(p), 4) for p in self.params],
                "params_units": ("deg, deg, deg, mm, mm, mm: rotations about center_cam (camera), tx/ty along "
                                 "the detector axes, tz along the source->center_cam ray, after the start "
                                 "pose (registration.pose_from_params)"),
                "center_cam": [round(float(c), 3) for c in self.center_cam],
                "evaluations": int(self.evaluations), "seconds": round(float(self.seconds), 3),
                "level_gc": [round(float(g), 5) for g in self.level_gc],
                "gc_threshold": float(self.gc_threshold),
                "mirror_gc": None if self.mirror_gc is None else round(float(self.mirror_gc), 5)}
