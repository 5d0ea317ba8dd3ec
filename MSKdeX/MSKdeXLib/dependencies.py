"""Python packages MSKdeX needs inside Slicer, and how to get them (always with the user's consent).

torch comes from the PyTorch extension (its PyTorchUtils module picks the right CPU/CUDA
build); the other packages are listed in ``Resources/requirements.txt`` and installed with
Slicer's ``pip_ensure`` (``slicer.packaging``; ``slicer.pydeps`` in the first releases that had
it), which asks the user itself, or, on older Slicer, ``slicer.util.pip_install`` after the
``confirm`` callback agrees. Nothing here imports Qt: the widget passes its confirmation dialog
in as ``confirm``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

REQUIREMENTS = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
#: The oldest Python MSKdeX runs on (pyproject's requires-python); 3D Slicer ships it from 5.10 on.
PYTHON_MIN = (3, 10)

TORCH_MISSING = (
    "MSKdeX needs PyTorch, which is not installed in this Slicer. Install the 'PyTorch' "
    "extension from the Extensions Manager (View > Extensions Manager, search 'PyTorch'), "
    "restart Slicer, then click 'Check dependencies' again: MSKdeX will ask to install a "
    "PyTorch build that fits your GPU/CPU through that extension's PyTorch Utils.")


def require_python(version: tuple[int, ...] = tuple(sys.version_info)) -> None:
    """Raise RuntimeError saying which Python (and Slicer) MSKdeX needs when ``version`` is older
    than :data:`PYTHON_MIN`: this file still loads there, the backend then fails obscurely."""
    if tuple(version[:2]) < PYTHON_MIN:
        raise RuntimeError(f"MSKdeX needs Python {'.'.join(map(str, PYTHON_MIN))} or newer, which 3D Slicer ships "
                           f"from version 5.10 on; this Slicer runs Python {'.'.join(map(str, version[:3]))}: "
                           "install a newer Slicer")


def read_requirements(path: str | Path = REQUIREMENTS) -> list[Requirement]:
    """Requirements of a requirements.txt (comments and blank lines skipped)."""
    path = Path(path)
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            out.append(Requirement(line))
        except InvalidRequirement as e:
            raise ValueError(f"{path}:{number}: not a valid requirement {line!r} ({e})") from None
    return out


def missing_requirements(requirements: list[Requirement]) -> list[Requirement]:
    """The requirements that are not installed or whose installed version does not fit."""
    missing = []
    for req in requirements:
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(req)
    return missing


def torch_available() -> bool:
    """Whether torch is importable (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def require_dependencies(path: str | Path = REQUIREMENTS) -> None:
    """Raise RuntimeError naming what is missing (torch, or packages of ``path``) and how to get it."""
    if not torch_available():
        raise RuntimeError(TORCH_MISSING)
    missing = missing_requirements(read_requirements(path))
    if missing:
        raise RuntimeError(f"MSKdeX needs these Python packages, which are not installed (or too old): "
                           f"{', '.join(map(str, missing))}. Click 'Check dependencies' to install them.")


def ensure_torch() -> None:
    """Make torch importable through the PyTorch extension (which asks the user first).

    Raises RuntimeError with :data:`TORCH_MISSING` when the extension is absent or the user
    declines.
    """
    if torch_available():
        return
    try:
        from PyTorchUtils import PyTorchUtilsLogic  # the PyTorch extension's module
    except ImportError:
        raise RuntimeError(TORCH_MISSING) from None
    if PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
        raise RuntimeError("PyTorch was not installed (cancelled). " + TORCH_MISSING)


def ensure_requirements(confirm: Callable[[str], bool], path: str | Path = REQUIREMENTS) -> list[str]:
    """Install the missing packages of ``path`` after the user agrees; returns what was missing.

    Uses Slicer's ``pip_ensure`` where it has one (:func:`slicer_pip_ensure`: it shows its own
    prompt and progress), else asks ``confirm(message)`` and calls ``slicer.util.pip_install``.
    Raises RuntimeError when the user declines.
    """
    missing = missing_requirements(read_requirements(path))
    if not missing:
        return []
    names = [str(r) for r in missing]
    pip_ensure = slicer_pip_ensure()
    if pip_ensure is not None:
        pip_ensure(missing, requester="MSKdeX")
    else:
        if not confirm(f"MSKdeX needs these Python packages: {', '.join(names)}. Install them now?"):
            raise RuntimeError(f"MSKdeX cannot run without {', '.join(names)} (installation declined)")
        import slicer.util

        slicer.util.pip_install(names)
    importlib.invalidate_caches()  # let this process see what the pip subprocess installed
    still = missing_requirements(missing)
    if still:
        raise RuntimeError(f"still missing after installation: {', '.join(map(str, still))}")
    return names


def slicer_pip_ensure() -> Callable | None:
    """Slicer's ``pip_ensure`` (``slicer.packaging``, or ``slicer.pydeps`` as it was first
    named), or ``None`` on a Slicer without one."""
    for name in ("slicer.packaging", "slicer.pydeps"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module.pip_ensure
    return None
