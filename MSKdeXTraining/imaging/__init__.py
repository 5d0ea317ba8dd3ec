"""Imaging: HU conversions, volumes, projection geometry, the DRR projector, registration."""
