"""The training loop: run folder v2, checkpoints, exact resume, data parallelism.

``train`` writes (rank 0 only) ``config.yaml``, ``manifest.json``, ``environment.json``,
``log.csv`` (every loss, mean per epoch), ``checkpoints/epoch_XXXX.*`` every
``checkpoint_every`` epochs and at the end, then ``model.safetensors`` + ``model.json``.
A checkpoint holds everything that determines the future of the run (networks,
optimisers, schedulers, image pools and RNG states of every process, normalisation), so
``resume=True`` continues from the last one exactly as if never interrupted (from the one
before, with a warning, when the last cannot be read); up to float rounding when the resume
changes how the run computes (device, layout, precision, loader workers).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .. import __version__
from ..environment import environment
from ..errors import InputError, TrainingDiverged
from ..fileio import read_json_object, refuse_other_kind, refuse_overwrite, write_atomic, write_json
from ..models import Generator, PatchGAN, ResnetTranslator
from ..modelio import ModelFormatError, save_model
from ..ood import ood_statistics
from ..progress import Progress
from . import distributed
from .checkpoint import latest_checkpoint, load_newest_checkpoint, prune_checkpoints, save_checkpoint
from .config import HOW_FIELDS, RUN_CONTROL_FIELDS, TrainConfig, as_recorded_now, dump_config
from .data import PreparedDataset, ok_ids, read_manifest, split_folds
from .objective import LOSS_NAMES, Networks, Normalisation, Objective
from .pool import ImagePool

LOG_COLUMNS = ("epoch", "lr", "lambda_is", "seconds") + LOSS_NAMES


def build_networks(config: TrainConfig, n_objects: int) -> Networks:
    """G, F and critics for ``n_objects`` objects, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    ch = 3 * n_objects
    G = Generator(n_objects, config.g_spec)
    F = ResnetTranslator(ch, 1, config.f_width, config.f_down, config.f_blocks) if config.uses_f else None
    DX = PatchGAN(1, config.d_width, config.d_layers, config.d_scales) if config.gan else None
    DD = PatchGAN(ch, config.d_width, config.d_layers, config.d_scales) if config.gan else None
    return Networks(G, F, DX, DD)


@dataclass
class TrainingParts:
    """Networks, optimisers, SGDR schedulers and the step function of one process."""

    nets: Networks
    objective: Objective
    optimizers: list[torch.optim.Optimizer]
    schedulers: list


def build_training(config: TrainConfig, n_objects: int, bone_index: list[int],
                   info: distributed.DistInfo) -> TrainingParts:
    """Everything a process needs to take steps (the objective's ``norm`` is set by the caller).

    The networks use channels_last when configured (on the CPU too: oneDNN's NHWC
    convolutions are faster in fp32), and on CUDA ``compile`` wraps them in torch.compile
    for the steps (the saved state dicts stay those of the plain modules).
    """
    nets = build_networks(config, n_objects)
    dev = info.device
    cuda = dev.type == "cuda"
    for net in nets.generators() + nets.critics():
        net.to(dev)
        if config.channels_last:
            net.to(memory_format=torch.channels_last)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.AdamW([p for n in nets.generators() for p in n.parameters()],
                              lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    opt_d = torch.optim.AdamW([p for n in nets.critics() for p in n.parameters()], lr=config.lr,
                              betas=betas, weight_decay=config.weight_decay) if config.gan else None
    optims = [o for o in (opt_g, opt_d) if o is not None]
    scheds = [torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=config.sgdr_t0 or config.epochs, T_mult=config.sgdr_t_mult, eta_min=config.lr_min) for o in optims]
    pools = (ImagePool(config.pool_size, [config.seed, info.rank, 0]),
             ImagePool(config.pool_size, [config.seed, info.rank, 1]))
    run = nets
    if cuda and config.compile:
        run = Networks(*(torch.compile(m) if m is not None else None
                         for m in (nets.G, nets.F, nets.DX, nets.DD)))
    objective = Objective(config, run, opt_g, opt_d, pools=pools, norm=None, bone_index=bone_index,
                          info=info)
    return TrainingParts(nets, objective, optims, scheds)


