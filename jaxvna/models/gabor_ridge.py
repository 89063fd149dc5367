"""Gabor-energy features + ridge regression: the classic, non-deep encoding model
(Kay, Naselaris, Prenger & Gallant 2008) used as a reference for identification.

Images become the energies of a Gabor wavelet pyramid (several spatial frequencies, 8
orientations, positions tiling the image at each scale, quadrature pairs), compressed by
log(1 + x); a ridge regression per neuron maps standardised features to responses, with the
penalty chosen by leave-one-out cross-validation on the training images. Identification then
correlates predicted with measured population responses (`identify`).

Numpy only: a circular complex Gabor is separable, so each scale of the pyramid is
two BLAS matmuls (along columns, then rows, evaluated only at the grid positions); the
ridge path for all penalties, and their leave-one-out errors, come from one
eigendecomposition of the smaller Gram matrix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxvna import correlation
from jaxvna.data.dataset import DataError
from jaxvna.gabor import complex_gabor_1d, gabor

# Cycles per image (along its shorter side), one octave apart, as in Kay et al. (2008)
# without their 32 cycles/image scale, which is above Nyquist for 64-pixel images.
DEFAULT_SPATIAL_FREQUENCIES = (1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_ALPHAS = np.logspace(-2, 5, 15)
COMPRESSIONS = ("none", "sqrt", "log1p")


# ----------------------------------------------------------------------------- features

@dataclasses.dataclass(frozen=True)
class _Scale:
  """One spatial frequency of the pyramid on a given image size.

  Each unit's even/odd kernels are `quadrature_bank`'s: a circular Gabor on a
  (2 * half + 1)^2 square, minus its mean, over its norm. Because the complex Gabor is
  separable and the square is a product of two intervals, a unit's even output is
  (Re(z) - even_mean * box) / even_norm with z the separable complex Gabor output and box
  the plain sum of the image over the square (odd: -Im(z), odd_mean, odd_norm).
  """
  cycles_per_image: float
  wavelength: float          # pixels
  sigma: float               # envelope standard deviation, pixels
  rows: np.ndarray           # (n_rows,) int, centre rows of the grid
  cols: np.ndarray           # (n_cols,) int, centre columns of the grid
  row_factors: np.ndarray    # (H, n_rows, O) complex, zero beyond `half` from the centre
  col_factors: np.ndarray    # (W, n_cols, O) complex
  row_box: np.ndarray        # (H, n_rows) float32, 1 within `half` of the centre
  col_box: np.ndarray        # (W, n_cols) float32
  even_mean: np.ndarray      # (O,) mean of the raw even kernel per orientation
  odd_mean: np.ndarray       # (O,)
  even_norm: np.ndarray      # (O,) L2 norm of the mean-subtracted even kernel
  odd_norm: np.ndarray       # (O,)


def _grid_centres(length: int, step: float) -> np.ndarray:
  """Integer centres of `round(length / step)` cells tiling [0, length)."""
  n = max(1, int(round(length / step)))
  return np.floor((np.arange(n) + 0.5) * length / n).astype(np.int64)


def _axis_factors(length: int, centres: np.ndarray, half: int, sigma: float,
                  frequency_components: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(length, n, O) complex Gabor factors and (length, n) box along one image axis."""
  offsets = np.arange(length)[:, None] - centres[None, :]
  inside = np.abs(offsets) <= half
  factors = complex_gabor_1d(offsets[..., None], frequency_components, sigma)
  return factors * inside[..., None], inside.astype(np.float32)


