"""Image-quality metrics shared by the image tokenizer's evaluation (`train_vq.py`) and the world model's.

The settings are those of RynnVLA-002's world-model evaluation: pixels in [0, 1] (value range 1.0), SSIM with
an 11-pixel Gaussian window of sigma 1.5, SSIM reported x100. The computations are torchmetrics'; this module
only fixes the settings, converts uint8 frames and returns one value per image, so that callers can average
over images, frames or trajectories as their tables need.
"""

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

DATA_RANGE = 1.0
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5


def frames_to_unit_tensor(frames):
    """uint8 frames (N, H, W, 3) -> float64 (N, 3, H, W) in [0, 1]; raises on anything else."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double() / 255.0


def _pair(predicted, target):
    predicted, target = frames_to_unit_tensor(predicted), frames_to_unit_tensor(target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted frames {tuple(predicted.shape)} and targets {tuple(target.shape)} differ in shape")
    return predicted, target


def psnr(predicted, target):
    """PSNR in dB of each image pair, (N,) float64; inf for identical images."""
    predicted, target = _pair(predicted, target)
    values = peak_signal_noise_ratio(predicted, target, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    return values.numpy()


def ssim(predicted, target):
    """SSIM x100 of each image pair, (N,) float64 (100 for identical images)."""
    predicted, target = _pair(predicted, target)
    values = structural_similarity_index_measure(
        predicted, target, data_range=DATA_RANGE, kernel_size=SSIM_KERNEL_SIZE, sigma=SSIM_SIGMA, reduction="none"
    )
    return 100.0 * values.numpy()
