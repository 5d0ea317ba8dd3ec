"""Data parallelism: torchrun with 2 CPU processes (gloo) equals 1 process, same global batch."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from MSKdeXTraining.modelio import read_safetensors
from MSKdeXTraining.training.config import load_config
from MSKdeXTraining.training.toy import write_toy_dataset
from MSKdeXTraining.training.trainer import train

#: pool_size 0: image pools are per process, so only without them are the steps identical.
OVERRIDES = {"image_size": 24, "batch_size": 4, "g_width": 4, "g_branches": 2, "g_blocks": 1,
             "g_stem_stride": 2, "f_width": 4, "f_down": 1, "f_blocks": 1, "d_width": 4,
             "d_layers": 1, "pool_size": 0, "epochs": 2, "checkpoint_every": 1, "device": "cpu"}

WORKER = """
import sys, json
from MSKdeXTraining.training.config import load_config
from MSKdeXTraining.training.trainer import train
train(load_config("small", json.loads(sys.argv[1])), sys.argv[2], sys.argv[3])
"""


def losses(run):
    with open(run / "log.csv") as fh:
        return [{k: float(v) for k, v in r.items() if v and k not in ("seconds", "epoch")}
                for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    import json
    data = write_toy_dataset(tmp_path / "data", n_cases=8, size=24)
    one = train(load_config("small", OVERRIDES), data, tmp_path / "one")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}  # torchrun's log folders, too
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(OVERRIDES), str(data), str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "environment.json").read_text())["world_size"] == 2
    la, lb = losses(one), losses(two)
    assert len(la) == len(lb) == 2
    # epoch 1 (its second step follows one all-reduced update) agrees to float rounding; by
    # epoch 2 the critics amplify the rounding of another summation order (gan_f 1.6e-3 apart on
    # one toy dataset, the other losses within 3e-4). Without the gradient all-reduce the
    # losses differ by 4.2 (epoch 1) and 0.5 (epoch 2) relative (measured).
    for ra, rb, rel in zip(la, lb, (1e-4, 1e-2)):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-5), k
    # Adam moves a weight by up to lr (1e-3) a step whatever its gradient's size, so rounding
    # that turns a tiny gradient shows in a few weights (1.5e-4 at most, 3e-5 on average per
    # tensor); without the all-reduce: 7e-3 at most, 3e-3 on average (measured)
    wa, wb = read_safetensors(one / "model.safetensors"), read_safetensors(two / "model.safetensors")
    for k in wa:
        diff = (wb[k] - wa[k]).abs()
        assert float(diff.mean()) < 3e-4 and float(diff.max()) < 2e-3, k
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "epoch_0001.json", "epoch_0001.safetensors", "epoch_0002.json", "epoch_0002.safetensors"]
    # rank 0 gathered both processes' pools and RNG states into the checkpoint
    ranks = json.loads((two / "checkpoints" / "epoch_0002.json").read_text())["state"]["ranks"]
    assert len(ranks) == 2 and all(set(r) == {"pool_x", "pool_d", "rng"} for r in ranks)


def test_device_names_are_checked():
    from MSKdeXTraining.errors import InputError
    from MSKdeXTraining.training.distributed import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="device 'banana': expected auto, cpu, cuda or cuda:K"):
        pick_device("banana")
    with pytest.raises(InputError, match=r"device 'mps': expected auto, cpu, cuda or cuda:K \(mps is not supported\)"):
        pick_device("mps")  # one line, not PyTorch's error from deep inside .to(device)
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match="CUDA is not available"):
            pick_device("cuda")