def _pyramid(height: int, width: int, spatial_frequencies: Sequence[float],
             orientations: int, sigma_cycles: float,
             spacing_wavelengths: float) -> list[_Scale]:
  """The scales of the pyramid for `height` x `width` images."""
  if orientations < 1:
    raise ValueError(f"orientations must be >= 1, got {orientations}")
  if sigma_cycles <= 0 or spacing_wavelengths <= 0:
    raise ValueError("sigma_cycles and spacing_wavelengths must be positive, got "
                     f"{sigma_cycles} and {spacing_wavelengths}")
  side = min(height, width)
  thetas = np.pi * np.arange(orientations) / orientations
  scales = []
  for f in spatial_frequencies:
    wavelength = side / float(f)
    if not wavelength >= 2.0:
      raise ValueError(f"spatial frequency {f} cycles/image is above Nyquist for "
                       f"{height}x{width} images (wavelength {wavelength:.2f} px < 2 px)")
    sigma = sigma_cycles * wavelength
    # +-3 sigma holds the whole envelope; offsets beyond the image never meet a pixel.
    half = min(math.ceil(3 * sigma), max(height, width) - 1)
    size = 2 * half + 1
    raw = [[gabor(size, (half, half), t, 1.0 / wavelength, phase, sigma).astype(np.float64)
            for t in thetas] for phase in (0.0, np.pi / 2)]
    means = [np.array([k.mean() for k in ks]) for ks in raw]
    norms = [np.array([np.linalg.norm(k - k.mean()) + 1e-8 for k in ks]) for ks in raw]
    step = spacing_wavelengths * wavelength
    rows, cols = _grid_centres(height, step), _grid_centres(width, step)
    row_factors, row_box = _axis_factors(height, rows, half, sigma, np.sin(thetas) / wavelength)
    col_factors, col_box = _axis_factors(width, cols, half, sigma, np.cos(thetas) / wavelength)
    scales.append(_Scale(float(f), wavelength, sigma, rows, cols, row_factors, col_factors,
                         row_box, col_box, means[0], means[1], norms[0], norms[1]))
  return scales


def _grey_images(images: np.ndarray) -> np.ndarray:
  """(N, H, W, C) or (N, H, W) uint8/float in [0, 1] -> (N, H, W) float32, each image
  minus its own mean (so a unit's response never depends on the other images)."""
  images = np.asarray(images)
  if images.ndim == 4:
    grey = images.mean(axis=-1, dtype=np.float32)
  elif images.ndim == 3:
    grey = images.astype(np.float32)
  else:
    raise DataError(f"images: expected shape (N, H, W, C) or (N, H, W), got {images.shape}")
  if images.dtype == np.uint8:
    grey /= 255.0
  elif not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"images: expected uint8 or float in [0, 1], got dtype {images.dtype}")
  elif grey.size and (grey.min() < -1e-6 or grey.max() > 1 + 1e-6):
    raise DataError(f"images: float images must lie in [0, 1], got range "
                    f"[{grey.min():.3g}, {grey.max():.3g}]")
  return grey - grey.mean(axis=(1, 2), keepdims=True)


def _scale_energy(grey: np.ndarray, scale: _Scale) -> np.ndarray:
  """(N, H, W) -> (N, n_rows, n_cols, O) quadrature energies of one scale.

  Pixels beyond the image count as zero (its mean grey after mean subtraction), so units
  near the border see only the part of their kernel that covers the image. Two matmuls:
  along columns for all (column centre, orientation), then along rows per orientation.
  """
  n, height, width = grey.shape
  n_rows, n_cols, o = scale.row_factors.shape[1], scale.col_factors.shape[1], scale.even_mean.size
  col_factors = scale.col_factors.reshape(width, n_cols * o)
  along_cols = grey.reshape(n * height, width) @ np.concatenate(
      [col_factors.real, col_factors.imag, scale.col_box], axis=1)
  along_cols = along_cols.reshape(n, height, -1)
  z_cols = (along_cols[..., :n_cols * o] + 1j * along_cols[..., n_cols * o:2 * n_cols * o])
  # (O, N * n_cols, H) @ (O, H, n_rows): one batched complex matmul over orientations.
  z_cols = z_cols.astype(np.complex64).reshape(n, height, n_cols, o).transpose(3, 0, 2, 1)
  z = z_cols.reshape(o, n * n_cols, height) @ scale.row_factors.transpose(2, 0, 1)
  z = z.reshape(o, n, n_cols, n_rows).transpose(1, 3, 2, 0)  # (N, n_rows, n_cols, O)
  box = np.einsum("nhc,hr->nrc", along_cols[..., 2 * n_cols * o:], scale.row_box)[..., None]
  even = (z.real - scale.even_mean * box) / scale.even_norm
  odd = (-z.imag - scale.odd_mean * box) / scale.odd_norm
  return np.sqrt(even**2 + odd**2)


