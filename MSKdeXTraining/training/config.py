"""Training configuration: a flat dataclass read from YAML/JSON, with ``key=value`` overrides.

Built-in configurations ship as package data (``MSKdeXTraining/configs/<name>.yaml``):
``paper`` (Gu et al. 2023, supplement Table 2: 512^2, batch 2, 600 epochs) and ``small``
(a few minutes on a 2-core CPU). Every loss is switchable: a weight of 0 disables it, and
``gan`` / ``bone_loss`` switch the adversarial and aligned-bone terms.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from ..errors import InputError
from ..losses import GAN_MODES
from ..models import HRNetSpec


#: Fields that say how a run is driven, not what it learns (a model trained with other values
#: differs at most by float rounding: data loader workers run one thread each).
RUN_CONTROL_FIELDS = ("checkpoint_every", "num_workers")
#: Fields that choose how the same training computes (device, kernels, memory layout,
#: precision), not what it trains: other values change the result by rounding only.
HOW_FIELDS = ("device", "compile", "channels_last", "amp_bf16")
#: Fields added after runs were first recorded, with the value that does what runs recorded
#: before (without the field) did: see :func:`as_recorded_now`.
ADDED_FIELDS = {"augment_zoom": 0.0}  # 0.3.13


def as_recorded_now(config: dict) -> dict:
    """A run's recorded config (config.yaml, model.json, an evaluation's key) with the fields
    added since it was written (:data:`ADDED_FIELDS`) filled in as it trained, so it compares
    equal to the same settings recorded now."""
    return {**ADDED_FIELDS, **config}


@dataclass(frozen=True)
class TrainConfig:
    """All hyper-parameters of one training run (units: epochs, pixels, learning rates)."""

    name: str = "custom"
    seed: int = 0
    epochs: int = 600
    batch_size: int = 2                  # global batch, split over data-parallel processes
    image_size: int | list[int] = 512    # rows (= cols) or [rows, cols] of the model's grid
    # optimiser (AdamW) and SGDR schedule, stepped once per epoch
    lr: float = 1e-4
    lr_min: float = 1e-6
    weight_decay: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    sgdr_t0: int | None = 200            # epochs of the first SGDR cycle; null: the run's epochs (one cycle)
    sgdr_t_mult: int = 1
    # losses (paper Eq. 1-5; supplement Eq. 1-2)
    gan: bool = True
    gan_mode: str = "lsgan"
    lambda_gan: float = 1.0
    lambda_cyc: float = 10.0
    lambda_gca: float = 0.5
    lambda_gcb: float = 1.0
    lambda_is: float = 100.0
    owis_warmup_epochs: int = 0          # lambda_is ramps linearly from 0 over these epochs
    bone_loss: bool = True
    lambda_l1: float = 100.0
    lambda_bone: float = 1.0
    pool_size: int = 50
    augment_flip: bool = False           # left-right flip of whole cases (sums kept; _left/_right swap)
    augment_zoom: float = 0.0            # zoom whole cases by (1 + this)^U(-1, 1) (DRR sums x zoom^3)
    # networks
    g_width: int = 32
    g_branches: int = 4
    g_modules: int = 1
    g_blocks: int = 2
    g_stem_stride: int = 4
    g_head_width: int | None = None
    f_width: int = 32
    f_down: int = 2
    f_blocks: int = 6
    d_width: int = 64
    d_layers: int = 3
    d_scales: int = 1
    # run control
    checkpoint_every: int = 10
    num_workers: int = 0
    fold_seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:K
    amp_bf16: bool = False               # bf16 autocast, CUDA only (no faster on an H100)
    channels_last: bool = True           # NHWC activations and weights (CPU: ~1.2x, fp32)
    compile: bool = False                # torch.compile the networks (CUDA only)

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise InputError(f"config field {field!r} must be {what}, got {getattr(self, field)!r}")
        for f in ("epochs", "batch_size", "sgdr_t_mult", "checkpoint_every",
                  "g_width", "g_branches", "g_modules", "g_blocks", "f_width", "d_width",
                  "d_layers", "d_scales"):
            need(getattr(self, f) >= 1, f, ">= 1")
        for f in ("lr", "lr_min", "weight_decay", "lambda_gan", "lambda_cyc", "lambda_gca",
                  "lambda_gcb", "lambda_is", "lambda_l1", "lambda_bone", "pool_size",
                  "owis_warmup_epochs", "num_workers", "seed", "fold_seed", "f_down", "f_blocks"):
            need(getattr(self, f) >= 0, f, ">= 0")
        for f in ("beta1", "beta2"):
            need(0 <= getattr(self, f) < 1, f, "in [0, 1) (AdamW)")
        need(self.sgdr_t0 is None or self.sgdr_t0 >= 1, "sgdr_t0", "null or >= 1")
        need(0 <= self.augment_zoom <= 0.5, "augment_zoom", "in [0, 0.5] (0: off; 0.1: up to 10 % larger or smaller)")
        need(self.g_head_width is None or self.g_head_width >= 1, "g_head_width", "null or >= 1")
        need(self.lr_min <= self.lr, "lr_min", f"<= lr ({self.lr})")
        need(self.gan_mode in GAN_MODES, "gan_mode", f"one of {GAN_MODES}")
        need(len(self.size) == 2 and min(self.size) >= 16, "image_size",
             "an int or [rows, cols], at least 16 pixels")
        # the PatchGAN's strided convs need room: 3 x 2^(layers + scales - 1) pixels
        critic = 3 * 2 ** (self.d_layers + self.d_scales - 1)
        need(not self.gan or min(self.size) >= critic, "image_size",
             f"at least {critic} pixels for the critic (d_layers {self.d_layers}, d_scales {self.d_scales})")
        self.g_spec  # validates the HRNet fields
        terms = {"gan": self.gan and self.lambda_gan > 0, "lambda_cyc": self.lambda_cyc > 0,
                 "lambda_gca": self.lambda_gca > 0, "lambda_gcb": self.lambda_gcb > 0,
                 "lambda_is": self.lambda_is > 0, "bone_loss": self.bone_loss and self.lambda_bone > 0}
        if not any(terms.values()):
            raise InputError(f"config: no generator loss is on ({', '.join(terms)} all off or weighted 0); "
                             "the generator would not learn")

    @property
    def size(self) -> tuple[int, ...]:
        """(rows, cols) of the model's image grid (pixels)."""
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, int) else tuple(int(v) for v in s)

    @property
    def g_spec(self) -> HRNetSpec:
        return HRNetSpec(self.g_width, self.g_branches, self.g_modules, self.g_blocks,
                         self.g_stem_stride, self.g_head_width)

    @property
    def uses_f(self) -> bool:
        """F is trained when the cycle or the adversarial loss is on."""
        return self.gan or self.lambda_cyc > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        """Build from a mapping; unknown keys and wrong types raise ValueError naming ``source``."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"{source}: unknown config keys {unknown}; valid keys: {sorted(known)}")
        values = {}
        for key, value in data.items():
            default = getattr(cls, key)
            values[key] = _coerce(value, default, key, source)
        try:
            return cls(**values)
        except ValueError as e:
            raise InputError(f"{source}: {e}") from None


def _coerce(value, default, key: str, source: str):
    """Check/convert ``value`` to the type of the field's default."""
    if key in ("image_size", "g_head_width", "sgdr_t0"):
        ok = value is None and key != "image_size" or isinstance(value, int) and not isinstance(value, bool) \
            or key == "image_size" and isinstance(value, list) and all(isinstance(v, int) for v in value)
        if not ok:
            also = {"image_size": " or [rows, cols]", "sgdr_t0": " or null (= epochs)"}.get(key, "")
            raise InputError(f"{source}: config key {key!r} must be an int{also}, got {value!r}")
        return value
    kind = type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{source}: config key {key!r} must be true/false, got {value!r}")
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"{source}: config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise InputError(f"{source}: config key {key!r} must be {kind.__name__}, got {value!r}")


