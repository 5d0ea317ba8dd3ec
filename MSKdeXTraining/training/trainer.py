"""The training loop: run folder v2, checkpoints, exact resume, data parallelism.

``train`` writes (rank 0 only) ``config.yaml``, ``manifest.json``, ``environment.json``,
``log.csv`` (every loss, mean per epoch), ``checkpoints/epoch_XXXX.*`` every
``checkpoint_every`` epochs and at the end, then ``model.safetensors`` + ``model.json``.
A checkpoint holds everything that determines the future of the run (networks,
optimisers, schedulers, image pools and RNG states of every process, normalisation), so
``resume=True`` continues from the last one exactly as if never interrupted (from the one
before, with a warning, when the last cannot be read).
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .. import __version__
from ..errors import InputError, TrainingDiverged
from ..fileio import read_json_object, refuse_overwrite, write_atomic, write_json
from ..models import Generator, PatchGAN, ResnetTranslator
from ..modelio import LAYOUT_GRID, ModelFormatError, layout, layout_correlation, save_model
from ..progress import Progress
from . import distributed
from .checkpoint import latest_checkpoint, load_newest_checkpoint, prune_checkpoints, save_checkpoint
from .config import TrainConfig, dump_config
from .data import PreparedDataset, ok_ids, read_manifest, split_folds
from .objective import LOSS_NAMES, Networks, Normalisation, Objective
from .pool import ImagePool

LOG_COLUMNS = ("epoch", "lr", "lambda_is", "seconds") + LOSS_NAMES
#: Shrinkage of the feature covariance towards its mean variance (OOD statistics).
COV_SHRINKAGE = 0.1


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
        o, T_0=config.sgdr_t0, T_mult=config.sgdr_t_mult, eta_min=config.lr_min) for o in optims]
    pools = (ImagePool(config.pool_size, [config.seed, info.rank, 0]),
             ImagePool(config.pool_size, [config.seed, info.rank, 1]))
    run = nets
    if cuda and config.compile:
        run = Networks(*(torch.compile(m) if m is not None else None
                         for m in (nets.G, nets.F, nets.DX, nets.DD)))
    objective = Objective(config, run, opt_g, opt_d, pools, None, bone_index, info)
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


def shrunk(cov: np.ndarray) -> np.ndarray:
    """``cov`` shrunk by :data:`COV_SHRINKAGE` towards its mean variance times the identity."""
    avg_var = max(float(np.trace(cov)) / len(cov), 1e-12)
    return (1 - COV_SHRINKAGE) * cov + COV_SHRINKAGE * avg_var * np.eye(len(cov))


def shrunk_covariance(f: np.ndarray) -> np.ndarray:
    """The shrunk covariance of the rows of ``f`` (n, d) (zero before shrinking for one row)."""
    return shrunk(np.atleast_2d(np.cov(f, rowvar=False) if len(f) > 1 else np.zeros((f.shape[1],) * 2)))


def leave_one_out_distances(f: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of ``f`` (n, d) to the mean and shrunk covariance of
    the other rows: what a new image meets. In-sample distances run low, the more so the
    closer d is to n (in-sample d^2 averages about d, a new image's far more), so a threshold
    from them would flag ordinary new films. With fewer than 3 rows, the in-sample distances.

    Without row i the scatter matrix loses k d_i d_i^T (d_i = f_i - mean, k = n / (n - 1)), so
    in the eigenbasis of the full scatter each covariance is a diagonal minus a rank-one
    term: one eigendecomposition, then Sherman-Morrison, O(n d^2) in all."""
    n, dim = f.shape
    d = f - f.mean(0)
    if n < 3:
        return np.sqrt(np.einsum("bi,ij,bj->b", d, np.linalg.inv(shrunk_covariance(f)), d))
    eigval, eigvec = np.linalg.eigh(d.T @ d)
    w2 = (d @ eigvec) ** 2  # each row's d_i in the eigenbasis, squared
    k, a = n / (n - 1), (1 - COV_SHRINKAGE) / (n - 2)
    avg_var = np.maximum((eigval.sum() - k * w2.sum(1)) / ((n - 2) * dim), 1e-12)
    # cov_-i = diag(a * eigval + shrinkage * avg_var_i) - a k w_i w_i^T; the distance of
    # f_i - (mean of the others) = k d_i by Sherman-Morrison
    q = (w2 / (a * eigval[None, :] + COV_SHRINKAGE * avg_var[:, None])).sum(1)
    # q + c q^2 / (1 - c q) = q / (1 - c q); near-identical rows make 1 - c q round to <= 0
    return k * np.sqrt(q / np.maximum(1.0 - a * k * q, 1e-12))


