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
radiograph statistics, see :meth:`LoadedModel.ood`; ``layout_grid`` and ``layout_mean``, the
mean layout of the orientation check, are optional: a model trained before they were added
lacks them and its results say that the orientation was not checked), ``split`` (fold and
case ids).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import InputError
from .fileio import file_sha256, read_format_json, write_atomic, write_json
from .imaging.geometry import Geometry
from .imaging.projector import DRR_TYPES as PROJECTOR_DRR_TYPES
from .imaging.projector import DRR_UNITS
from .models import Generator

FORMAT = "mskdex-model"
VERSION = 2
DRR_TYPES = list(PROJECTOR_DRR_TYPES)
UNITS = {**DRR_UNITS, "scale": "units of the DRR type per network unit", "pixel_spacing": "mm"}
_META_FIELDS = ("code_version", "config", "objects", "kinds", "drr_types", "scale", "geometry",
                "input", "ood")
#: Training statistics of the out-of-distribution check (:meth:`LoadedModel.ood`).
OOD_FIELDS = ("feature_mean", "feature_cov", "feature_p99", "intensity_mean", "intensity_std")
#: Side of the block grid of a radiograph's layout (:func:`layout`).
LAYOUT_GRID = 8
#: What the orientation check tries on a radiograph (B, 1, H, W): turned or flipped.
ORIENTATIONS = {
    "flipped top to bottom": lambda x: x.flip(-2),
    "turned 180 degrees": lambda x: x.rot90(2, (-2, -1)),
    "turned 90 degrees clockwise": lambda x: x.rot90(-1, (-2, -1)),
    "turned 90 degrees counter-clockwise": lambda x: x.rot90(1, (-2, -1)),
}


def layout(xray: torch.Tensor, grid: int = LAYOUT_GRID) -> torch.Tensor:
    """(B, 1, H, W) -> (B, grid^2) block means: the coarse layout of each radiograph."""
    return torch.nn.functional.adaptive_avg_pool2d(xray.double(), grid).flatten(1)