def normalisation(ds: PreparedDataset) -> Normalisation:
    """Radiograph mean/std and the (3, N) scale constants (mean pixel value per channel,
    physical units) over the training cases on the model grid."""
    n = len(ds)
    s_x = s_xx = 0.0
    s_drr = torch.zeros(3, len(ds.objects), dtype=torch.float64)
    for i in range(n):
        item = ds.load(i)
        x = item["xray"].double()
        s_x += float(x.mean())
        s_xx += float((x * x).mean())
        s_drr += item["drr"].double().mean(dim=(-1, -2))
    mean = s_x / n
    std = max((s_xx / n - mean * mean) ** 0.5, 1e-6)
    scale = s_drr / n
    scale = scale.clamp_min(float(scale.max()) * 1e-6).float()
    return Normalisation(mean, std, scale)


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"))


def _environment(info: distributed.DistInfo) -> dict:
    env = {**environment(), "device": str(info.device), "world_size": info.world,
           "threads": torch.get_num_threads()}
    if info.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(info.device)
    return env


def _record_environment(path: Path, info: distributed.DistInfo, start: int, changed: dict) -> None:
    """Write the environment of a run (``start`` 0) or, on a resume from epoch ``start``, add
    it to the list ``resumes`` of the record (dropping resumes from ``start`` on, which trained
    no checkpoint that is kept), with the config fields it ``changed`` ({field: [before, now]}):
    which machine trained which epochs, and how. A resume without a record leaves the first
    machine unknown."""
    env = _environment(info)
    if start:
        first = read_json_object(path, (), InputError) if path.is_file() else {}
        kept = [r for r in first.get("resumes", []) if r.get("after_epoch", 0) < start]
        env = {**first, "resumes": [*kept, {"after_epoch": start, **({"changed": changed} if changed else {}),
                                            **env}]}
    write_json(path, env)


#: Config fields a resume may change: how long to train, when to checkpoint (neither changes
#: what an epoch computes) and how it computes (:data:`HOW_FIELDS`, ``num_workers``: the run then
#: continues as it would have up to float rounding, not bit for bit).
RESUME_MAY_CHANGE = ("epochs", *RUN_CONTROL_FIELDS, *HOW_FIELDS)


def _recorded_config(out: Path) -> dict:
    """The config recorded in a run folder's ``config.yaml``."""
    import yaml
    path = out / "config.yaml"
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(old, dict):
        raise InputError(f"{path}: expected a mapping of settings, got {type(old).__name__}")
    return old


def _concrete_schedule(config: TrainConfig, out: Path, resume: bool) -> TrainConfig:
    """``config`` with ``sgdr_t0: null`` made concrete, as the run records it: a resumed run
    keeps the first cycle it started with (resumed to more epochs, SGDR restarts after it), a new
    run takes its epochs (one cycle over the run)."""
    if config.sgdr_t0 is not None:
        return config
    recorded = _recorded_config(out) if resume and (out / "config.yaml").is_file() else {}
    kept = recorded.get("sgdr_t0", config.epochs)
    return replace(config, sgdr_t0=kept if kept is None or isinstance(kept, int) else config.epochs)


def _check_resume_config(out: Path, config: TrainConfig) -> dict:
    """Refuse to resume the run in ``out`` with a config that trains otherwise; the fields it
    changes, {field: [before, now]}."""
    old, new = as_recorded_now(_recorded_config(out)), config.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k))
    if diff:
        raise InputError(f"{out}: cannot resume with a different config (changed: {diff}); "
                         f"only {', '.join(map(repr, RESUME_MAY_CHANGE))} may change")
    return {k: [old.get(k), new[k]] for k in RESUME_MAY_CHANGE if old.get(k, new[k]) != new[k]}


#: Manifest fields that may differ between copies of one dataset (where its cohort lies; the
#: cohort's hash, which manifests before session 12 lack).
_PLACE_FIELDS = ("cohort", "cohort_sha256")


def check_run_dataset(out: Path, manifest: dict,
                      fix: str = "continue it on the dataset it was started on, or train into another folder") -> None:
    """Refuse a run folder started on another dataset than ``manifest`` (its copy in
    ``out/manifest.json``), naming the fields that differ; ``fix`` says what to do."""
    path = Path(out) / "manifest.json"
    if not path.is_file():
        return  # nothing trained yet
    started, now = read_json_object(path, (), InputError), json.loads(json.dumps(manifest))
    diff = sorted(k for k in set(started) | set(now)
                  if k not in _PLACE_FIELDS and started.get(k) != now.get(k))
    if diff:
        raise InputError(f"{path}: the run was started on another dataset ({', '.join(diff)} differ); {fix}")


