"""Gabor functions, the one definition used by the simulator's V1 cells, the fixed
Gabor-energy front end of the image tower and the Gabor-ridge baseline (numpy only)."""

from __future__ import annotations

import numpy as np


def gabor(size: int, center: tuple[float, float], orientation: float,
          spatial_frequency: float, phase: float, sigma: float,
          aspect: float = 1.0) -> np.ndarray:
  """A Gabor patch on a `size` x `size` grid.

  Args:
    size: grid side in pixels.
    center: (row, col) of the envelope centre, in pixels.
    orientation: radians; the carrier varies along this direction.
    spatial_frequency: cycles per pixel.
    phase: carrier phase in radians (0 = even/cosine, pi/2 = odd/sine).
    sigma: envelope standard deviation in pixels (along the carrier).
    aspect: envelope width across the carrier divided by `sigma`.

  Returns:
    (size, size) float32 array.
  """
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
  dy, dx = rows - center[0], cols - center[1]
  along = dx * np.cos(orientation) + dy * np.sin(orientation)
  across = -dx * np.sin(orientation) + dy * np.cos(orientation)
  envelope = np.exp(-0.5 * (along**2 / sigma**2 + across**2 / (aspect * sigma)**2))
  carrier = np.cos(2 * np.pi * spatial_frequency * along + phase)
  return (envelope * carrier).astype(np.float32)


def quadrature_bank(size: int, orientations: int, spatial_frequencies: tuple[float, ...],
                    sigma_cycles: float = 0.5) -> np.ndarray:
  """Centred even/odd Gabor pairs for a Gabor-energy front end.

  Args:
    size: kernel side in pixels.
    orientations: number of orientations evenly spaced in [0, pi).
    spatial_frequencies: cycles per pixel of each scale.
    sigma_cycles: envelope sigma in carrier cycles (sigma = sigma_cycles / frequency).

  Returns:
    (size, size, 2 * orientations * len(spatial_frequencies)) float32 kernels, zero-mean,
    unit L2 norm, ordered (frequency, orientation, [even, odd]).
  """
  c = (size - 1) / 2
  kernels = []
  for f in spatial_frequencies:
    for k in range(orientations):
      theta = np.pi * k / orientations
      for phase in (0.0, np.pi / 2):
        g = gabor(size, (c, c), theta, f, phase, sigma_cycles / f)
        g = g - g.mean()
        kernels.append(g / (np.linalg.norm(g) + 1e-8))
  return np.stack(kernels, axis=-1).astype(np.float32)


def complex_gabor_1d(offsets: np.ndarray, frequency_component: np.ndarray | float,
                     sigma: float) -> np.ndarray:
  """One axis of a circular complex Gabor, exp(-x^2 / (2 sigma^2) + 2 pi i u x).

  A `gabor` with aspect 1 is separable: gabor(..., phase=0) - 1j * gabor(..., phase=pi/2)
  equals the outer product of this factor along rows (u = f sin(orientation), x = row
  offset) and along columns (u = f cos(orientation), x = column offset).

  Args:
    offsets: pixel offsets from the envelope centre, any shape.
    frequency_component: cycles per pixel along this axis, broadcast with `offsets`.
    sigma: envelope standard deviation in pixels.

  Returns:
    complex64 array of the broadcast shape.
  """
  offsets = np.asarray(offsets, np.float64)
  envelope = np.exp(-0.5 * offsets**2 / sigma**2)
  return (envelope * np.exp(2j * np.pi * np.asarray(frequency_component) * offsets)).astype(
      np.complex64)
