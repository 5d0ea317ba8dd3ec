"""Evaluation of decomposition models: metrics, cross-validation, ablation, figures, reports.

The paper's protocol (Gu et al., MICCAI 2023, Sec. 3): per object PCC, ICC and MAE of the
volume (cm3) and mass (g) estimated from the predicted DRR sums against the ground truth of
the 3D CT, PSNR/SSIM of the predicted bone DRRs against the aligned bone DRRs, and a one-way
ANOVA of the absolute errors of two methods.
"""