def _check_resume_split(last: Path, state: dict, out: Path, fold: tuple[int, int] | None,
                        train_ids: list[str]) -> None:
    """Refuse to resume on other cases than the run trained on: the held-out cases of a fold
    would leak into training (and then calibrate its intervals)."""
    recorded = state.get("train_ids")
    if recorded is None and (out / "model.json").is_file():  # a checkpoint before session 12
        split = read_json_object(out / "model.json", (), InputError).get("split")
        recorded = split.get("train_ids") if isinstance(split, dict) else None
    if recorded is None:
        if fold is not None:
            raise InputError(f"{last}: no field 'train_ids' (written before checkpoints recorded their "
                             "training cases), so a resume with --fold (in Slicer: the hold-out) cannot be "
                             "checked against the cases it held out; train into another folder")
        return
    if recorded != train_ids:
        was = state.get("fold")
        was = f"--fold {was[0]}/{was[1]}" if isinstance(was, list) and len(was) == 2 else "every case"
        raise InputError(f"{last}: field 'train_ids': the run was started on other cases ({was}); resume "
                         "it as it was started (in Slicer: the hold-out ticked as then)")


@dataclass(frozen=True)
class RunPlan:
    """The checked inputs of a run: what it reads, where it writes, which cases it trains on."""

    data: Path
    out: Path
    manifest: dict
    fold: tuple[int, int] | None
    train_ids: list[str]
    test_ids: list[str]
    resume: bool                         # continue from the newest readable checkpoint
    changed: dict                        # config fields a resume changes: {field: [before, now]}

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def split(self) -> dict:
        """The cases a checkpoint records (a resume must train on the same)."""
        return {"fold": list(self.fold) if self.fold else None, "train_ids": self.train_ids}


@dataclass
class TrainingState:
    """What the epochs of one process carry forward."""

    ds: PreparedDataset
    parts: TrainingParts                 # the objective's ``norm`` is set
    norm: Normalisation
    sampler: DistributedSampler
    loader: DataLoader
    start: int                           # epochs trained before this call (0: a new run)
    rows: list[dict]                     # log.csv so far (rank 0; the others log nothing)


@dataclass(frozen=True)
class EpochStats:
    """One epoch's learning rate and OWIS weight, when it began (``time.perf_counter``) and
    its mean loss terms (means over its steps and over processes, by name)."""

    epoch: int
    lr: float
    lambda_is: float
    began: float
    means: dict[str, float]


def train(config: TrainConfig, data: str | Path, out: str | Path, *,
          fold: tuple[int, int] | None = None, resume: bool = False,
          progress: Progress | None = None) -> Path:
    """Train G (and F and the critics) on the prepared dataset ``data``; returns ``out``.

    ``fold=(k, K)`` trains on the other folds of a K-fold split by patient
    (:func:`split_folds` with ``config.fold_seed``; k in 0..K-1) and records the held-out
    ids in model.json. ``resume`` continues from the last checkpoint in ``out`` that can be
    read.
    Under ``torchrun`` every process calls this; rank 0 writes the files.
    """
    info = distributed.init(config.device)
    try:
        with deterministic_kernels(info.device):
            return _train(config, Path(data), Path(out), fold=fold, resume=resume, progress=progress, info=info)
    finally:
        distributed.shutdown(info)


@contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """On CUDA, PyTorch's deterministic kernels (cuDNN's convolutions and bilinear upsampling's
    backward too) inside the block, so a seed gives one model; the process's setting is restored
    after. An operation without one warns. Without them, on an H100, two runs of the small
    configuration parted within 3 epochs (session 29). Nothing changes on the CPU."""
    if device.type != "cuda":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _train(config: TrainConfig, data: Path, out: Path, *, fold: tuple[int, int] | None, resume: bool,
           progress: Progress | None, info: distributed.DistInfo) -> Path:
    """:func:`train` in one process: check, set up (or restore), the epochs, the model."""
    config = _concrete_schedule(config, out, resume)
    plan = _plan_run(config, data, out, fold=fold, resume=resume, info=info)
    state = _set_up(config, plan, info)
    for epoch in range(state.start + 1, config.epochs + 1):
        stats = _train_epoch(config, state, epoch, progress, info)
        _end_epoch(config, plan, state, stats, info)
    if info.main:
        _write_model(config, plan, state, info)
    distributed.barrier(info)
    return out


