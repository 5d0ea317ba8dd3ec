"""Model files: safetensors weights + JSON metadata (run folder v2, ``mskdex-model``).

Nothing is ever unpickled: tensors are read with safetensors only, after checking that the
file *is* a safetensors file (a pickle or ``torch.save`` archive renamed ``.safetensors`` is
refused with :class:`ModelFormatError`).

``model.json`` fields (besides format/version): ``code_version`` (MSKdeX that wrote it),
``config`` (the TrainConfig), ``objects``/``kinds``/``aligned_bones``, ``drr_types``,
``units``, ``scale`` (3, N) - physical value = network output x scale (units of the DRR
type: 1, cm, g/cm2; the training-set mean pixel value of the channel), ``geometry`` (the
model grid: the dataset's reference geometry resampled to the training image size, pixel
spacing in mm; radiographs are seen on it matched to their magnification, see
:meth:`~MSKdeXTraining.imaging.geometry.Geometry.matched`),
``input`` (radiograph normalisation ``(x - mean) / std``, x in [0, 1]), ``ood`` (training
radiograph statistics, see :mod:`~MSKdeXTraining.ood`; ``layout_grid`` and ``layout_mean``, the
mean layout of the orientation check, are optional: a model trained before they were added
lacks them and its results say that the orientation was not checked), ``split`` (fold and
case ids).
"""

from __future__ import annotations

import reprlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .drr_types import DRR_TYPES, DRR_UNITS
from .errors import InputError
from .fileio import file_sha256, read_format_json, write_atomic, write_json
from .imaging.geometry import Geometry
from .models import Generator
from .objects import Kind
from .ood import ood_scores

FORMAT = "mskdex-model"
VERSION = 2
UNITS = {**DRR_UNITS, "scale": "units of the DRR type per network unit", "pixel_spacing": "mm"}
_META_FIELDS = ("code_version", "config", "objects", "kinds", "drr_types", "scale", "geometry",
                "input", "ood")


class ModelFormatError(InputError):
    """A model or checkpoint file that MSKdeX refuses to load (the message says why)."""


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; refuses pickles and anything else without unpickling."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open("rb") as fh:
        head = fh.read(10)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise ModelFormatError(
            f"{path}: this is a Python pickle / torch.save archive, not a safetensors file. "
            "MSKdeX never unpickles model files (unpickling can run arbitrary code); "
            "use a model written by `mskdex train`")
    size = path.stat().st_size
    if len(head) < 10 or struct.unpack("<Q", head[:8])[0] > size - 8 or head[8:9] != b"{":
        raise ModelFormatError(f"{path}: not a safetensors file (bad header)")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ModelFormatError(f"{path}: corrupt safetensors file ({e})") from None


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write contiguous CPU copies of ``tensors`` atomically."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return write_atomic(path, lambda p: save_file(data, str(p)))


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(v).split(".")[:2] if p.isdigit())


def check_code_version(model_version: str, source: str) -> None:
    """Refuse a model written by an incompatible MSKdeX (other major, or a newer minor)."""
    mine, theirs = _version_tuple(__version__), _version_tuple(model_version)
    if len(theirs) < 2 or theirs[0] != mine[0] or theirs > mine:
        raise ModelFormatError(
            f"{source}: model written by MSKdeX {model_version}, this is MSKdeX {__version__}; "
            f"models from the same major version and not newer are accepted - retrain or upgrade")


def check_dataset(meta: dict, manifest: dict, source: str) -> None:
    """Refuse a model whose objects, DRR types or geometry do not match a dataset manifest."""
    for key in ("objects", "drr_types"):
        if list(meta[key]) != list(manifest[key]):
            raise ModelFormatError(f"{source}: field {key!r} is {meta[key]} but the dataset has "
                                   f"{manifest[key]}")
    model_geo = Geometry.from_json(meta["geometry"], f"{source}: geometry")
    data_geo = Geometry.from_json(manifest["geometry"], "dataset manifest: geometry").resized(
        model_geo.rows, model_geo.cols)
    if not np.allclose([data_geo.sdd, data_geo.sod, *data_geo.pixel_spacing],
                       [model_geo.sdd, model_geo.sod, *model_geo.pixel_spacing], rtol=1e-6) \
            or data_geo.parallel != model_geo.parallel:
        raise ModelFormatError(f"{source}: field 'geometry' {model_geo} does not match the "
                               f"dataset geometry resampled to the model grid {data_geo}")


def save_model(run: str | Path, generator: Generator, meta: dict) -> Path:
    """Write ``run/model.safetensors`` (G's weights) and ``run/model.json`` (``meta``), the JSON
    last: a model saved again (a finished run trained on) drops its old JSON first, so a kill in
    between leaves no old JSON beside the new weights (a resume saves the model again)."""
    run = Path(run)
    (run / "model.json").unlink(missing_ok=True)
    write_safetensors(run / "model.safetensors", generator.state_dict())
    write_json(run / "model.json", {"format": FORMAT, "version": VERSION, "code_version": __version__,
                                    "drr_types": list(DRR_TYPES), "units": UNITS, **meta})
    return run