@torch.no_grad()
def ood_statistics(G: Generator, ds: PreparedDataset, norm: Normalisation,
                   device: torch.device) -> dict:
    """Training-set statistics for the out-of-distribution check (:meth:`LoadedModel.ood`):
    mean/std over images of the per-image intensity mean and std; mean and shrunk
    covariance of G's pooled head features and the 99th percentile of the training
    images' leave-one-out Mahalanobis distances; the mean block layout (layout check) and the
    [min, median] of the training images' correlations with the mean of the others (as a new
    film meets it: in-sample correlations run high when the images are few)."""
    G.eval()
    feats, means, stds, layouts = [], [], [], []
    for i in range(len(ds)):
        x = ds.load(i)["xray"][None].to(device)
        feats.append(G.pooled_features(norm.xin(x)).double().cpu()[0])
        means.append(float(x.mean()))
        stds.append(float(x.std(correction=0)))  # as LoadedModel.ood computes it (numpy, ddof 0)
        layouts.append(layout(x.cpu()))
    G.train()
    layouts = torch.cat(layouts)
    layout_mean = layouts.mean(0)
    n = len(layouts)
    others = (n * layout_mean - layouts) / (n - 1) if n > 1 else layouts
    layout_r = torch.cat([layout_correlation(layouts[i:i + 1], others[i]) for i in range(n)]).numpy()
    f = torch.stack(feats).numpy()
    maha = leave_one_out_distances(f)
    return {"intensity_mean": [float(np.mean(means)), max(float(np.std(means)), 1e-6)],
            "intensity_std": [float(np.mean(stds)), max(float(np.std(stds)), 1e-6)],
            "feature_mean": f.mean(0).tolist(), "feature_cov": shrunk_covariance(f).tolist(),
            "feature_p99": max(float(np.percentile(maha, 99)), 1e-6), "n_images": len(f),
            "feature_p99_of": "leave-one-out distances" if len(f) > 2 else "in-sample distances",
            "feature": "global mean of G's HRNetV2 head features", "shrinkage": COV_SHRINKAGE,
            "layout_mean": layout_mean.tolist(), "layout_grid": LAYOUT_GRID,
            "layout_r_min_median": [float(layout_r.min()), float(np.median(layout_r))],
            "layout_r_of": "leave-one-out correlations" if n > 1 else "in-sample correlations"}


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
    with path.open() as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, lambda p: p.write_text(buf.getvalue()))


def _environment(info: distributed.DistInfo) -> dict:
    env = {"mskdex": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "platform": platform.platform(), "device": str(info.device),
           "world_size": info.world, "threads": torch.get_num_threads()}
    if info.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(info.device)
    return env


def _record_environment(path: Path, info: distributed.DistInfo, start: int) -> None:
    """Write the environment of a run (``start`` 0) or, on a resume from epoch ``start``, add
    it to the list ``resumes`` of the record (dropping resumes from ``start`` on, which trained
    no checkpoint that is kept): which machine trained which epochs. A resume without a record
    leaves the first machine unknown."""
    env = _environment(info)
    if start:
        first = read_json_object(path, (), InputError) if path.is_file() else {}
        kept = [r for r in first.get("resumes", []) if r.get("after_epoch", 0) < start]
        env = {**first, "resumes": [*kept, {"after_epoch": start, **env}]}
    write_json(path, env)


#: Config fields a resume may change: how long to train and when to checkpoint, neither of
#: which changes what an epoch computes (not ``num_workers``: a data loader worker runs one
#: thread, which may round a resampling otherwise).
RESUME_MAY_CHANGE = ("epochs", "checkpoint_every")


