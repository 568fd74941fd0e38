"""Image processing in torch for training batches: resize, random affine augmentation, PCA degradation.
The centre crop is array-agnostic and lives with the deployment side (racmkd.data.signals)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from racmkd.data import signals
from racmkd.data.signals import center_crop as center_crop  # slicing: the same for tensors and arrays


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a batch (B, H, W) to `size` x `size`, with the resampling
    matrices of `racmkd.data.signals.resize_matrix` (the weights torch's antialiased `interpolate`
    uses): training and deployment resize with the very same weights."""
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    rows, cols = (torch.from_numpy(signals.resize_matrix(n, size)).to(images.dtype) for n in (h, w))
    return rows @ images @ cols.T  # (size, H) @ (B, H, W) @ (W, size)


def affine_grid(theta: torch.Tensor, height: int, width: int, align_corners: bool) -> torch.Tensor:
    """`F.affine_grid(theta, [B, C, height, width], align_corners)` for 2-D grids, by broadcasting:
    the same grid (equal with align_corners, within 1e-6 without), 3x faster on CPU, where torch
    multiplies a (B, H*W, 3) base grid by theta (16-24 ms for a batch of 128 power spectrograms of
    257 x 32, a fifth of a low student's training step)."""

    def axis(n: int) -> torch.Tensor:  # pixel centres in grid coordinates [-1, 1] (one pixel: at 0)
        if align_corners:
            return torch.linspace(-1.0, 1.0, n, dtype=theta.dtype) if n > 1 else torch.zeros(1, dtype=theta.dtype)
        return (torch.arange(n, dtype=theta.dtype) * 2 + 1) / n - 1

    xs, ys = axis(width)[None, None, :], axis(height)[None, :, None]
    t = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    return torch.stack([t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2], t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]], dim=-1)


def random_affine(images: torch.Tensor, generator: torch.Generator, rotation_deg: float, shift: float, zoom: float) -> torch.Tensor:
    """Rotate by up to +-rotation_deg, shift by up to +-shift of the size, zoom by up to +-zoom,
    each drawn per image: the augmentation of the seed paper, on a batch (B, H, W)."""
    b = images.shape[0]
    uniform = lambda: torch.rand(b, generator=generator) * 2 - 1  # noqa: E731 - in [-1, 1)
    angle = uniform() * math.radians(rotation_deg)
    scale = 1.0 + uniform() * zoom
    tx, ty = uniform() * shift * 2, uniform() * shift * 2  # grid coordinates span 2 units per image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = affine_grid(theta, *images.shape[-2:], align_corners=False)
    return F.grid_sample(images.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(1)


def fit_pca(images: np.ndarray, variance: float) -> tuple[PCA, int]:
    """PCA of flattened training images; the fewest components whose explained variance reaches `variance`."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    pca = PCA(svd_solver="covariance_eigh").fit(flat)
    kept = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), variance) + 1)
    return pca, kept


def pca_reconstruct(images: np.ndarray, pca: PCA, kept: int, batch: int = 10000) -> np.ndarray:
    """Replace each uint8 image by its reconstruction from the first `kept` components, clipped to
    [0, 1] and stored as uint8 again, the way a camera would deliver it."""
    out = np.empty_like(images)
    comps = pca.components_[:kept].astype(np.float32)
    mean = pca.mean_.astype(np.float32)
    for start in range(0, len(images), batch):
        flat = images[start : start + batch].reshape(-1, comps.shape[1]).astype(np.float32) / 255.0
        recon = (flat - mean) @ comps.T @ comps + mean
        out[start : start + batch] = np.clip(np.rint(recon * 255.0), 0, 255).astype(np.uint8).reshape(-1, *images.shape[1:])
    return out
