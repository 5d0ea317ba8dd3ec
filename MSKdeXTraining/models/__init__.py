"""Networks of the decomposition model: generator G (HRNet), its twin F, PatchGAN critics.

All normalisations are per-sample (GroupNorm), so a network's output for one image never
depends on the other images of its batch: batch size and data-parallel world size change
only the optimisation, not the function (and 1 process equals N processes exactly).
"""

from .hrnet import Generator, HRNet, HRNetSpec
from .patchgan import PatchGAN
from .resnet import ResnetTranslator

__all__ = ["Generator", "HRNet", "HRNetSpec", "PatchGAN", "ResnetTranslator"]