def _compress(energy: np.ndarray, compression: str) -> np.ndarray:
  if compression == "log1p":
    return np.log1p(energy)
  if compression == "sqrt":
    return np.sqrt(energy)
  return energy


def _check_compression(compression: str) -> None:
  if compression not in COMPRESSIONS:
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


def resolvable_frequencies(height: int, width: int,
                           spatial_frequencies: Sequence[float] = DEFAULT_SPATIAL_FREQUENCIES
                           ) -> tuple[float, ...]:
  """The `spatial_frequencies` (cycles per image) that `height` x `width` images can carry:
  a wavelength of at least 2 pixels along the shorter side. 31x31 images drop 16."""
  return tuple(f for f in spatial_frequencies if min(height, width) / float(f) >= 2.0)


def gabor_energy_features(images: np.ndarray, *,
                          spatial_frequencies: Sequence[float] = DEFAULT_SPATIAL_FREQUENCIES,
                          orientations: int = 8, sigma_cycles: float = 0.5,
                          spacing_wavelengths: float = 1.0, compression: str = "log1p",
                          chunk_size: int = 128) -> np.ndarray:
  """Gabor-energy pyramid features of a batch of images.

  Colour is averaged to grey; uint8 is scaled to [0, 1] (float input must already lie in
  [0, 1]); each image has its own mean subtracted. At each spatial frequency f (cycles per
  image along the shorter side; wavelength L = min(H, W) / f pixels) a grid of positions
  with step `spacing_wavelengths * L` tiles the image, and at each position and
  orientation a zero-mean, unit-norm quadrature pair (envelope sigma = sigma_cycles * L)
  gives the energy sqrt(even^2 + odd^2), then `compression` is applied.

  With the defaults a square image has 8 * (1 + 4 + 16 + 64 + 256) = 2728 features,
  whatever its resolution.

  Args:
    images: (N, H, W, C) or (N, H, W), uint8 or float in [0, 1].
    spatial_frequencies: cycles per image of each scale.
    orientations: orientations evenly spaced in [0, pi).
    sigma_cycles: envelope sigma in carrier wavelengths.
    spacing_wavelengths: grid step in wavelengths.
    compression: "log1p" (log(1 + energy)), "sqrt" or "none".
    chunk_size: images per chunk; bounds memory to about
      a few times chunk_size * H * n_cols * orientations * 8 bytes (finest grid).

  Returns:
    (N, F) float32, ordered (frequency, row, column, orientation); see `pyramid_layout`.
  """
  _check_compression(compression)
  images = np.asarray(images)
  if images.ndim not in (3, 4):
    raise DataError(f"images: expected shape (N, H, W, C) or (N, H, W), got {images.shape}")
  n, height, width = images.shape[:3]
  scales = _pyramid(height, width, spatial_frequencies, orientations, sigma_cycles,
                    spacing_wavelengths)
  num_features = sum(len(s.rows) * len(s.cols) * orientations for s in scales)
  features = np.empty((n, num_features), np.float32)
  for start in range(0, n, chunk_size):
    grey = _grey_images(images[start:start + chunk_size])
    column = 0
    for scale in scales:
      energy = _scale_energy(grey, scale).reshape(len(grey), -1)
      features[start:start + len(grey), column:column + energy.shape[1]] = (
          _compress(energy, compression))
      column += energy.shape[1]
  return features