def builtin_configs() -> list[str]:
    """Names of the configs shipped in ``MSKdeXTraining/configs``."""
    files = resources.files("MSKdeXTraining").joinpath("configs").iterdir()
    return sorted(Path(f.name).stem for f in files if f.name.endswith(".yaml"))


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-3", "gan=false"]`` -> ``{"lr": 0.001, "gan": False}`` (values read as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(f"--set {item!r}: the value is not YAML ({e})") from None
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def load_config(name_or_path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Load a built-in config by name (``small``, ``paper``) or a YAML/JSON file, then apply
    ``overrides`` (a mapping of keys to values)."""
    path = Path(name_or_path)
    if str(name_or_path) in builtin_configs() and not path.is_file():
        text = resources.files("MSKdeXTraining").joinpath(f"configs/{name_or_path}.yaml").read_text(encoding="utf-8")
        source = f"built-in config {name_or_path!r}"
    elif path.is_file():
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{source}: not a text file (not UTF-8); expected a YAML or JSON config") from None
    else:
        raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor a built-in "
                                f"config {builtin_configs()}")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{source}: cannot parse ({e})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{source}: expected a non-empty mapping of config keys to values, got "
                         f"{type(data).__name__ if data is not None else 'an empty file'}; start from "
                         "a copy of a built-in config (small, paper)")
    return TrainConfig.from_dict({**data, **(overrides or {})}, source)


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML (keys in field order)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
