"""MSKdeX backend: object-wise DRRs, synthetic cohort, registration, decomposition model.

Pure Python + PyTorch; never imports Slicer or Qt, so it runs on any server.
"""

__version__ = "0.3.19"