def _check_resume_config(out: Path, config: TrainConfig) -> None:
    import yaml
    path = out / "config.yaml"
    try:
        old = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(old, dict):
        raise InputError(f"{path}: expected a mapping of settings, got {type(old).__name__}")
    new = config.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k))
    if diff:
        raise InputError(f"{out}: cannot resume with a different config (changed: {diff}); "
                         f"only {', '.join(map(repr, RESUME_MAY_CHANGE))} may change")


#: Manifest fields that may differ between copies of one dataset (where its cohort lies; the
#: cohort's hash, which manifests before session 12 lack).
_PLACE_FIELDS = ("cohort", "cohort_sha256")


def check_run_dataset(out: Path, manifest: dict) -> None:
    """Refuse a run folder started on another dataset than ``manifest`` (its copy in
    ``out/manifest.json``), naming the fields that differ."""
    path = Path(out) / "manifest.json"
    if not path.is_file():
        return  # nothing trained yet
    started, now = read_json_object(path, (), InputError), json.loads(json.dumps(manifest))
    diff = sorted(k for k in set(started) | set(now)
                  if k not in _PLACE_FIELDS and started.get(k) != now.get(k))
    if diff:
        raise InputError(f"{path}: the run was started on another dataset ({', '.join(diff)} differ); "
                         "continue it on the dataset it was started on, or train into another folder")


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