def layout_correlation(layouts: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson r of each :func:`layout` (B, grid^2) with a mean layout (grid^2,)."""
    a = layouts.double() - layouts.double().mean(1, keepdim=True)
    b = mean.double().flatten() - mean.double().mean()
    return (a @ b) / (a.norm(dim=1) * b.norm()).clamp_min(1e-12)


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
    """Write ``run/model.safetensors`` (G's weights) and ``run/model.json`` (``meta``)."""
    run = Path(run)
    write_safetensors(run / "model.safetensors", generator.state_dict())
    write_json(run / "model.json", {"format": FORMAT, "version": VERSION, "code_version": __version__,
                                    "drr_types": DRR_TYPES, "units": UNITS, **meta})
    return run


def read_meta(run: str | Path) -> dict:
    """Read and validate ``run/model.json``."""
    path = Path(run) / "model.json"
    meta = read_format_json(path, FORMAT, VERSION, _META_FIELDS, ModelFormatError,
                            f"{run} is not a model run folder; run `mskdex train`")
    check_code_version(meta["code_version"], str(path))
    if list(meta["drr_types"]) != DRR_TYPES:
        raise ModelFormatError(f"{path}: field 'drr_types' must be {DRR_TYPES}, got {meta['drr_types']}")
    n = len(meta["objects"])
    if np.shape(meta["scale"]) != (3, n):
        raise ModelFormatError(f"{path}: field 'scale' must have shape (3, {n}), got {np.shape(meta['scale'])}")
    if len(meta["kinds"]) != n:
        raise ModelFormatError(f"{path}: field 'kinds' must have one entry per object ({n}), got {len(meta['kinds'])}")
    Geometry.from_json(meta["geometry"], f"{path}: field 'geometry'")
    problems = [f"'input' needs 'mean' and 'std' > 0"] if not (
        isinstance(meta["input"], dict) and {"mean", "std"} <= set(meta["input"]) and meta["input"]["std"] > 0) else []
    shape = meta["input"].get("prepared_shape") if isinstance(meta["input"], dict) else None
    if shape is not None and not (isinstance(shape, list) and len(shape) == 2
                                  and all(type(v) is int and v >= 1 for v in shape)):
        problems.append(f"'input' prepared_shape must be [rows, cols] (pixels), got {shape!r}")
    ood = meta["ood"] if isinstance(meta["ood"], dict) else {}
    missing = sorted(set(OOD_FIELDS) - set(ood))
    if missing:
        problems.append(f"'ood' lacks {missing}")
    elif np.shape(ood["feature_cov"]) != (len(ood["feature_mean"]),) * 2:
        problems.append(f"'ood' feature_cov has shape {np.shape(ood['feature_cov'])}, not square as "
                        f"wide as feature_mean ({len(ood['feature_mean'])})")
    if "layout_mean" in ood and not (isinstance(ood.get("layout_grid"), int) and ood["layout_grid"] > 0
                                     and np.shape(ood["layout_mean"]) == (ood["layout_grid"] ** 2,)):
        problems.append(f"'ood' layout_mean must hold layout_grid^2 numbers, got shape "
                        f"{np.shape(ood['layout_mean'])} for layout_grid {ood.get('layout_grid')!r}")
    if "layout_mean" in ood and np.shape(ood.get("layout_r_min_median")) != (2,):
        problems.append("'ood' layout_r_min_median must be [min, median] of the training films' layout "
                        f"correlations, got {ood.get('layout_r_min_median')!r}")
    if problems:
        raise ModelFormatError(f"{path}: field {'; '.join(problems)}")
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
        """Out-of-distribution scores per image (B,), relative to the training radiographs.

        ``feature_score``: Mahalanobis distance of the pooled G features to the training
        mean, divided by the 99th percentile over the training images (> 1: unusual);
        ``intensity_z``: largest |z| of the image's mean and std of intensity;
        ``layout_r``: Pearson r of the image's block layout with the training radiographs' mean
        layout, and ``layout_<orientation>``: the same for the image as each of
        :data:`ORIENTATIONS` would correct it (both absent for a model without ``layout_mean``).
        """
        stats = self.meta["ood"]
        f = self.features(xray).double().cpu().numpy()
        mean = np.asarray(stats["feature_mean"])
        prec = np.linalg.inv(np.asarray(stats["feature_cov"]))
        d = f - mean
        maha = np.sqrt(np.einsum("bi,ij,bj->b", d, prec, d))
        x = xray.double().cpu().numpy().reshape(len(xray), -1)
        z_mean = np.abs(x.mean(1) - stats["intensity_mean"][0]) / stats["intensity_mean"][1]
        z_std = np.abs(x.std(1) - stats["intensity_std"][0]) / stats["intensity_std"][1]
        scores = {"feature_score": maha / stats["feature_p99"], "intensity_z": np.maximum(z_mean, z_std)}
        if "layout_mean" in stats:
            mean_layout, grid, films = torch.tensor(stats["layout_mean"]), stats["layout_grid"], xray.cpu()
            for name, turn in {"r": lambda x: x, **ORIENTATIONS}.items():
                scores[f"layout_{name}"] = layout_correlation(layout(turn(films), grid), mean_layout).numpy()
        return scores


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
    except RuntimeError as e:
        raise ModelFormatError(f"{run / 'model.safetensors'}: weights do not fit the network "
                               f"described in model.json ({str(e).splitlines()[0]})") from None
    width = generator.net.out.in_channels  # the pooled features' width
    if len(meta["ood"]["feature_mean"]) != width:
        raise ModelFormatError(f"{run / 'model.json'}: field 'ood' has {len(meta['ood']['feature_mean'])} "
                               f"feature statistics; the network described in 'config' has {width}")
    device = torch.device(device)
    origin = {"run": str(run.resolve()),
              "weights_sha256": file_sha256(run / "model.safetensors"),
              "metadata_sha256": file_sha256(run / "model.json")}
    return LoadedModel(meta, generator.to(device).eval(), device, origin)