def pyramid_layout(image_shape: tuple[int, int], *,
                   spatial_frequencies: Sequence[float] = DEFAULT_SPATIAL_FREQUENCIES,
                   orientations: int = 8, sigma_cycles: float = 0.5,
                   spacing_wavelengths: float = 1.0) -> dict[str, np.ndarray]:
  """What each column of `gabor_energy_features` is, for (H, W) images.

  Returns:
    Dict of (F,) arrays: "cycles_per_image", "cycles_per_pixel", "orientation" (radians,
    the direction the carrier varies along), "row", "col" (pixel centre), "sigma" (pixels).
  """
  height, width = image_shape
  scales = _pyramid(height, width, spatial_frequencies, orientations, sigma_cycles,
                    spacing_wavelengths)
  columns = {k: [] for k in ("cycles_per_image", "cycles_per_pixel", "orientation", "row",
                             "col", "sigma")}
  thetas = np.pi * np.arange(orientations) / orientations
  for s in scales:
    rows, cols, theta = np.meshgrid(s.rows, s.cols, thetas, indexing="ij")
    columns["row"].append(rows.ravel())
    columns["col"].append(cols.ravel())
    columns["orientation"].append(theta.ravel())
    for key, value in (("cycles_per_image", s.cycles_per_image),
                       ("cycles_per_pixel", 1.0 / s.wavelength), ("sigma", s.sigma)):
      columns[key].append(np.full(rows.size, value))
  return {k: np.concatenate(v) for k, v in columns.items()}


# ----------------------------------------------------------------------------- ridge

def trial_average(responses: np.ndarray) -> np.ndarray:
  """(N, K) or NaN-padded (N, R, K) responses -> (N, K) float64 mean over repeats.

  Raises:
    DataError: wrong rank, or an (image, neuron) with no recorded repeat.
  """
  responses = np.asarray(responses, dtype=np.float64)
  if responses.ndim == 3:
    recorded = np.isfinite(responses)
    counts = recorded.sum(axis=1)
    mean = np.where(recorded, responses, 0.0).sum(axis=1) / np.maximum(counts, 1)
    mean[counts == 0] = np.nan
  elif responses.ndim == 2:
    mean = responses
  else:
    raise DataError(f"responses: expected shape (N, K) or (N, R, K), got {responses.shape}")
  if not np.isfinite(mean).all():
    image, neuron = np.argwhere(~np.isfinite(mean))[0]
    raise DataError(f"responses: image {image}, neuron {neuron} has no finite response "
                    "(every repeat NaN or inf)")
  return mean


def _ridge_factors(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Factors (B, s2, Z) with ridge coefficients (X^T X + a I)^-1 X^T Y = B diag(1/(s2 + a)) Z.

  s2 are the squared singular values of X = U S V^T. They come from the eigendecomposition
  of the smaller Gram matrix (X^T X = V S^2 V^T when N >= P, else X X^T = U S^2 U^T),
  2-3x faster here than an SVD of X; B = V, Z = V^T X^T Y in the first case and
  B = X^T U, Z = U^T Y in the second.

  Args:
    x: (N, P) float64 design matrix.
    y: (N, K) float64 targets.
  """
  if x.shape[0] >= x.shape[1]:
    s2, v = np.linalg.eigh(x.T @ x)
    basis, projected = v, v.T @ (x.T @ y)
  else:
    s2, u = np.linalg.eigh(x @ x.T)
    basis, projected = x.T @ u, u.T @ y
  return basis, np.clip(s2, 0.0, None), projected


def ridge_coefficients(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
  """Ridge solutions (X^T X + a I)^-1 X^T Y for every penalty, without an intercept.

  Args:
    x: (N, P) design matrix.
    y: (N, K) targets.
    alphas: (A,) penalties, > 0.

  Returns:
    (A, P, K) float64.
  """
  basis, s2, projected = _ridge_factors(np.asarray(x, np.float64), np.asarray(y, np.float64))
  return np.stack([basis @ (projected / (s2 + a)[:, None]) for a in alphas])


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Column means and standard deviations (constant columns get std 1)."""
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  return mean, np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)