def _numbers_problem(value: object, shape: tuple[int | None, ...], above: float | tuple = -np.inf,
                     kinds: str = "iuf") -> str | None:
    """Why ``value`` is not an array of finite numbers (numpy dtype kinds ``kinds``: "iu" for
    whole numbers) of ``shape`` (None: any length), each above ``above`` (broadcast to it);
    None when it is."""
    try:
        a = np.asarray(value)
    except ValueError:  # ragged nesting
        return f"got a ragged array {reprlib.repr(value)}"
    if a.dtype.kind not in kinds:
        return f"got {reprlib.repr(value)}"
    if a.ndim != len(shape) or any(s not in (None, m) for s, m in zip(shape, a.shape)):
        return f"got shape {a.shape}"
    if not np.all(np.isfinite(a) & (a > np.asarray(above))):
        return f"got {reprlib.repr(value)}"
    return None


def _meta_problems(meta: dict) -> list[str]:
    """What in ``model.json``'s fields does not fit, one entry per field named."""
    objects = meta["objects"]
    if not (isinstance(objects, list) and objects and all(isinstance(o, str) for o in objects)
            and len(set(objects)) == len(objects)):
        return [f"field 'objects' must be a non-empty list of distinct names, got {reprlib.repr(objects)}"]
    n = len(objects)
    problems = [f"field {k!r} must be a JSON object, got {reprlib.repr(meta[k])}"
                for k in ("input", "ood") if not isinstance(meta[k], dict)]
    if meta["drr_types"] != list(DRR_TYPES):
        problems.append(f"field 'drr_types' must be {list(DRR_TYPES)}, got {reprlib.repr(meta['drr_types'])}")
    kinds, allowed = meta["kinds"], get_args(Kind)
    if not (isinstance(kinds, list) and len(kinds) == n and all(k in allowed for k in kinds)):
        problems.append(f"field 'kinds' must have one of {list(allowed)} per object ({n}), got {reprlib.repr(kinds)}")
    inp = meta["input"] if isinstance(meta["input"], dict) else {}
    ood = meta["ood"] if isinstance(meta["ood"], dict) else {}
    width = len(ood["feature_mean"]) if isinstance(ood.get("feature_mean"), list) else None
    pair = (-np.inf, 0.0)  # [mean, std]: the std > 0
    specs = [("scale", meta["scale"], (3, n), f"numbers > 0 of shape (3, {n}) (DRR type x object)", 0.0),
             ("input.mean", inp.get("mean"), (), "a finite number"),
             ("input.std", inp.get("std"), (), "a finite number > 0", 0.0),
             ("ood.feature_mean", ood.get("feature_mean"), (None,), "a list of finite numbers"),
             ("ood.feature_cov", ood.get("feature_cov"), (width, width),
              "a square matrix of finite numbers as wide as feature_mean"),
             ("ood.feature_p99", ood.get("feature_p99"), (), "a finite number > 0", 0.0),
             ("ood.intensity_mean", ood.get("intensity_mean"), (2,), "[mean, std] with std > 0", pair),
             ("ood.intensity_std", ood.get("intensity_std"), (2,), "[mean, std] with std > 0", pair)]
    if inp.get("prepared_shape") is not None:
        specs.append(("input.prepared_shape", inp["prepared_shape"], (2,), "[rows, cols] (pixels)", 0, "iu"))
    if "layout_mean" in ood:
        grid = ood.get("layout_grid")
        side = grid ** 2 if type(grid) is int else None
        specs += [("ood.layout_grid", grid, (), "a whole number > 0", 0, "iu"),
                  ("ood.layout_mean", ood["layout_mean"], (side,), "layout_grid^2 finite numbers"),
                  ("ood.layout_r_min_median", ood.get("layout_r_min_median"), (2,),
                   "[min, median] of the training films' layout correlations")]
    for name, value, shape, expected, *bounds in specs:
        why = _numbers_problem(value, shape, *bounds)
        if why:
            problems.append(f"field {name!r} must be {expected}, {why}")
    return problems


