"""2D/3D rigid registration of one bone to a radiograph (paper Sec. 2.1, ref. 21).

A *rigid body* is a set of label values that move together: ``pelvis`` (pelvis + sacrum),
``femur_left`` and ``femur_right`` (:func:`rigid_bodies`). Registration finds the pose
(world LPS mm -> camera mm) at which the body's WVDRR best matches the radiograph:

* similarity: gradient correlation (GC, :mod:`.similarity`) of the body's WVDRR and the
  radiograph, inside a region around the projected body (``mask_margin_mm``);
* renderer: the body's attenuation (mu x volume, cm2) block-summed to a grid about as fine
  as the level's detector pixels and splatted by :class:`.projector.Splatter`; both images
  get the same light Gaussian blur, which removes splatting ripple;
* a film with pixels finer than :data:`.settings.FINEST_PIXEL_MM` (1 mm; clinical detectors
  have 0.1-0.2 mm) is area-averaged to about that first, its "full resolution" from then on;
* coarse-to-fine levels (detector pixels of ``Level.pixel_mm``, 0 = full resolution),
  each optimised by CMA-ES (global, batched over the population) or Powell (local
  refinement); both presets end with a small-step CMA-ES and Powell at full resolution
  (depth and out-of-plane rotation are only seen there);
* speed: each level crops both images to the bounding box of its GC region and computes
  the radiograph's gradients once (:class:`_FixedGC`);
* parameters ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm) about a centre (the body's
  centroid, or a femoral head) in the camera frame, applied on top of the start pose; depth
  ``tz`` runs along the ray through the centre (:func:`pose_from_params`).

The result carries the final GC at that full resolution and ``ok = gc >=
settings.gc_threshold`` (:data:`GC_THRESHOLD`, calibrated on the synthetic cohort: correct
poses score above it, gross failures below).

Overlap: GC of the bone's DRR alone is pulled by what overlaps the bone in the radiograph
(soft tissue, other bones): on the demo cohort its optimum lies a median ~0.45 mm (projected,
0.2 detector pixels) from the true pose. A joint refinement against the other bones and the CT's
soft tissue (split between the bodies, moving with them) was tried and removed: on generator-5
cohorts it pulled poses away from the truth (docs/registration.md).
"""

from .bodies import (body_centroid, default_isocenter, femoral_head_center, registration_errors,
                     rigid_bodies, rigid_body, surface_points)
from .sequence import register_bodies, register_body
from .optimise import pose_from_params, register_bone, working_film
from .render import BodyRenderer, render_body
from .settings import GC_THRESHOLD, PRESETS, Level, RegistrationResult, RegistrationSettings
from .xray import radiograph_geometry, read_xray, sidecar_film_geometry

__all__ = ["BodyRenderer", "GC_THRESHOLD", "Level", "PRESETS", "RegistrationResult",
           "RegistrationSettings", "body_centroid", "default_isocenter",
           "femoral_head_center", "pose_from_params", "radiograph_geometry", "read_xray", "register_bodies",
           "register_body", "register_bone", "registration_errors", "render_body", "rigid_bodies", "rigid_body",
           "sidecar_film_geometry", "surface_points", "working_film"]