class RidgeCV:
  """Ridge regression from features to each neuron's response, penalty chosen by
  leave-one-out cross-validation.

  Features are standardised with the training mean and standard deviation and responses
  centred (an unpenalised intercept). One eigendecomposition of the smaller Gram matrix
  gives the in-sample fit of every penalty, and the leave-one-out residuals follow from
  it exactly: e_i / (1 - h_ii), with h the hat matrix's diagonal (Allen's PRESS; the
  standardisation is the all-rows one, as in scikit-learn's RidgeCV). The penalty is
  chosen per neuron (or one shared by all, maximising the mean) by leave-one-out R^2; the
  model is then the all-rows fit at that penalty.

  Attributes (after `fit`):
    alpha_: (K,) chosen penalty per neuron (all equal when `alpha_per_neuron=False`).
    cv_score_: (K,) correlation between leave-one-out predictions and measured responses
      at `alpha_`.
    cv_r2_: (A, K) leave-one-out R^2 for every penalty in `alphas_`.
    alphas_: (A,) the penalties tried.
    coef_: (F, K) weights on standardised features; intercept_: (K,).
    feature_mean_, feature_std_: (F,) the standardisation.
  """

  def __init__(self, *, alpha_per_neuron: bool = True):
    self.alpha_per_neuron = alpha_per_neuron

  def fit(self, features: np.ndarray, responses: np.ndarray, *,
          alphas: Sequence[float] = DEFAULT_ALPHAS) -> "RidgeCV":
    """Chooses the penalties by leave-one-out cross-validation and fits on all rows.

    Args:
      features: (N, F), N >= 3.
      responses: (N, K) trial-averaged, or (N, R, K) NaN-padded repeats (averaged here).
      alphas: (A,) penalties to try, > 0.

    Returns:
      self.
    """
    x = np.asarray(features, np.float64)
    y = trial_average(responses)
    alphas = np.asarray(alphas, np.float64).ravel()
    if x.ndim != 2:
      raise DataError(f"features: expected shape (N, F), got {x.shape}")
    if not np.isfinite(x).all():
      raise DataError("features: contain NaN or inf")
    if x.shape[0] != y.shape[0]:
      raise DataError(f"responses: {y.shape[0]} images but features have {x.shape[0]} rows")
    if x.shape[0] < 3:
      raise DataError(f"features: leave-one-out needs at least 3 rows, got {x.shape[0]}")
    if alphas.size == 0 or (alphas <= 0).any():
      raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}")

    n = x.shape[0]
    self.feature_mean_, self.feature_std_ = _standardise(x)
    self.intercept_ = y.mean(axis=0)
    z = (x - self.feature_mean_) / self.feature_std_
    centred = y - self.intercept_
    basis, s2, projected = _ridge_factors(z, centred)
    # In-sample fit for penalty a: Z B diag(1/(s2 + a)) P. The columns of Z B are those
    # of U (Z = U S V^T) times s (B = V) or s2 (B = Z^T U), so with U's columns the hat
    # matrix's diagonal is 1/n (the intercept) + sum_j U_ij^2 s2_j / (s2_j + a).
    in_sample = z @ basis
    norms = np.linalg.norm(in_sample, axis=0)
    u_squares = (in_sample / np.where(norms > 0, norms, 1.0))**2

    def loo_residuals(a: float, neurons) -> np.ndarray:
      leverage = 1.0 / n + u_squares @ (s2 / (s2 + a))
      residual = centred[:, neurons] - in_sample @ (projected[:, neurons] / (s2 + a)[:, None])
      # A row at leverage ~1 decides its own fit: unpredictable without it.
      return residual / np.maximum(1.0 - leverage, 1e-12)[:, None]

    every = slice(None)
    sse = np.stack([(loo_residuals(a, every)**2).sum(axis=0) for a in alphas])
    sst = (centred**2).sum(axis=0)
    self.cv_r2_ = 1.0 - sse / np.where(sst > 0, sst, 1.0)
    if self.alpha_per_neuron:
      best = np.argmax(self.cv_r2_, axis=0)
    else:
      best = np.full(y.shape[1], np.argmax(self.cv_r2_.mean(axis=1)))
    loo_prediction = np.empty_like(y)
    for i in np.unique(best):
      neurons = np.flatnonzero(best == i)
      loo_prediction[:, neurons] = y[:, neurons] - loo_residuals(alphas[i], neurons)
    self.alphas_ = alphas
    self.alpha_ = alphas[best]
    self.cv_score_ = correlation.paired(loo_prediction, y)
    self.coef_ = basis @ (projected / (s2[:, None] + self.alpha_[None, :]))
    return self

  def predict(self, features: np.ndarray) -> np.ndarray:
    """(N, F) features -> (N, K) predicted (trial-averaged) responses."""
    if not hasattr(self, "coef_"):
      raise RuntimeError("RidgeCV.predict called before fit")
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.coef_.shape[0]:
      raise DataError(f"features: expected shape (N, {self.coef_.shape[0]}), got {x.shape}")
    return ((x - self.feature_mean_) / self.feature_std_) @ self.coef_ + self.intercept_