def _plan_run(config: TrainConfig, data: Path, out: Path, *, fold: tuple[int, int] | None,
              resume: bool, info: distributed.DistInfo) -> RunPlan:
    """Check the dataset, the split, the batch size and the run folder before anything is
    built or written."""
    refuse_overwrite(out, [data])
    refuse_other_kind(out, "run")
    manifest = read_manifest(data)
    if config.bone_loss and not manifest["aligned_bones"]:
        raise InputError(f"{data / 'manifest.json'}: field 'aligned_bones' is empty, but the config has "
                         "bone_loss on, which needs them; set bone_loss=false or use a dataset prepared "
                         "with aligned bones (`mskdex prepare` registers the pelvis and femurs)")
    if fold is not None:
        k, n_folds = fold
        if not 0 <= k < n_folds:
            raise InputError(f"fold index must be in 0..{n_folds - 1}, got {k}")
        train_ids, test_ids = split_folds(manifest, n_folds, config.fold_seed)[k]
    else:
        train_ids, test_ids = ok_ids(manifest), []
    last = latest_checkpoint(out / "checkpoints")
    if resume and last is None:
        raise FileNotFoundError(f"{out}: nothing to resume (no checkpoints/epoch_*.json)")
    if not resume and ((out / "model.json").exists() or last is not None):
        raise FileExistsError(f"{out}: a run folder already exists here; pass --resume to continue "
                              "it or choose another output folder")
    changed = {}
    if resume:
        changed = _check_resume_config(out, config)  # first: a resume must repeat the run's --set values
        check_run_dataset(out, manifest)
    if config.batch_size % info.world:
        raise InputError(f"batch_size {config.batch_size} must be a multiple of the number of "
                         f"processes {info.world}")
    if len(train_ids) < config.batch_size:
        raise InputError(f"{data}: {len(train_ids)} training cases, fewer than batch_size "
                         f"{config.batch_size}; set a smaller batch (--set batch_size=N, N <= {len(train_ids)}) "
                         "or prepare more cases")
    return RunPlan(data, out, manifest, fold, train_ids, test_ids, resume, changed)


