"""What a result was computed with: package versions and the machine.

Float results depend on more than the code: session 33 found a dataset prepared on a CPU
with other vector kernels register its bones to poses that differ in the last bits, which
training then amplifies. So every result that a machine makes records :func:`environment`:
``prepare`` per case, ``train`` per run (``environment.json``), ``decompose`` per film, and the
evaluation and ablation reports.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

import torch

from . import __version__

#: Distributions whose versions decide the numbers (PyPI names; ``cma`` optimises the poses).
PACKAGES = ("torch", "numpy", "scipy", "SimpleITK", "scikit-image", "cma", "pydicom", "pillow")


def environment() -> dict:
    """The versions of MSKdeX, Python and each of :data:`PACKAGES` installed (by name; absent
    ones left out; torch's as ``torch.__version__``, and ``torch_cuda`` the CUDA it was built
    with, if any), the platform, the CPU's model name, the vector instructions PyTorch's CPU
    kernels use (``cpu_capability``, e.g. AVX512) and the number of CPUs: a new dict each call,
    of what this process found first (finding it takes 6-9 ms)."""
    return dict(_environment())


@cache
def _environment() -> dict:
    env = {"mskdex": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            # torch's own version names its build (+cpu, +cu130); its distribution's may not
            env[name] = torch.__version__ if name == "torch" else metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if torch.version.cuda:
        env["torch_cuda"] = torch.version.cuda
    return {**env, "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count()}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``; elsewhere what :mod:`platform` knows,
    else the machine type)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