# ----------------------------------------------------------------------------- model

class GaborRidge:
  """Gabor-energy pyramid features + per-neuron ridge regression (Kay et al. 2008).

  `fit`/`predict` take images; `fit_features`/`predict_features` take any precomputed
  (N, F) features, so the same ridge serves other feature sets.
  """

  def __init__(self, *, spatial_frequencies: Sequence[float] = DEFAULT_SPATIAL_FREQUENCIES,
               orientations: int = 8, sigma_cycles: float = 0.5,
               spacing_wavelengths: float = 1.0, compression: str = "log1p",
               alpha_per_neuron: bool = True, chunk_size: int = 128):
    _check_compression(compression)
    self.feature_options = dict(spatial_frequencies=tuple(spatial_frequencies),
                                orientations=orientations, sigma_cycles=sigma_cycles,
                                spacing_wavelengths=spacing_wavelengths,
                                compression=compression, chunk_size=chunk_size)
    self.ridge = RidgeCV(alpha_per_neuron=alpha_per_neuron)

  def features(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) images -> (N, F) float32 Gabor-energy features."""
    return gabor_energy_features(images, **self.feature_options)

  def fit(self, images: np.ndarray, responses: np.ndarray, *,
          alphas: Sequence[float] = DEFAULT_ALPHAS) -> "GaborRidge":
    """Fits on (N, H, W, C) images and (N, K) or NaN-padded (N, R, K) responses."""
    return self.fit_features(self.features(images), responses, alphas=alphas)

  def fit_features(self, features: np.ndarray, responses: np.ndarray, *,
                   alphas: Sequence[float] = DEFAULT_ALPHAS) -> "GaborRidge":
    """Fits on precomputed (N, F) features; see `RidgeCV.fit`."""
    self.ridge.fit(features, responses, alphas=alphas)
    return self

  def predict(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) images -> (N, K) predicted responses."""
    return self.predict_features(self.features(images))

  def predict_features(self, features: np.ndarray) -> np.ndarray:
    """(N, F) precomputed features -> (N, K) predicted responses."""
    return self.ridge.predict(features)

  def score(self, images: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """(K,) correlation between predicted and measured (trial-averaged) responses."""
    return neuron_correlations(self.predict(images), trial_average(responses))

  @property
  def alpha_(self) -> np.ndarray:
    """(K,) penalty chosen for each neuron."""
    return self.ridge.alpha_

  @property
  def cv_score_(self) -> np.ndarray:
    """(K,) leave-one-out correlation of each neuron at its chosen penalty."""
    return self.ridge.cv_score_


# ----------------------------------------------------------------------------- evaluation

def neuron_correlations(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
  """(N, K), (N, K) -> (K,) float64 Pearson correlation over images per neuron (0 if
  constant): `correlation.paired`."""
  return correlation.paired(np.asarray(predicted, np.float64),
                            np.asarray(measured, np.float64))


def identify(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
  """Kay et al.'s identification: for each measured population response, the image whose
  predicted response correlates best with it (correlation across neurons).

  Args:
    predicted: (N, K) predicted responses to N candidate images.
    measured: (M, K) measured responses.

  Returns:
    (M,) int index into the N candidates; accuracy is `mean(identify(p, m) == truth)`.
  """
  similarity = correlation.rows(np.asarray(measured, np.float64),
                                np.asarray(predicted, np.float64))
  return np.argmax(similarity, axis=1)
