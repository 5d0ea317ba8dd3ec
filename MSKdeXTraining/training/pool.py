"""Image pool of generated images for the discriminators (Shrivastava et al. 2017, CycleGAN)."""

from __future__ import annotations

import numpy as np
import torch


class ImagePool:
    """Keeps up to ``size`` past fakes; each query returns, per image, the new one or (p=0.5,
    once full) a stored one that the new image then replaces. ``size`` 0 returns the input.

    Randomness comes from its own ``numpy`` generator, saved by :meth:`state`.
    """

    def __init__(self, size: int, seed: int | list[int]) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self.rng.random() < 0.5:
                k = int(self.rng.integers(self.size))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state(self) -> dict:
        """JSON-able RNG state plus the stored images as one tensor (or None)."""
        return {"rng": self.rng.bit_generator.state,
                "images": torch.stack(self.images).cpu() if self.images else None}

    def load_state(self, state: dict, device: torch.device) -> None:
        self.rng.bit_generator.state = state["rng"]
        images = state["images"]
        self.images = [] if images is None else [im.to(device) for im in images]