def train(config: TrainConfig, data: str | Path, out: str | Path,
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
        return _train(config, Path(data), Path(out), fold, resume, progress, info)
    finally:
        distributed.shutdown(info)


def _train(config: TrainConfig, data: Path, out: Path, fold, resume: bool,
           progress: Progress | None, info: distributed.DistInfo) -> Path:
    refuse_overwrite(out, [data])
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
    if config.batch_size % info.world:
        raise InputError(f"batch_size {config.batch_size} must be a multiple of the number of "
                         f"processes {info.world}")
    if len(train_ids) < config.batch_size:
        raise InputError(f"{data}: {len(train_ids)} training cases, fewer than batch_size "
                         f"{config.batch_size}")
    ckpt_dir = out / "checkpoints"
    last = latest_checkpoint(ckpt_dir) if resume else None
    if resume and last is None:
        raise FileNotFoundError(f"{out}: nothing to resume (no checkpoints/epoch_*.json)")
    if not resume and ((out / "model.json").exists() or latest_checkpoint(ckpt_dir) is not None):
        raise FileExistsError(f"{out}: a run folder already exists here; pass --resume to continue "
                              "it or choose another output folder")
    if resume:
        _check_resume_config(out, config)
        check_run_dataset(out, manifest)

    ds = PreparedDataset(data, train_ids, config.size,
                         flip_seed=config.seed if config.augment_flip else None)
    parts = build_training(config, len(ds.objects), ds.bone_index, info)
    nets, objective = parts.nets, parts.objective
    optims, scheds, pools = parts.optimizers, parts.schedulers, objective.pools
    dev = info.device

    start = 0
    if last is not None:
        last, state = load_newest_checkpoint(ckpt_dir)  # the one before when the newest is damaged
        _check_resume_split(last, state, out, fold, train_ids)
        if state["world_size"] != info.world:
            raise InputError(f"{last}: written by {state['world_size']} processes; resume with the "
                             f"same number (now {info.world}) to continue exactly")
        norm = Normalisation(state["x_mean"], state["x_std"], state["scale"].to(dev))
        _restore(last, state, nets, optims, scheds, pools, info)
        start = state["epoch"]
        if config.epochs < start:
            raise InputError(f"{last}: the run has trained {start} epochs; resume with epochs >= "
                             f"{start} (now {config.epochs})")
        if info.main:  # the config may differ in RESUME_MAY_CHANGE only (_check_resume_config)
            write_atomic(out / "config.yaml", lambda p: p.write_text(dump_config(config)))
    else:
        norm = normalisation(ds)
        norm.scale = norm.scale.to(dev)
        if info.main:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / "config.yaml", lambda p: p.write_text(dump_config(config)))
            write_json(out / "manifest.json", manifest)
    if info.main:
        _record_environment(out / "environment.json", info, start)
    rows = _read_log(out / "log.csv", start) if info.main else []

    objective.norm = norm
    sampler = DistributedSampler(ds, num_replicas=info.world, rank=info.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    loader = DataLoader(ds, batch_size=config.batch_size // info.world, sampler=sampler,
                        drop_last=True, num_workers=config.num_workers,
                        pin_memory=dev.type == "cuda")
    steps = len(loader)
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        ds.set_epoch(epoch, config.seed)
        sampler.set_epoch(epoch)
        w_is = config.lambda_is * (min(1.0, epoch / config.owis_warmup_epochs)
                                   if config.owis_warmup_epochs else 1.0)
        lr = optims[0].param_groups[0]["lr"]
        sums: dict[str, float] = {}
        for s, batch in enumerate(loader):
            values = objective.step(batch, w_is)
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
        for sch in scheds:
            sch.step()
        row = {"epoch": epoch, "lr": f"{lr:.6g}", "lambda_is": f"{w_is:.6g}",
               "seconds": f"{time.perf_counter() - t0:.2f}"}
        row.update({k: f"{float(v):.8g}" for k, v in zip(names, means)})
        rows.append(row)
        if info.main:
            _write_log(out / "log.csv", rows)
        _check_finite(dict(zip(names, means.tolist())), epoch, ckpt_dir)  # the same on every process
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
            _checkpoint(ckpt_dir, epoch, nets, optims, scheds, pools, norm, info,
                        {"fold": list(fold) if fold else None, "train_ids": train_ids})
    if info.main:
        meta = {"config": config.to_dict(), "objects": ds.objects, "kinds": ds.kinds,
                "aligned_bones": list(manifest["aligned_bones"]),
                "scale": norm.scale.cpu().tolist(), "geometry": ds.geometry.to_json(),
                "input": {"range": [0.0, 1.0], "mean": norm.x_mean, "std": norm.x_std,
                          "normalisation": "(x - mean) / std",
                          "prepared_shape": list(ds.dataset_geometry.shape)},
                "ood": ood_statistics(nets.G, ds, norm, dev),
                "split": {"fold": list(fold) if fold else None, "fold_seed": config.fold_seed,
                          "train_ids": train_ids, "test_ids": test_ids},
                "dataset": {"path": str(data), "n_train": len(train_ids)},
                "epochs_trained": config.epochs, "world_size": info.world}
        save_model(out, nets.G, meta)
    distributed.barrier(info)
    return out


def _restore(path: Path, state: dict, nets: Networks, optims, scheds, pools, info: distributed.DistInfo
             ) -> None:
    """Load the networks, optimisers, schedulers, this process's image pools and RNG state from a
    checkpoint ``state`` (read from ``path``); one that does not fit this code's networks is a
    ModelFormatError naming the file and the MSKdeX version that wrote it."""
    try:
        for name, net in zip(("G", "F", "DX", "DD"), (nets.G, nets.F, nets.DX, nets.DD)):
            if net is not None:
                net.load_state_dict(state["nets"][name])
        for o, s in zip(optims, state["optimizers"], strict=True):
            o.load_state_dict(s)
        for sch, s in zip(scheds, state["schedulers"], strict=True):
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


def _checkpoint(folder: Path, epoch: int, nets: Networks, optims, scheds, pools, norm: Normalisation,
                info: distributed.DistInfo, split: dict) -> None:
    """Gather every process's pools and RNG states; rank 0 writes the checkpoint (with the
    ``split`` it trains on)."""
    mine = {"pool_x": pools[0].state(), "pool_d": pools[1].state(), "rng": _rng_state()}
    ranks = distributed.gather_to_main(mine, info)
    if info.main:
        state = {"epoch": epoch, "world_size": info.world, "code_version": __version__,
                 "nets": {k: m.state_dict() for k, m in zip(("G", "F", "DX", "DD"),
                                                            (nets.G, nets.F, nets.DX, nets.DD))
                          if m is not None},
                 "optimizers": [o.state_dict() for o in optims],
                 "schedulers": [s.state_dict() for s in scheds],
                 "ranks": ranks, "x_mean": norm.x_mean, "x_std": norm.x_std,
                 "scale": norm.scale.cpu(), **split}
        save_checkpoint(folder, epoch, state)
        prune_checkpoints(folder)
    distributed.barrier(info)
