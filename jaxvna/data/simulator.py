"""The embedded ground-truth simulator: natural-like images and several simulated subjects.

Real recordings never say which neuron "should" matter; this simulator does, so every
interpretability and identifiability claim can be checked against the truth it returns.

Images. One shared pool of `num_images` greyscale images (`image_size` square, uint8),
each with a stimulus id (its pool index). Most are procedural *dead leaves*: up to
`num_leaves` occluding ellipses (random grey level, orientation and aspect ratio up to 2.5)
whose radii follow a power law p(r) ~ r^-a with a per-image scale exponent a in [2.5, 3.2],
painted back to front over a background, each leaf textured with its own mixture of two
1/f noise fields (amplitude spectrum ~ 1/f, as in natural images) and the result blurred
slightly (Gaussian, 0.5 px) against aliasing. A fraction `photo_fraction` are random crops
(integer downsampling 1-4x, random flips) of the photographs scikit-image ships offline
(camera, astronaut, coffee, ...; dead leaves only if scikit-image is missing). Every image
is then set to a random mean luminance in [0.35, 0.65] and RMS contrast in [0.08, 0.3] of
the pixel range and quantised. Known image-level factors are kept (`IMAGE_FACTORS`).

Splits. The pool is split train/validation/test by `split_fractions` (default 80/10/10).
Each subject sees a random `subject_train_fraction` of the train images (so train images
partly differ between subjects) and *all* validation and test images (so the test set is
shared and cross-subject zero-shot evaluation works). Images are stored in pool order.

Subjects. Each subject has its own neurons (`neurons_per_subject`), mixed from the cell
types in `CELL_TYPES` by `cell_type_fractions`, in random order:
- simple: a Gabor receptive field (random centre in the central 70% of the image,
  orientation in [0, pi), spatial frequency log-uniform in `spatial_frequency_range`
  cycles per image, phase, envelope sigma 0.4-0.6 carrier cycles), half-squared:
  drive = max(g.x, 0)^2;
- complex: quadrature-pair energy, drive = (g_0.x)^2 + (g_90.x)^2 (phase invariant);
- both are divisively normalised (Heeger 1992) by the local energy of the V1 population:
  n_k = drive_k / (s_k^2 + sum_j W_kj E_j), with E_j the quadrature energy of neuron j and
  W a row-normalised Gaussian weighting of RF-centre distance and log-frequency difference
  (untuned for orientation, self included, hence saturation at high contrast); s_k^2 is a
  per-neuron fraction (0.1-1) of the median pool energy. Output nonlinearity: a power,
  rate = baseline + amplitude * n^`v1_output_power` (default 0.8, which tempers the very
  sparse, heavy-tailed responses half-squaring gives on natural images);
- higher (V4/IT-like): a random three-layer ReLU convolutional network (strided 5x5, 3x3,
  3x3 convolutions, 8/16/32 channels, Gaussian spatial pooling over the central part of
  the image) is projected to `num_latents` factors that are whitened over the pool (zero
  mean, identity covariance) and shared by all subjects. Each higher neuron reads 1-3 of
  them: rate = baseline + amplitude * softplus(w.z + b);
- nonresponsive: a constant rate; only noise (responsive mask False).
Amplitudes are calibrated on the pool so that each neuron's mean rate follows a
log-normal (median `mean_rate` counts per trial), 10% of it a stimulus-independent
baseline. Cortical coordinates (2-D, mm): V1 cells retinotopic (a 2 mm sheet mapping the
image, plus 0.15 mm scatter); higher cells in a separate patch 3 mm away, clustered by the
latent factor they weigh most (0.3 mm scatter); nonresponsive cells anywhere in either.

Noise. Each trial has a gain shared by all of the subject's neurons, log-normal with unit
mean and log-sd `gain_sd`; a response is Poisson(gain * rate) (`noise="poisson"`) or
gamma with mean gain * rate and variance `fano_factor` times that (`noise="gamma"`).
Images get `repeats` = (train, validation, test) repeats, default (1, 2, 10); responses are
NaN-padded to the largest count.

Truth. `Recording.truth` is a dict of float32 (or int8/bool) numpy arrays:
  rf                (K, H, W) receptive-field maps, unit L2 norm: the Gabor (simple), its
                    envelope (complex, the energy RF), the root-mean-square over 64 pool
                    images of the gradient of the noiseless rate w.r.t. the pixels
                    (higher), zeros (nonresponsive);
  cell_type         (K,) int8 index into `CELL_TYPES`;
  orientation       (K,) radians, the direction along which the carrier varies (NaN for
                    higher and nonresponsive cells), as in `jaxvna.gabor.gabor`;
  spatial_frequency (K,) cycles per pixel (NaN likewise);
  phase             (K,) radians (NaN likewise; complex cells: phase of their even filter);
  sigma             (K,) Gabor envelope sigma in pixels (NaN likewise);
  rf_center         (K, 2) (row, col) pixels: Gabor centre, or centroid of the gradient
                    RF for higher cells; NaN for nonresponsive;
  responsive        (K,) bool;
  latent_weights    (K, L) weights of the latent factors (zero outside higher cells);
  latents           (N, L) the whitened latent factors of this subject's images;
  latent_rf         (L, H, W) receptive field of each latent factor: the root-mean-square
                    over the 64 probe images of its gradient w.r.t. the pixels, unit L2
                    norm (the same for every subject);
  image_factors     (N, F) the image-level factors named by `IMAGE_FACTORS` (NaN where
                    not applicable: leaf parameters of photographs);
  rates             (N, K) noiseless rates (expected response at unit gain);
  gain              (N, R) trial gains, NaN for repeats that were not recorded.

`simulate(**config)` returns the `Dataset`; `simulate_with_model(**config)` also returns
the `SimulatorModel`, whose `rates(subject, images)` gives noiseless rates of any images
(in-silico experiments such as gratings).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Sequence

import numpy as np

from jaxvna import gabor as gabor_lib
from jaxvna.data.dataset import SPLITS, Dataset, Recording

CELL_TYPES = ("simple", "complex", "higher", "nonresponsive")
SIMPLE, COMPLEX, HIGHER, NONRESPONSIVE = range(len(CELL_TYPES))
IMAGE_FACTORS = ("photo", "mean_luminance", "rms_contrast", "scale_exponent",
                 "texture_amplitude")
PHOTO_NAMES = ("camera", "astronaut", "coffee", "chelsea", "brick", "grass", "gravel",
               "rocket", "moon", "coins", "clock")
NOISE_MODELS = ("poisson", "gamma")

# Independent random streams, so that e.g. changing the subject count leaves images alone.
_IMAGE_STREAM, _NETWORK_STREAM, _SPLIT_STREAM, _SUBJECT_STREAM = range(4)
_BASELINE_FRACTION = 0.1
_NUM_RF_PROBES = 64


def _rng(seed: int, *stream: int) -> np.random.Generator:
  return np.random.default_rng([seed, *stream])


# ----------------------------------------------------------------------------- images


def one_over_f_noise(rng: np.random.Generator, num: int, size: int,
                     exponent: float = 1.0) -> np.ndarray:
  """Gaussian noise with amplitude spectrum ~ 1/f^exponent, each field zero-mean, unit std.

  Returns:
    (num, size, size) float32.
  """
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  freq = np.sqrt(fy**2 + fx**2)
  freq[0, 0] = np.inf  # no DC component
  amplitude = (freq ** -exponent).astype(np.float32)
  import scipy.fft
  spectrum = (rng.standard_normal((num, size, size // 2 + 1), np.float32)
              + 1j * rng.standard_normal((num, size, size // 2 + 1), np.float32))
  fields = scipy.fft.irfft2(spectrum * amplitude, s=(size, size), workers=-1).astype(np.float32)
  fields -= fields.mean(axis=(1, 2), keepdims=True)
  fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-8
  return fields


def _leaf_labels(centers: np.ndarray, quadratic: np.ndarray, size: int) -> np.ndarray:
  """Index of the front-most leaf covering each pixel (-1: background).

  Args:
    centers: (B, M, 2) float32 leaf centres (row, col).
    quadratic: (B, M, 3) float32 coefficients (a, b, c) of the ellipse interiors
      a dy^2 + 2 b dy dx + c dx^2 < 1, with (dy, dx) the offset from the centre.
    size: image side.

  Returns:
    (B, size, size) int32; leaf m is painted over leaves < m.
  """
  return np.asarray(_leaf_renderer(size)(centers, quadratic))


@functools.lru_cache(maxsize=None)
def _leaf_renderer(size: int):
  """The jitted painter of `_leaf_labels` for one image size (compiled once)."""
  import jax
  import jax.numpy as jnp

  def chunk_labels(args):
    ctr, quad = args
    rows = jnp.arange(size, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(size, dtype=jnp.float32)[None, None, :]

    def paint(m, labels):
      # The row and column terms are rank one, so a pixel costs one multiply-add.
      dy = rows - ctr[:, m, 0, None, None]
      dx = cols - ctr[:, m, 1, None, None]
      a, b, c = (quad[:, m, i, None, None] for i in range(3))
      inside = (a * dy**2 + c * dx**2) + (2 * b * dy) * dx < 1
      return jnp.where(inside, m, labels)

    init = jnp.full((ctr.shape[0], size, size), -1, jnp.int32)
    return jax.lax.fori_loop(0, ctr.shape[1], paint, init)

  @jax.jit
  def render(centers, quadratic):
    # Chunks of images keep the per-leaf working set in cache.
    b, m = centers.shape[:2]
    chunk = 256
    num_chunks = -(-b // chunk)
    pad = num_chunks * chunk - b
    args = [jnp.pad(x, ((0, pad), (0, 0), (0, 0))).reshape(num_chunks, chunk, m, -1)
            for x in (centers, quadratic)]
    return jax.lax.map(chunk_labels, args).reshape(num_chunks * chunk, size, size)[:b]

  return render


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
  """(N, S, S) images blurred by a circular Gaussian of `sigma` pixels (via FFT)."""
  size = images.shape[-1]
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  import scipy.fft
  transfer = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(np.float32)
  spectrum = scipy.fft.rfft2(images.astype(np.float32), workers=-1) * transfer
  return scipy.fft.irfft2(spectrum, s=(size, size), workers=-1).astype(np.float32)


def dead_leaves(rng: np.random.Generator, num: int, size: int, *, num_leaves: int = 160,
                scale_exponent_range: tuple[float, float] = (2.5, 3.2),
                texture_amplitude_range: tuple[float, float] = (0.0, 0.3),
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Dead-leaves images with 1/f-textured occluding ellipses.

  Returns:
    images (num, size, size) float32 around [0, 1] (before contrast normalisation),
    scale_exponent (num,) and texture_amplitude (num,) float32 generative factors.
  """
  if num == 0:
    empty = np.zeros(0, np.float32)
    return np.zeros((0, size, size), np.float32), empty, empty
  scale = size / 64
  r_min, r_max = max(1.0, 2.0 * scale), 0.6 * size
  exponent = rng.uniform(*scale_exponent_range, num)
  texture_amp = rng.uniform(*texture_amplitude_range, num)
  # Power-law radii by inverse-CDF sampling of p(r) ~ r^-a on [r_min, r_max].
  u = rng.uniform(size=(num, num_leaves))
  e = 1 - exponent[:, None]
  radius = (r_min**e + u * (r_max**e - r_min**e)) ** (1 / e)
  aspect = rng.uniform(1.0, 2.5, (num, num_leaves))
  theta = rng.uniform(0, np.pi, (num, num_leaves))
  margin = 0.15 * size
  centers = rng.uniform(-margin, size + margin, (num, num_leaves, 2))
  # Ellipse with semi-axes radius * sqrt(aspect) along theta and radius / sqrt(aspect)
  # across, as a quadratic form in the (row, col) offset.
  inv_along, inv_across = 1 / (radius**2 * aspect), aspect / radius**2
  cos, sin = np.cos(theta), np.sin(theta)
  quadratic = np.stack([inv_along * sin**2 + inv_across * cos**2,
                        (inv_along - inv_across) * sin * cos,
                        inv_along * cos**2 + inv_across * sin**2], axis=-1)
  labels = _leaf_labels(centers.astype(np.float32), quadratic.astype(np.float32), size)
  # Leaf and background grey levels; each leaf mixes two shared 1/f fields with its own
  # angle, so neighbouring leaves carry different texture.
  grey = rng.uniform(0, 1, (num, num_leaves + 1)).astype(np.float32)
  mix = rng.uniform(0, 2 * np.pi, (num, num_leaves + 1))
  # A half-period circular shift of a field is a second, nearly uncorrelated one.
  texture = one_over_f_noise(rng, num, size)
  textures = np.stack([texture, np.roll(texture, (size // 2, size // 2), axis=(1, 2))], axis=1)
  # Flat index into (num, num_leaves + 1) per-leaf tables; entry 0 is the background.
  flat = (labels + 1) + (num_leaves + 1) * np.arange(num, dtype=np.int32)[:, None, None]

  def per_pixel(per_leaf):
    return np.take(per_leaf.astype(np.float32).ravel(), flat)

  tex = per_pixel(np.cos(mix)) * textures[:, 0] + per_pixel(np.sin(mix)) * textures[:, 1]
  g = per_pixel(grey)
  images = g + texture_amp[:, None, None].astype(np.float32) * tex
  return (_gaussian_blur(images, 0.5), exponent.astype(np.float32),
          texture_amp.astype(np.float32))


def _load_photos() -> list[np.ndarray]:
  """The scikit-image sample photographs as grey float32 in [0, 1]; [] without skimage."""
  try:
    import skimage.data
  except ImportError:
    return []
  photos = []
  for name in PHOTO_NAMES:
    try:
      img = np.asarray(getattr(skimage.data, name)(), np.float32)
    except Exception:  # noqa: BLE001 - a photo that needs a download is simply skipped
      continue
    if img.ndim == 3:
      img = img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    photos.append(img / 255.0)
  return photos


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
  h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
  return img[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def photo_crops(rng: np.random.Generator, num: int, size: int,
                photos: Sequence[np.ndarray]) -> np.ndarray:
  """Random crops of photos, downsampled by an integer factor 1-4, randomly flipped.

  Returns:
    (num, size, size) float32 in [0, 1].
  """
  pyramids = [[_block_mean(p, f) for f in (1, 2, 3, 4)] for p in photos]
  out = np.empty((num, size, size), np.float32)
  for i in range(num):
    levels = [lvl for lvl in pyramids[rng.integers(len(pyramids))]
              if min(lvl.shape) >= size]
    if not levels:
      raise ValueError(f"simulator: image_size {size} is larger than the sample photos")
    lvl = levels[rng.integers(len(levels))]
    r0 = rng.integers(lvl.shape[0] - size + 1)
    c0 = rng.integers(lvl.shape[1] - size + 1)
    crop = lvl[r0:r0 + size, c0:c0 + size]
    out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
  return out


def make_image_pool(rng: np.random.Generator, num_images: int, image_size: int, *,
                    photo_fraction: float = 0.25, num_leaves: int = 160,
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The shared image pool.

  Returns:
    images (P, S, S) uint8 and factors (P, len(IMAGE_FACTORS)) float32.
  """
  photos = _load_photos() if photo_fraction > 0 else []
  if image_size > 128:
    photos = []  # crops would be too few and too blurry
  is_photo = (rng.random(num_images) < photo_fraction) if photos else np.zeros(num_images, bool)
  num_photos = int(is_photo.sum())
  images = np.empty((num_images, image_size, image_size), np.float32)
  factors = np.full((num_images, len(IMAGE_FACTORS)), np.nan, np.float32)
  leaves, exponent, texture_amp = dead_leaves(rng, num_images - num_photos, image_size,
                                              num_leaves=num_leaves)
  images[~is_photo] = leaves
  factors[~is_photo, IMAGE_FACTORS.index("scale_exponent")] = exponent
  factors[~is_photo, IMAGE_FACTORS.index("texture_amplitude")] = texture_amp
  if num_photos:
    images[is_photo] = photo_crops(rng, num_photos, image_size, photos)
  # Random luminance and contrast; the gain is capped so flat photo crops are not
  # blown up into quantisation noise.
  mean = rng.uniform(0.35, 0.65, num_images).astype(np.float32)[:, None, None]
  contrast = rng.uniform(0.08, 0.3, num_images).astype(np.float32)[:, None, None]
  centred = images - images.mean(axis=(1, 2), keepdims=True)
  std = centred.std(axis=(1, 2), keepdims=True)
  images = mean + centred * np.minimum(contrast / (std + 1e-6), 4.0)
  pixels = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
  unit = pixels.astype(np.float32) / 255
  factors[:, IMAGE_FACTORS.index("photo")] = is_photo
  factors[:, IMAGE_FACTORS.index("mean_luminance")] = unit.mean(axis=(1, 2))
  factors[:, IMAGE_FACTORS.index("rms_contrast")] = unit.std(axis=(1, 2))
  return pixels, factors


# ---------------------------------------------------------------------- latent network


@dataclasses.dataclass(frozen=True, eq=False)
class LatentNetwork:
  """A random conv net whose whitened projection gives the shared latent factors.

  Attributes:
    kernels: HWIO conv kernels of the three layers.
    biases: per-layer biases.
    spatial_pool: (h, w) weights over the last feature map, summing to 1.
    projection: (C, L) random projection of the pooled features.
    mean: (L,) pool mean of the projection.
    whitening: (L, L) inverse square root of the pool covariance.
  """

  kernels: tuple[np.ndarray, ...]
  biases: tuple[np.ndarray, ...]
  spatial_pool: np.ndarray
  projection: np.ndarray
  mean: np.ndarray
  whitening: np.ndarray

  @property
  def num_latents(self) -> int:
    return self.projection.shape[1]


def _projected_features(net_arrays, images):
  """Projected pooled features of (B, S, S) pixel images on the 0-255 scale, in JAX."""
  import jax
  import jax.numpy as jnp
  kernels, biases, spatial_pool, projection = net_arrays
  x = (images[..., None] / 255.0 - 0.5).astype(jnp.float32)
  for kernel, bias in zip(kernels, biases):
    x = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jax.nn.relu(x + bias)
  return jnp.einsum("bhwc,hw,cl->bl", x, spatial_pool, projection)


def _net_arrays(net: LatentNetwork):
  return (net.kernels, net.biases, net.spatial_pool, net.projection)


def make_latent_network(rng: np.random.Generator, pool_images: np.ndarray,
                        num_latents: int, channels: tuple[int, ...] = (8, 16, 32),
                        ) -> tuple[LatentNetwork, np.ndarray]:
  """Draws the random network and whitens its projection on the pool.

  Args:
    rng: random generator.
    pool_images: (P, S, S) pixel values on the 0-255 scale.
    num_latents: L.
    channels: output channels of the stride-2 conv layers.

  Returns:
    The network and the (P, L) latents of the pool.
  """
  sizes = (5,) + (3,) * (len(channels) - 1)
  kernels, biases, c_in = [], [], 1
  for k, c_out in zip(sizes, channels):
    w = rng.standard_normal((k, k, c_in, c_out)).astype(np.float32)
    w -= w.mean(axis=(0, 1, 2), keepdims=True)  # no plain luminance detectors
    kernels.append(w * np.float32(np.sqrt(2.0 / (k * k * c_in))))
    biases.append(np.float32(0.02) * rng.standard_normal(c_out).astype(np.float32))
    c_in = c_out
  side = pool_images.shape[1]
  for _ in channels:
    side = -(-side // 2)
  grid = (np.arange(side) - (side - 1) / 2) / side
  pool = np.exp(-0.5 * (grid[:, None] ** 2 + grid[None, :] ** 2) / 0.3**2)
  pool = (pool / pool.sum()).astype(np.float32)
  projection = rng.standard_normal((channels[-1], num_latents)).astype(np.float32)
  partial = LatentNetwork(tuple(kernels), tuple(biases), pool, projection,
                          np.zeros(num_latents, np.float32), np.eye(num_latents, dtype=np.float32))
  raw = _batched_features(partial, pool_images)
  mean = raw.mean(axis=0)
  cov = np.cov(raw - mean, rowvar=False).reshape(num_latents, num_latents)
  vals, vecs = np.linalg.eigh(cov.astype(np.float64))
  whitening = (vecs @ np.diag(1 / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T)
  net = dataclasses.replace(partial, mean=mean.astype(np.float32),
                            whitening=whitening.astype(np.float32))
  return net, ((raw - net.mean) @ net.whitening).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jitted_features():
  import jax
  return jax.jit(_projected_features)


def _batched_features(net: LatentNetwork, images: np.ndarray, batch: int = 1000) -> np.ndarray:
  fn = _jitted_features()
  arrays = _net_arrays(net)
  out = [np.asarray(fn(arrays, images[i:i + batch].astype(np.float32)))
         for i in range(0, len(images), batch)]
  return np.concatenate(out).astype(np.float32)


def latent_factors(net: LatentNetwork, images: np.ndarray) -> np.ndarray:
  """(N, L) whitened latent factors of (N, S, S[, 1]) images on the 0-255 scale."""
  images = _as_square(images)
  return ((_batched_features(net, images) - net.mean) @ net.whitening).astype(np.float32)


def latent_jacobian(net: LatentNetwork, images: np.ndarray) -> np.ndarray:
  """(N, L, S, S) derivatives of the latents w.r.t. pixels (0-255 scale)."""
  import jax
  import jax.numpy as jnp
  arrays = _net_arrays(net)
  whitening, mean = jnp.asarray(net.whitening), jnp.asarray(net.mean)

  def one(image):
    return (_projected_features(arrays, image[None])[0] - mean) @ whitening

  jac = jax.jit(jax.vmap(jax.jacrev(one)))
  return np.asarray(jac(_as_square(images).astype(np.float32)))


def _as_square(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3 or images.shape[1] != images.shape[2]:
    raise ValueError(f"simulator: expected images (N, S, S) or (N, S, S, 1), got {images.shape}")
  return images


# ------------------------------------------------------------------------- populations


@dataclasses.dataclass(frozen=True, eq=False)
class Population:
  """One subject's neurons and everything needed to compute their noiseless rates.

  Shapes: K neurons, V of them V1-like (simple or complex), S x S images, L latents.
  """

  cell_type: np.ndarray  # (K,) int8 into CELL_TYPES
  v1: np.ndarray  # (V,) indices of the simple and complex cells
  center: np.ndarray  # (K, 2) Gabor centre (row, col), NaN elsewhere
  orientation: np.ndarray  # (K,)
  spatial_frequency: np.ndarray  # (K,) cycles per pixel
  phase: np.ndarray  # (K,)
  sigma: np.ndarray  # (K,)
  filters: np.ndarray  # (S*S, 2V) even (phase) then odd (phase + pi/2) filters
  normalization_weights: np.ndarray  # (V, V) rows sum to 1
  semisaturation: np.ndarray  # (V,) s_k^2
  mean_pool_energy: np.ndarray  # (V,) pool energy averaged over the calibration images
  normalization: bool
  output_power: float
  latent_weights: np.ndarray  # (K, L)
  latent_bias: np.ndarray  # (K,)
  baseline: np.ndarray  # (K,)
  amplitude: np.ndarray  # (K,)
  coords: np.ndarray  # (K, 2) cortical coordinates, mm

  @property
  def num_neurons(self) -> int:
    return self.cell_type.shape[0]

  def stimulus_drive(self, pixels: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """(N, K) stimulus-driven part before `amplitude` (zero for nonresponsive cells).

    Args:
      pixels: (N, S*S) float32 pixel values on the 0-1 scale.
      latents: (N, L) latent factors.
    """
    out = np.zeros((pixels.shape[0], self.num_neurons), np.float32)
    v = self.v1.size
    if v:
      proj = pixels @ self.filters
      even, odd = proj[:, :v], proj[:, v:]
      energy = even**2 + odd**2
      simple = self.cell_type[self.v1] == SIMPLE
      drive = np.where(simple, np.maximum(even, 0) ** 2, energy)
      pool = energy @ self.normalization_weights.T if self.normalization else (
          np.broadcast_to(self.mean_pool_energy, energy.shape))
      out[:, self.v1] = (drive / (self.semisaturation + pool)) ** self.output_power
    higher = np.flatnonzero(self.cell_type == HIGHER)
    if higher.size:
      out[:, higher] = _softplus(latents @ self.latent_weights[higher].T
                                 + self.latent_bias[higher])
    return out

  def rates(self, pixels: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """(N, K) noiseless rates; arguments as in `stimulus_drive`."""
    return (self.baseline + self.amplitude * self.stimulus_drive(pixels, latents)).astype(
        np.float32)


def _softplus(x):
  return np.logaddexp(0, x).astype(np.float32)


def _type_counts(num: int, fractions: Sequence[float]) -> np.ndarray:
  """Largest-remainder rounding of `num * fractions` (fractions normalised)."""
  f = np.asarray(fractions, np.float64)
  f = f / f.sum()
  counts = np.floor(num * f).astype(int)
  order = np.argsort(-(num * f - counts), kind="stable")
  counts[order[:num - counts.sum()]] += 1
  return counts


def make_population(rng: np.random.Generator, num_neurons: int, image_size: int,
                    pool_pixels: np.ndarray, pool_latents: np.ndarray, *,
                    cell_type_fractions: Sequence[float],
                    spatial_frequency_range: tuple[float, float],
                    mean_rate: float, normalization: bool, output_power: float,
                    ) -> tuple[Population, np.ndarray]:
  """Draws one subject's neurons and calibrates them on the pool.

  Args:
    rng: random generator of this subject.
    num_neurons: K.
    image_size: S.
    pool_pixels: (P, S*S) float32 pool images on the 0-1 scale (calibration).
    pool_latents: (P, L) latents of the pool.
    cell_type_fractions: fractions of `CELL_TYPES`.
    spatial_frequency_range: (low, high) cycles per image.
    mean_rate: median over neurons of the mean rate (counts per trial).
    normalization: divisive normalisation on (else a constant denominator).
    output_power: exponent of the V1 output nonlinearity.

  Returns:
    The population and its (P, K) noiseless rates of the pool images.
  """
  size, k = image_size, num_neurons
  num_latents = pool_latents.shape[1]
  cell_type = np.repeat(np.arange(len(CELL_TYPES)), _type_counts(k, cell_type_fractions))
  cell_type = rng.permutation(cell_type).astype(np.int8)
  v1 = np.flatnonzero((cell_type == SIMPLE) | (cell_type == COMPLEX))
  nan = np.full(k, np.nan, np.float32)
  center, orientation, sf, phase, sigma = (np.full((k, 2), np.nan, np.float32), nan.copy(),
                                           nan.copy(), nan.copy(), nan.copy())
  margin = 0.15 * size
  center[v1] = rng.uniform(margin, size - 1 - margin, (v1.size, 2))
  orientation[v1] = rng.uniform(0, np.pi, v1.size)
  low, high = spatial_frequency_range
  sf[v1] = np.exp(rng.uniform(np.log(low), np.log(high), v1.size)) / size
  phase[v1] = rng.uniform(0, 2 * np.pi, v1.size)
  sigma[v1] = rng.uniform(0.4, 0.6, v1.size) / sf[v1]

  filters = np.zeros((size * size, 2 * v1.size), np.float32)
  for j, i in enumerate(v1):
    for col, ph in ((j, phase[i]), (j + v1.size, phase[i] + np.pi / 2)):
      g = gabor_lib.gabor(size, tuple(center[i]), orientation[i], sf[i], ph, sigma[i])
      g = g - g.mean()  # no response to mean luminance
      filters[:, col] = (g / (np.linalg.norm(g) + 1e-8)).ravel()

  # Normalisation pool: neighbours in space (within ~2 RF sigmas) and in octave.
  dist_sq = np.sum((center[v1, None] - center[None, v1]) ** 2, axis=-1)
  octave = np.log2(sf[v1, None] / sf[None, v1])
  weights = np.exp(-0.5 * dist_sq / (2 * sigma[v1, None]) ** 2 - 0.5 * octave**2)
  weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
  proj = pool_pixels @ filters
  energy = proj[:, :v1.size] ** 2 + proj[:, v1.size:] ** 2
  pool_energy = energy @ weights.T
  semisat = (np.exp(rng.uniform(np.log(0.1), 0.0, v1.size)) * np.median(pool_energy, axis=0))

  latent_weights = np.zeros((k, num_latents), np.float32)
  latent_bias = np.zeros(k, np.float32)
  higher = np.flatnonzero(cell_type == HIGHER)
  for i in higher:
    used = rng.choice(num_latents, size=min(num_latents, rng.integers(1, 4)), replace=False)
    w = rng.standard_normal(used.size)
    latent_weights[i, used] = w / np.linalg.norm(w) * rng.uniform(1.0, 2.0)
    latent_bias[i] = rng.normal(-0.5, 0.5)

  # Cortical coordinates (mm): a retinotopic V1 sheet and a higher-area patch 3 mm away
  # with one functional cluster per latent factor.
  coords = np.zeros((k, 2), np.float32)
  coords[v1] = 2.0 * center[v1] / size + rng.normal(0, 0.15, (v1.size, 2))
  cluster = rng.uniform(0, 2, (num_latents, 2)) + np.array([0.0, 3.0])
  if higher.size:
    preferred = np.argmax(np.abs(latent_weights[higher]), axis=1)
    coords[higher] = cluster[preferred] + rng.normal(0, 0.3, (higher.size, 2))
  silent = np.flatnonzero(cell_type == NONRESPONSIVE)
  coords[silent] = rng.uniform(0, 2, (silent.size, 2)) + np.where(
      rng.random(silent.size) < 0.5, 0.0, 3.0)[:, None] * np.array([0.0, 1.0])

  mean_rates = mean_rate * np.exp(rng.normal(0, 0.5, k))
  population = Population(
      cell_type=cell_type, v1=v1, center=center, orientation=orientation,
      spatial_frequency=sf, phase=phase, sigma=sigma, filters=filters,
      normalization_weights=weights, semisaturation=semisat.astype(np.float32),
      mean_pool_energy=pool_energy.mean(axis=0).astype(np.float32),
      normalization=bool(normalization), output_power=float(output_power),
      latent_weights=latent_weights, latent_bias=latent_bias,
      baseline=np.zeros(k, np.float32), amplitude=np.zeros(k, np.float32),
      coords=coords.astype(np.float32))
  # Calibrate: baseline + amplitude * mean drive = mean rate over the pool.
  drive = population.stimulus_drive(pool_pixels, pool_latents)
  responsive = cell_type != NONRESPONSIVE
  baseline = np.where(responsive, _BASELINE_FRACTION * mean_rates, mean_rates).astype(
      np.float32)
  amplitude = np.where(responsive, (1 - _BASELINE_FRACTION) * mean_rates
                       / np.maximum(drive.mean(axis=0), 1e-12), 0.0).astype(np.float32)
  population = dataclasses.replace(population, baseline=baseline, amplitude=amplitude)
  return population, (baseline + amplitude * drive).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class SimulatorModel:
  """The generative model behind a simulated dataset: shared latent network and subjects."""

  image_size: int
  latent_network: LatentNetwork
  populations: tuple[Population, ...]

  def rates(self, subject: int, images: np.ndarray) -> np.ndarray:
    """Noiseless rates of any images.

    Args:
      subject: index of the subject (recording order).
      images: (N, S, S) or (N, S, S, 1) pixel values on the 0-255 scale, any dtype.

    Returns:
      (N, K) float32 expected responses at unit gain.
    """
    images = _as_square(images)
    if images.shape[1] != self.image_size:
      raise ValueError(f"simulator: images are {images.shape[1]} px, the model {self.image_size}")
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255
    return self.populations[subject].rates(pixels, latent_factors(self.latent_network, images))


def _receptive_fields(pop: Population, probe_jacobian: np.ndarray, probe_latents: np.ndarray,
                      ) -> tuple[np.ndarray, np.ndarray]:
  """RF maps (see module docstring).

  Args:
    pop: the population.
    probe_jacobian: (B, L, S, S) `latent_jacobian` of B probe images.
    probe_latents: (B, L) their latents.

  Returns:
    (K, S, S) unit-norm RF maps and (K, 2) their centres (row, col).
  """
  k, size = pop.num_neurons, probe_jacobian.shape[-1]
  rf = np.zeros((k, size, size), np.float32)
  v = pop.v1.size
  even = pop.filters[:, :v].T.reshape(v, size, size)
  envelope = np.sqrt(even**2 + pop.filters[:, v:].T.reshape(v, size, size) ** 2)
  rf[pop.v1] = np.where((pop.cell_type[pop.v1] == SIMPLE)[:, None, None], even, envelope)
  center = pop.center.copy()
  higher = np.flatnonzero(pop.cell_type == HIGHER)
  if higher.size:
    weights = pop.latent_weights[higher]
    pre = probe_latents @ weights.T + pop.latent_bias[higher]
    slope = pop.amplitude[higher] / (1 + np.exp(-pre))  # softplus' = sigmoid, (B, k)
    # d rate / d pixels = slope * sum_l w_l d z_l / d pixels; one probe at a time keeps
    # the arrays small.
    mean_sq = np.zeros((higher.size, size * size), np.float32)
    for jac, s in zip(probe_jacobian, slope):
      mean_sq += (s[:, None] * (weights @ jac.reshape(len(jac), -1))) ** 2
    rf[higher] = np.sqrt(mean_sq / len(slope)).reshape(higher.size, size, size)
    mass = rf[higher] / (rf[higher].sum(axis=(1, 2), keepdims=True) + 1e-12)
    rows, cols = np.mgrid[0:size, 0:size]
    center[higher] = np.stack([np.sum(mass * rows, axis=(1, 2)),
                               np.sum(mass * cols, axis=(1, 2))], axis=1)
  rf /= np.linalg.norm(rf.reshape(k, -1), axis=1).reshape(k, 1, 1) + 1e-12
  return rf.astype(np.float32), center.astype(np.float32)


def _pool_split(rng: np.random.Generator, num_images: int,
                fractions: Sequence[float]) -> np.ndarray:
  """(P,) int8 split index of every pool image; validation and test get at least 1."""
  f = np.asarray(fractions, np.float64) / np.sum(fractions)
  n_val = max(1, int(round(f[1] * num_images)))
  n_test = max(1, int(round(f[2] * num_images)))
  if n_val + n_test >= num_images:
    raise ValueError(f"simulator: num_images={num_images} too small for split_fractions "
                     f"{tuple(fractions)}")
  split = np.zeros(num_images, np.int8)
  order = rng.permutation(num_images)
  split[order[:n_val]] = SPLITS.index("validation")
  split[order[n_val:n_val + n_test]] = SPLITS.index("test")
  return split


def _trial_responses(rng: np.random.Generator, rates: np.ndarray, repeats: np.ndarray,
                     gain_sd: float, noise: str, fano_factor: float,
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Noisy responses (N, R, K) NaN-padded and gains (N, R) NaN-padded."""
  n, k = rates.shape
  max_r = int(repeats.max())
  recorded = np.arange(max_r)[None, :] < repeats[:, None]
  gain = np.exp(rng.normal(-0.5 * gain_sd**2, gain_sd, (n, max_r))).astype(np.float32)
  gain[~recorded] = np.nan
  img, rep = np.nonzero(recorded)
  mean = gain[img, rep][:, None] * rates[img]
  if noise == "poisson":
    samples = rng.poisson(mean)
  else:
    samples = rng.gamma(mean / fano_factor, fano_factor)
  responses = np.full((n, max_r, k), np.nan, np.float32)
  responses[img, rep] = samples
  return responses, gain


def _check_config(num_subjects, neurons, num_images, image_size, split_fractions,
                  subject_train_fraction, repeats, cell_type_fractions, noise, num_latents,
                  spatial_frequency_range, fano_factor):
  def fail(name, msg):
    raise ValueError(f"simulator: {name}: {msg}")
  if num_subjects < 1:
    fail("num_subjects", f"expected >= 1, got {num_subjects}")
  if len(neurons) != num_subjects or min(neurons) < 1:
    fail("neurons_per_subject", f"expected {num_subjects} positive counts (or one int), "
                                f"got {tuple(neurons)}")
  if image_size < 16:
    fail("image_size", f"expected >= 16, got {image_size}")
  if num_images < 10:
    fail("num_images", f"expected >= 10, got {num_images}")
  if len(split_fractions) != len(SPLITS) or min(split_fractions) < 0 or split_fractions[0] <= 0:
    fail("split_fractions", f"expected {len(SPLITS)} non-negative fractions for {SPLITS} "
                            f"with train > 0, got {tuple(split_fractions)}")
  if not 0 < subject_train_fraction <= 1:
    fail("subject_train_fraction", f"expected in (0, 1], got {subject_train_fraction}")
  if len(repeats) != len(SPLITS) or min(repeats) < 1:
    fail("repeats", f"expected {len(SPLITS)} counts >= 1 for {SPLITS}, got {tuple(repeats)}")
  if len(cell_type_fractions) != len(CELL_TYPES) or min(cell_type_fractions) < 0 or (
      sum(cell_type_fractions) <= 0):
    fail("cell_type_fractions", f"expected {len(CELL_TYPES)} non-negative fractions for "
                                f"{CELL_TYPES}, got {tuple(cell_type_fractions)}")
  if noise not in NOISE_MODELS:
    fail("noise", f"expected one of {NOISE_MODELS}, got {noise!r}")
  if num_latents < 1:
    fail("num_latents", f"expected >= 1, got {num_latents}")
  low, high = spatial_frequency_range
  if not 0 < low <= high <= 0.4 * image_size:  # at least 2.5 pixels per cycle
    fail("spatial_frequency_range", f"expected 0 < low <= high <= 0.4 * image_size = "
                                    f"{0.4 * image_size:g} cycles per image, got "
                                    f"{tuple(spatial_frequency_range)}")
  if fano_factor <= 0:
    fail("fano_factor", f"expected > 0, got {fano_factor}")


def simulate_with_model(*, seed: int = 0, num_subjects: int = 3, num_images: int = 5000,
                        image_size: int = 64,
                        neurons_per_subject: int | Sequence[int] = (300, 250, 200),
                        photo_fraction: float = 0.25, num_leaves: int = 160,
                        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                        subject_train_fraction: float = 0.8,
                        repeats: Sequence[int] = (1, 2, 10),
                        cell_type_fractions: Sequence[float] = (0.3, 0.3, 0.3, 0.1),
                        spatial_frequency_range: Sequence[float] = (3.0, 12.0),
                        num_latents: int = 8, mean_rate: float = 2.0,
                        normalization: bool = True, v1_output_power: float = 0.8,
                        noise: str = "poisson", fano_factor: float = 1.0,
                        gain_sd: float = 0.3, name: str = "simulated",
                        ) -> tuple[Dataset, SimulatorModel]:
  """Simulates a dataset and returns it with its generative model.

  Args (keyword only; see the module docstring for the model):
    seed: everything is a deterministic function of it.
    num_subjects: number of recordings, named subject0, subject1, ...
    num_images: size of the shared image pool P.
    image_size: image side S in pixels.
    neurons_per_subject: K of each subject, or one int for all.
    photo_fraction: fraction of pool images that are photo crops (0 without skimage).
    num_leaves: leaves painted per dead-leaves image.
    split_fractions: (train, validation, test) fractions of the pool.
    subject_train_fraction: fraction of the pool's train images each subject sees.
    repeats: (train, validation, test) repeats per image.
    cell_type_fractions: fractions of `CELL_TYPES`.
    spatial_frequency_range: V1 preferred frequencies, cycles per image (log-uniform).
    num_latents: L, the shared latent factors of the higher cells.
    mean_rate: median mean response (counts per trial).
    normalization: divisive normalisation of V1 cells.
    v1_output_power: exponent of the V1 output nonlinearity.
    noise: "poisson" or "gamma".
    fano_factor: variance / mean of gamma noise.
    gain_sd: log-sd of the shared per-trial gain.
    name: dataset name.

  Returns:
    (dataset, model).
  """
  neurons = ((int(neurons_per_subject),) * num_subjects if np.ndim(neurons_per_subject) == 0
             else tuple(int(n) for n in neurons_per_subject))
  _check_config(num_subjects, neurons, num_images, image_size, tuple(split_fractions),
                subject_train_fraction, tuple(repeats), tuple(cell_type_fractions), noise,
                num_latents, tuple(spatial_frequency_range), fano_factor)
  images, factors = make_image_pool(_rng(seed, _IMAGE_STREAM), num_images, image_size,
                                    photo_fraction=photo_fraction, num_leaves=num_leaves)
  net, latents = make_latent_network(_rng(seed, _NETWORK_STREAM), images, num_latents)
  pixels = images.reshape(num_images, -1).astype(np.float32) / 255
  split = _pool_split(_rng(seed, _SPLIT_STREAM), num_images, split_fractions)
  train = np.flatnonzero(split == SPLITS.index("train"))
  probes = _rng(seed, _NETWORK_STREAM, 1).choice(
      num_images, min(_NUM_RF_PROBES, num_images), replace=False)
  probe_jacobian = latent_jacobian(net, images[probes])
  latent_rf = np.sqrt(np.mean(probe_jacobian**2, axis=0))
  latent_rf /= np.linalg.norm(latent_rf.reshape(len(latent_rf), -1), axis=1)[:, None, None] + 1e-12
  repeat_counts = np.asarray(repeats, np.int64)

  populations, recordings = [], []
  for s, k in enumerate(neurons):
    rng = _rng(seed, _SUBJECT_STREAM, s)
    pop, pool_rates = make_population(rng, k, image_size, pixels, latents,
                          cell_type_fractions=cell_type_fractions,
                          spatial_frequency_range=tuple(spatial_frequency_range),
                          mean_rate=mean_rate, normalization=normalization,
                          output_power=v1_output_power)
    seen_train = rng.choice(train, int(round(subject_train_fraction * train.size)),
                            replace=False)
    seen = np.sort(np.concatenate([seen_train, np.flatnonzero(split != SPLITS.index("train"))]))
    rates = pool_rates[seen]
    responses, gain = _trial_responses(rng, rates, repeat_counts[split[seen]], gain_sd, noise,
                                       fano_factor)
    rf, rf_center = _receptive_fields(pop, probe_jacobian, latents[probes])
    truth = {
        "rf": rf, "cell_type": pop.cell_type, "orientation": pop.orientation,
        "spatial_frequency": pop.spatial_frequency, "phase": pop.phase, "sigma": pop.sigma,
        "rf_center": rf_center, "responsive": pop.cell_type != NONRESPONSIVE,
        "latent_weights": pop.latent_weights, "latents": latents[seen],
        "latent_rf": latent_rf.astype(np.float32),
        "image_factors": factors[seen], "rates": rates, "gain": gain,
    }
    recordings.append(Recording(
        name=f"subject{s}", images=images[seen][..., None], responses=responses,
        neuron_coords=pop.coords, split=split[seen], stimulus_ids=seen.astype(np.int64),
        source=f"simulator(seed={seed}) subject{s}", truth=truth))
    populations.append(pop)
  return (Dataset(name, tuple(recordings)),
          SimulatorModel(image_size, net, tuple(populations)))


def simulate(**config) -> Dataset:
  """Simulates a dataset; keyword arguments (all optional) as in `simulate_with_model`."""
  return simulate_with_model(**config)[0]


# The same keyword-only signature, so introspection (and config tooling) sees the defaults.
simulate.__signature__ = inspect.signature(simulate_with_model).replace(
    return_annotation=Dataset)
