"""Published CIFAR-10-C corruption parameters, per corruption and severity 1..5.

Source: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019; the authors' CIFAR generator
``hendrycks/robustness``, file ``ImageNet-C/create_c/make_cifar_c.py`` (these CIFAR values
differ from the ImageNet-C ones in ``make_imagenet_c.py``). Values are transcribed, not
tuned; each tuple has five entries, index ``severity - 1``.
"""
from __future__ import annotations

from typing import Any

IMSIZE = 32
"""Image side the published parameters were chosen for (CIFAR-10, pixels)."""

PARAMS: dict[str, tuple[Any, ...]] = {
    # --- noise ---
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of additive N(0, c) on [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson rate scale: poisson(x * c) / c
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper amount per value
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # std of multiplicative x * N(0, c)
    # --- blur ---
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma, pixels
    # (sigma, max_delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # (disk radius, anti-alias sigma), pixels
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    # (radius, sigma) of ImageMagick's motion blur, pixels; angle ~ U(-45, 45) degrees
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),
    # zoom factors np.arange(start, stop, step)
    "zoom_blur": ((1.0, 1.06, 0.01), (1.0, 1.11, 0.01), (1.0, 1.16, 0.01),
                  (1.0, 1.21, 0.01), (1.0, 1.26, 0.01)),
    # --- weather ---
    # (loc, scale, zoom, threshold, blur radius, blur sigma, blend); angle ~ U(-135, -45)
    "snow": ((0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
             (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    # (image weight, frost weight)
    "frost": ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (fog strength, plasma wibble decay)
    "fog": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),
    # (loc, scale, sigma, threshold, intensity / mud sigma, mode 0 = water, 1 = mud)
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
                (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1.0, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    # --- digital ---
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor around the per-channel mean
    # (alpha, sigma, affine jitter), pixels: IMSIZE * (0, 0, .08), ...
    "elastic_transform": ((IMSIZE * 0.0, IMSIZE * 0.0, IMSIZE * 0.08),
                          (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
                          (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
                          (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
                          (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor (PIL BOX both ways)
    "jpeg_compression": (80, 65, 58, 50, 40),  # Pillow JPEG quality
    "saturate": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),  # S * a + b
}


def param(name: str, severity: int) -> Any:
    """The published parameter of corruption ``name`` at ``severity`` (1..5)."""
    return PARAMS[name][severity - 1]