def read_meta(run: str | Path) -> dict:
    """Read and validate ``run/model.json``: every field that loading and prediction use."""
    run = Path(run)
    path = run / "model.json"
    if run.is_file():
        holder = f" (e.g. {run.parent})" if (run.parent / "model.json").is_file() else ""
        raise ModelFormatError(f"{run}: is a file; expected the model run folder that holds model.json and "
                               f"model.safetensors{holder}")
    if not run.exists():
        raise ModelFormatError(f"{run}: model run folder not found")
    inside = [] if path.is_file() else sorted(
        p.parent for pattern in ("*/model.json", "*/*/model.json", "*/*/*/model.json") for p in run.glob(pattern))
    held = (f" (the model runs in it: {', '.join(map(str, inside[:4]))}{', ...' if len(inside) > 4 else ''})"
            if inside else "")
    meta = read_format_json(path, FORMAT, VERSION, _META_FIELDS, ModelFormatError,
                            f"{run} is not a model run folder{held}; run `mskdex train`")
    check_code_version(meta["code_version"], str(path))
    problems = _meta_problems(meta)
    if problems:
        raise ModelFormatError(f"{path}: {'; '.join(problems)}")
    try:
        Geometry.from_json(meta["geometry"], f"{path}: field 'geometry'")
    except InputError as e:
        raise ModelFormatError(str(e)) from None
    return meta


@dataclass
class LoadedModel:
    """A trained G with its metadata; :meth:`predict` returns DRRs in physical units."""

    meta: dict
    generator: Generator
    device: torch.device
    #: where it was loaded from: ``run`` folder and ``weights_sha256`` of model.safetensors
    origin: dict = field(default_factory=dict)

    @property
    def geometry(self) -> Geometry:
        """The model grid (rows, cols, pixel spacing in mm) a radiograph must be sampled on."""
        return Geometry.from_json(self.meta["geometry"])

    @property
    def scale(self) -> torch.Tensor:
        """(3, N) physical units per network unit."""
        return torch.tensor(self.meta["scale"], dtype=torch.float32, device=self.device)

    def _input(self, xray: torch.Tensor) -> torch.Tensor:
        geo = self.geometry
        if xray.ndim != 4 or xray.shape[1] != 1 or tuple(xray.shape[-2:]) != geo.shape:
            raise ValueError(f"radiograph must have shape (B, 1, {geo.rows}, {geo.cols}) "
                             f"(the model grid), got {tuple(xray.shape)}")
        norm = self.meta["input"]
        return (xray.to(self.device, torch.float32) - norm["mean"]) / norm["std"]

    @torch.no_grad()
    def predict(self, xray: torch.Tensor) -> torch.Tensor:
        """``xray`` (B, 1, H, W) in [0, 1] -> DRRs (B, 3, N, H, W): WVDRR (1), VDRR (cm), MDRR (g/cm2)."""
        return self.generator(self._input(xray)) * self.scale[None, :, :, None, None]

    @torch.no_grad()
    def features(self, xray: torch.Tensor) -> torch.Tensor:
        """Pooled head features (B, C) of G, the descriptor of the OOD check."""
        return self.generator.pooled_features(self._input(xray))

    @torch.no_grad()
    def ood(self, xray: torch.Tensor) -> dict[str, np.ndarray]:
        """Out-of-distribution scores per image (B,) of ``xray`` (B, 1, H, W) in [0, 1], relative
        to the training radiographs: :func:`~MSKdeXTraining.ood.ood_scores` of its :meth:`features`."""
        return ood_scores(self.meta["ood"], self.features(xray), xray)


def load_model(run: str | Path, device: str | torch.device = "cpu",
               manifest: dict | None = None) -> LoadedModel:
    """Load ``run/model.safetensors`` + ``run/model.json``; ``manifest`` (a dataset manifest)
    is checked for compatibility when given. Raises :class:`ModelFormatError` when refused."""
    from .training.config import TrainConfig
    run = Path(run)
    meta = read_meta(run)
    if manifest is not None:
        check_dataset(meta, manifest, str(run / "model.json"))
    try:
        config = TrainConfig.from_dict(meta["config"], f"{run / 'model.json'} field 'config'")
    except ValueError as e:
        raise ModelFormatError(str(e)) from None
    generator = Generator(len(meta["objects"]), config.g_spec)
    state = read_safetensors(run / "model.safetensors")
    try:
        generator.load_state_dict(state)
    except RuntimeError as e:  # torch: a header line, then one line per mismatch
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()] or [str(e)]
        more = f" and {len(details) - 1} more" if len(details) > 1 else ""
        raise ModelFormatError(f"{run / 'model.safetensors'}: weights do not fit the network described in "
                               f"model.json field 'config' ({details[0]}{more}); keep the two files of one "
                               "run together") from None
    width = generator.net.out.in_channels  # the pooled features' width
    if len(meta["ood"]["feature_mean"]) != width:
        raise ModelFormatError(f"{run / 'model.json'}: field 'ood' has {len(meta['ood']['feature_mean'])} "
                               f"feature statistics; the network described in 'config' has {width}")
    device = torch.device(device)
    origin = {"run": str(run.resolve()),
              "weights_sha256": file_sha256(run / "model.safetensors"),
              "metadata_sha256": file_sha256(run / "model.json")}
    return LoadedModel(meta, generator.to(device).eval(), device, origin)