def _set_up(config: TrainConfig, plan: RunPlan, info: distributed.DistInfo) -> TrainingState:
    """The dataset, networks, optimisers and normalisation of a new run (its folder started)
    or of a resumed one (restored from its checkpoint); records the environment."""
    ds = PreparedDataset(plan.data, plan.train_ids, config.size,
                         flip_seed=config.seed if config.augment_flip else None, zoom_seed=config.seed,
                         max_zoom=config.augment_zoom)
    parts = build_training(config, len(ds.objects), ds.bone_index, info)
    if plan.resume:
        start, norm = _resume(config, plan, parts, info)
    else:
        start, norm = 0, _start_new_run(config, plan, ds, info)
    if info.main:
        _record_environment(plan.out / "environment.json", info, start, plan.changed)
    rows = _read_log(plan.out / "log.csv", start) if info.main else []
    parts.objective.norm = norm
    sampler = DistributedSampler(ds, num_replicas=info.world, rank=info.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    loader = DataLoader(ds, batch_size=config.batch_size // info.world, sampler=sampler,
                        drop_last=True, num_workers=config.num_workers,
                        pin_memory=info.device.type == "cuda")
    return TrainingState(ds, parts, norm, sampler, loader, start, rows)


def _start_new_run(config: TrainConfig, plan: RunPlan, ds: PreparedDataset, info: distributed.DistInfo
           ) -> Normalisation:
    """The normalisation of a new run, from its training cases; rank 0 starts the run folder
    (config.yaml, manifest.json)."""
    norm = normalisation(ds)
    norm.scale = norm.scale.to(info.device)
    if info.main:
        plan.out.mkdir(parents=True, exist_ok=True)
        write_atomic(plan.out / "config.yaml", lambda p: p.write_text(dump_config(config), encoding="utf-8"))
        write_json(plan.out / "manifest.json", plan.manifest)
    return norm


def _resume(config: TrainConfig, plan: RunPlan, parts: TrainingParts, info: distributed.DistInfo
            ) -> tuple[int, Normalisation]:
    """Restore ``parts`` from the newest readable checkpoint (the one before, with a warning,
    when the newest is damaged); (epochs it trained, its normalisation). Rank 0 records the
    config, which may differ in :data:`RESUME_MAY_CHANGE` only (:func:`_check_resume_config`)."""
    last, state = load_newest_checkpoint(plan.checkpoints)
    _check_resume_split(last, state, plan.out, plan.fold, plan.train_ids)
    if state["world_size"] != info.world:
        raise InputError(f"{last}: written by {state['world_size']} processes; resume with the "
                         f"same number (now {info.world}) to continue exactly")
    norm = Normalisation(state["x_mean"], state["x_std"], state["scale"].to(info.device))
    _restore(last, state, parts, info)
    start = state["epoch"]
    if config.epochs < start:
        raise InputError(f"{last}: the run has trained {start} epochs; resume with epochs >= "
                         f"{start} (now {config.epochs})")
    if info.main:
        write_atomic(plan.out / "config.yaml", lambda p: p.write_text(dump_config(config), encoding="utf-8"))
    return start, norm


def _owis_weight(config: TrainConfig, epoch: int) -> float:
    """lambda_is of ``epoch`` (1-based): ramped up linearly over ``owis_warmup_epochs``."""
    return config.lambda_is * (min(1.0, epoch / config.owis_warmup_epochs)
                               if config.owis_warmup_epochs else 1.0)


def _train_epoch(config: TrainConfig, state: TrainingState, epoch: int, progress: Progress | None,
                 info: distributed.DistInfo) -> EpochStats:
    """One pass over this process's shard of the training cases, a step per batch (reported
    to ``progress`` with the running means of the main terms)."""
    began = time.perf_counter()
    state.ds.set_epoch(epoch, config.seed)
    state.sampler.set_epoch(epoch)
    w_is = _owis_weight(config, epoch)
    lr = state.parts.optimizers[0].param_groups[0]["lr"]
    steps = len(state.loader)
    sums: dict[str, float] = {}
    for s, batch in enumerate(state.loader):
        values = state.parts.objective.step(batch, w_is)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        if progress is not None:
            shown = " ".join(f"{k}={sums[k] / (s + 1):.4g}" for k in ("g_total", "owis", "bone", "cycle")
                             if k in sums)
            progress(((epoch - 1) + (s + 1) / steps) / config.epochs,
                     f"epoch {epoch}/{config.epochs} {shown}")
    names = sorted(sums)
    means = distributed.mean_over_processes(
        torch.tensor([sums[k] / steps for k in names], dtype=torch.float64), info)
    return EpochStats(epoch, lr, w_is, began, dict(zip(names, means.tolist())))


def _end_epoch(config: TrainConfig, plan: RunPlan, state: TrainingState, stats: EpochStats,
               info: distributed.DistInfo) -> None:
    """Step the SGDR schedulers, log the epoch (rank 0), stop a diverged run, and checkpoint
    every ``checkpoint_every`` epochs and at the last."""
    for sch in state.parts.schedulers:
        sch.step()
    epoch = stats.epoch
    row = {"epoch": epoch, "lr": f"{stats.lr:.6g}", "lambda_is": f"{stats.lambda_is:.6g}",
           "seconds": f"{time.perf_counter() - stats.began:.2f}"}
    row.update({k: f"{v:.8g}" for k, v in stats.means.items()})
    state.rows.append(row)
    if info.main:
        _write_log(plan.out / "log.csv", state.rows)
    _check_finite(stats.means, epoch, plan.checkpoints)  # the same on every process
    if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
        _checkpoint(plan.checkpoints, epoch, state.parts, state.norm, info, split=plan.split())


def _write_model(config: TrainConfig, plan: RunPlan, state: TrainingState, info: distributed.DistInfo
                 ) -> None:
    """model.safetensors + model.json: G with its normalisation, OOD statistics from the
    training cases, split and provenance (rank 0)."""
    ds, norm = state.ds, state.norm
    meta = {"config": config.to_dict(), "objects": ds.objects, "kinds": ds.kinds,
            "aligned_bones": list(plan.manifest["aligned_bones"]),
            "scale": norm.scale.cpu().tolist(), "geometry": ds.geometry.to_json(),
            "input": {"range": [0.0, 1.0], "mean": norm.x_mean, "std": norm.x_std,
                      "normalisation": "(x - mean) / std",
                      "prepared_shape": list(ds.dataset_geometry.shape)},
            "ood": ood_statistics(state.parts.nets.G, ds, norm, info.device),
            "split": {"fold": list(plan.fold) if plan.fold else None, "fold_seed": config.fold_seed,
                      "train_ids": plan.train_ids, "test_ids": plan.test_ids},
            "dataset": {"path": str(plan.data), "n_train": len(plan.train_ids)},
            "epochs_trained": config.epochs, "world_size": info.world}
    save_model(plan.out, state.parts.nets.G, meta)


def _restore(path: Path, state: dict, parts: TrainingParts, info: distributed.DistInfo) -> None:
    """Load the networks, optimisers, schedulers, this process's image pools and RNG state from a
    checkpoint ``state`` (read from ``path``) into ``parts``; one that does not fit this code's
    networks is a ModelFormatError naming the file and the MSKdeX version that wrote it."""
    nets, pools = parts.nets, parts.objective.pools
    try:
        for name, net in zip(("G", "F", "DX", "DD"), (nets.G, nets.F, nets.DX, nets.DD)):
            if net is not None:
                net.load_state_dict(state["nets"][name])
        for o, s in zip(parts.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(parts.schedulers, state["schedulers"], strict=True):
            sch.load_state_dict(s)
        mine = state["ranks"][info.rank]
        pools[0].load_state(mine["pool_x"], info.device)
        pools[1].load_state(mine["pool_d"], info.device)
        _set_rng_state(mine["rng"])
    except torch.cuda.OutOfMemoryError:
        raise  # the device's memory, not the checkpoint
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        version = state.get("code_version", "before 0.3.2")
        raise ModelFormatError(f"{path}: does not fit this version's networks and training state "
                               f"(written by MSKdeX {version}, this is {__version__}): "
                               f"{type(e).__name__}: {str(e)[:300]}; train into another folder") from None


def _check_finite(means: dict[str, float], epoch: int, ckpt_dir: Path) -> None:
    """Stop a run whose epoch-mean losses are not finite (logged), before it checkpoints that epoch."""
    bad = [k for k, v in means.items() if not math.isfinite(v)]
    if bad:
        last = latest_checkpoint(ckpt_dir)
        kept = f"the last checkpoint, {last.name}, is kept" if last is not None else "no checkpoint was written"
        raise TrainingDiverged(f"training diverged in epoch {epoch}: the loss terms {', '.join(bad)} are "
                               f"NaN or infinite (log.csv); {kept}. Train into a new folder with a lower lr "
                               "or lambda_is (a resume keeps the config), or check the dataset")


def _checkpoint(folder: Path, epoch: int, parts: TrainingParts, norm: Normalisation,
                info: distributed.DistInfo, *, split: dict) -> None:
    """Gather every process's pools and RNG states; rank 0 writes the checkpoint (with the
    ``split`` it trains on)."""
    nets, pools = parts.nets, parts.objective.pools
    mine = {"pool_x": pools[0].state(), "pool_d": pools[1].state(), "rng": _rng_state()}
    ranks = distributed.gather_to_main(mine, info)
    if info.main:
        state = {"epoch": epoch, "world_size": info.world, "code_version": __version__,
                 "nets": {k: m.state_dict() for k, m in zip(("G", "F", "DX", "DD"),
                                                            (nets.G, nets.F, nets.DX, nets.DD))
                          if m is not None},
                 "optimizers": [o.state_dict() for o in parts.optimizers],
                 "schedulers": [s.state_dict() for s in parts.schedulers],
                 "ranks": ranks, "x_mean": norm.x_mean, "x_std": norm.x_std,
                 "scale": norm.scale.cpu(), **split}
        save_checkpoint(folder, epoch, state)
        prune_checkpoints(folder)
    distributed.barrier(info)
