"""The record of the software and machine that computed a result."""

import json
import os
import platform
from importlib import metadata

import numpy as np
import scipy
import SimpleITK as sitk
import torch

from MSKdeXTraining import __version__
from MSKdeXTraining.environment import PACKAGES, cpu_model, environment


def test_environment_names_the_versions_and_the_cpu():
    env = environment()
    assert env["mskdex"] == __version__ and env["python"] == platform.python_version()
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__ and env["scipy"] == scipy.__version__
    assert env["SimpleITK"] == sitk.Version.VersionString()
    assert all(env[name] == metadata.version(name) for name in PACKAGES if name != "torch")
    assert env.get("torch_cuda") == torch.version.cuda  # a CPU build: None, and no key
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpus"] == os.cpu_count()
    assert env["cpu"] and env["platform"] == platform.platform()
    assert json.loads(json.dumps(env)) == env
    env["torch"] = "changed"  # each call's dict is its own
    assert environment()["torch"] == torch.__version__


def test_cpu_model_reads_cpuinfo_and_falls_back(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Gold 6338 CPU"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")  # no model name
    expected = platform.processor() or platform.machine()
    assert cpu_model(arm) == cpu_model(tmp_path / "absent") == expected and expected
