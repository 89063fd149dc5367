"""Flax (linen) towers of the dual encoder and of the direct baselines.

Every module is pure functional: the trainer calls `model.init` / `model.apply`. Shapes:
images (B, H, W, C) uint8 or float, responses (B, K_max) float zero-padded, subject (B,)
int32, embeddings (B, D) float32 (not normalised; `l2_normalize` does that).

Why the convolution is written by hand: on XLA:CPU, `lax.conv_general_dilated` (and above
all its backward pass) is several times slower than a matmul of the same FLOPs. `conv2d`
instead gathers the k*k shifted (strided) views of the padded input into one
(B, h, w, k*k*C) patch tensor and does one matmul with the (k*k*C, O) kernel; autodiff of
slices + concatenate + dot is again slices and matmuls, so the backward pass is fast too.
The README's Performance section gives the measured gain (benchmarks/cnn_vs_torch.py).

Why dense layers and the conv matmul go through `linear`: XLA:CPU gives only plain
row-major products, (M, K) @ (K, N) or (M, K) @ (N, K)^T, to its fast matmul library
(YNNPACK); the weight gradient x^T @ g of autodiff contracts over the rows of x and falls
back to a slower generic kernel (1.4x slower for the 256 x 4096 x 512 first layer of the
MLP tower). `linear`'s backward pass copies x^T (for a conv: the patch matrix) to
row-major first, which costs far less.

Input scaling of image towers: uint8 images become float in [0, 1] (/255); float images
are taken to be on that scale already. Both are then standardised with a FIXED mean and
std (`input_mean`, `input_std`, defaults 0.5 and 0.25), not per image: per-image
standardisation would erase the luminance and contrast that neurons respond to.

Model config (`config` of `build_model`, all fields optional; `default_model_config()`
returns them with their defaults):
  embed_dim: int, the shared embedding width D of both towers (128).
  dtype: "float32" | "bfloat16", compute dtype; parameters stay float32.
  init_temperature: CLIP temperature at init (0.07); min_temperature: its floor (0.01).
  init_bias: SigLIP logit bias at init (-10.0).
  decoder_size: side of the direct decoder's grey output image (16).
  image_tower.type: "cnn" | "mlp" | "features".
  image_tower.channels, kernel_size, strides: the ConvTower convs ((32, 64, 128), 3, 2).
  image_tower.hidden: MLP widths after pooling (cnn: ()), of the MLP tower ((512, 256)) or
    of the feature head ((512,)).
  image_tower.activation: "gelu" | "relu" (cnn: gelu; mlp, features: relu).
  image_tower.pool: "mean" | "max" (global pooling of the cnn).
  image_tower.front_end: None | "gabor" (fixed Gabor-energy first stage of the cnn).
  image_tower.gabor: size (11), orientations (4), spatial_frequencies ((0.125, 0.25)
    cycles/pixel), stride (2), pool (1 = none; else an average-pool window and stride).
  image_tower.input_mean, input_std: the fixed standardisation (0.5, 0.25).
  neural_tower.readin_dim (256), hidden ((512, 256)), neuron_dropout (0.1),
    preprocess ("none" | "log1p"), activation ("relu").
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvna.gabor import quadrature_bank

Dtype = Any
METHODS = ("vna", "direct_encoding", "direct_decoding")
IMAGE_TOWER_TYPES = ("cnn", "mlp", "features")

# ----------------------------------------------------------------------------- functions

_INV_SQRT2 = np.float32(1 / math.sqrt(2))
_INV_SQRT_2PI = np.float32(1 / math.sqrt(2 * math.pi))


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, x * Phi(x), as torch.nn.GELU().

  jax.nn.gelu(approximate=False) goes through erfc, which XLA:CPU evaluates far more slowly
  than lax.erf; the custom derivative reuses Phi(x) instead of differentiating erf's
  polynomial.
  """
  return 0.5 * x * (1 + lax.erf(x * _INV_SQRT2.astype(x.dtype)))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  cdf = 0.5 * (1 + lax.erf(x * _INV_SQRT2.astype(x.dtype)))
  pdf = _INV_SQRT_2PI.astype(x.dtype) * jnp.exp(-0.5 * x * x)
  return x * cdf, (cdf + x * pdf) * dx


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"gelu": gelu, "relu": nn.relu}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation: unknown {name!r}; expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Rows of x (..., D) divided by max(||row||, eps), computed in float32."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def temperature_from_log(log_temperature: jax.Array, floor: float) -> jax.Array:
  """exp(log_temperature) clamped below at `floor` (CLIP clamps its logit scale at 100).

  Below the floor the gradient to log_temperature is zero, so it stops shrinking.
  """
  return jnp.maximum(jnp.exp(log_temperature), floor)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(kernel_size: int | Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding (k - 1) // 2 on each side, as PyTorch's padding=k//2 for odd k.

  Note: this differs from lax 'SAME' at stride 2 (which pads 0 before, 1 after).
  """
  kh, kw = _pair(kernel_size)
  return ((kh - 1) // 2, (kh - 1) // 2), ((kw - 1) // 2, (kw - 1) // 2)


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(residuals, g):
  x, kernel = residuals
  # The barrier keeps XLA from folding the transpose back into the product as a
  # contraction over x's rows (the slow path); the copy itself is cheap.
  x_t = lax.optimization_barrier(x.T)
  return (g @ kernel.T).astype(x.dtype), (x_t @ g).astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x (..., K) @ kernel (K, N) -> (..., N), differentiated in fast matmul layouts.

  Values and gradients equal those of `x @ kernel`; the weight gradient is computed as
  (row-major copy of x^T) @ g (see the module docstring for why).
  """
  lead = x.shape[:-1]
  y = _matmul(x.reshape(-1, x.shape[-1]), kernel)
  return y.reshape(*lead, kernel.shape[-1])


def extract_patches(x: jax.Array, kernel_size: int | Sequence[int],
                    strides: int | Sequence[int],
                    padding: Sequence[tuple[int, int]]) -> jax.Array:
  """im2col by slicing: (B, H, W, C) -> (B, h, w, kh * kw * C), channels ordered (i, j, c).

  h = (H + pad_h - kh) // sh + 1 (likewise w). Each of the kh*kw kernel taps is one
  strided slice of the padded input; concatenating them on the channel axis gives the
  patch of every output position in the layout of kernel.reshape(kh * kw * C, O).
  """
  kh, kw = _pair(kernel_size)
  sh, sw = _pair(strides)
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  h = (xp.shape[1] - kh) // sh + 1
  w = (xp.shape[2] - kw) // sw + 1
  if h < 1 or w < 1:
    raise ValueError(f"input {x.shape[1]}x{x.shape[2]} is smaller than the {kh}x{kw} kernel")
  views = [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (h - 1) * sh + 1,
                                         j + (w - 1) * sw + 1, xp.shape[3]), (1, sh, sw, 1))
           for i in range(kh) for j in range(kw)]
  return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int] = 1,
           padding: Sequence[tuple[int, int]] | None = None) -> jax.Array:
  """2-D convolution (cross-correlation) as im2col + one matmul, NHWC / HWIO.

  Equals lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=
  ("NHWC", "HWIO", "NHWC")) up to float rounding, values and gradients.

  Args:
    x: (B, H, W, C) input.
    kernel: (kh, kw, C, O).
    strides: int or (sh, sw).
    padding: ((top, bottom), (left, right)); default `same_padding(kernel)`.

  Returns:
    (B, h, w, O) in the result dtype of x and kernel.
  """
  kh, kw, c, o = kernel.shape
  if x.shape[-1] != c:
    raise ValueError(f"conv2d: input has {x.shape[-1]} channels, kernel expects {c}")
  padding = same_padding((kh, kw)) if padding is None else padding
  patches = extract_patches(x, (kh, kw), strides, padding)
  return linear(patches, kernel.reshape(kh * kw * c, o))


def scale_images(images: jax.Array, mean: float, std: float, dtype: Dtype) -> jax.Array:
  """uint8 -> [0, 1] float; then (x - mean) / std with fixed constants (see module doc)."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return ((x - mean) / std).astype(dtype)


# ----------------------------------------------------------------------------- layers

class Dense(nn.Module):
  """nn.Dense computed by `linear`: the same parameters ("kernel" (in, features),
  lecun-normal; "bias" (features,), zeros) and values, a faster backward pass."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., in) -> (..., features) in `dtype`."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return linear(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class Conv(nn.Module):
  """A conv layer computed by `conv2d` (im2col + matmul), symmetric padding (k-1)//2."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, ceil-ish(H / s), ..., features) in `dtype`."""
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class GaborEnergyFrontEnd(nn.Module):
  """Fixed Gabor-energy stage: quadrature bank conv -> sqrt(even^2 + odd^2 + eps) -> pool.

  No parameters: the kernels (`jaxvna.gabor.quadrature_bank`) are constants behind
  stop_gradient. Channels are averaged to grey first.

  Input (B, H, W, C) float (already scaled); output (B, h, w, orientations * len(freqs)),
  h = H / stride / pool, channels ordered (frequency, orientation).
  """
  size: int = 11
  orientations: int = 4
  spatial_frequencies: tuple[float, ...] = (0.125, 0.25)
  stride: int = 2
  pool: int = 1
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bank = quadrature_bank(self.size, self.orientations, tuple(self.spatial_frequencies))
    kernel = lax.stop_gradient(jnp.asarray(bank[:, :, None, :], self.dtype))
    grey = x.astype(self.dtype).mean(axis=-1, keepdims=True)
    y = conv2d(grey, kernel, self.stride)
    y = y.reshape(*y.shape[:-1], -1, 2).astype(jnp.float32)  # (..., filters, [even, odd])
    energy = jnp.sqrt(jnp.sum(y * y, axis=-1) + self.eps).astype(self.dtype)
    if self.pool > 1:
      energy = nn.avg_pool(energy, (self.pool, self.pool), (self.pool, self.pool))
    return energy


class MLP(nn.Module):
  """Dense layers with an activation after each; records each output as a feature."""
  hidden: tuple[int, ...]
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  prefix: str = "hidden"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    act, feats = _activation(self.activation), {}
    for i, width in enumerate(self.hidden):
      x = act(Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"{self.prefix}{i}")(x))
      feats[f"{self.prefix}{i}"] = x
    return x, feats


def _mlp_head(tower: nn.Module, x: jax.Array, feats: dict, return_features: bool):
  """The end every tower shares: MLP(tower.hidden) -> linear tower.embed_dim, float32.

  Called inside a tower's compact __call__, so "mlp" and "head" are that tower's children.
  Returns emb (B, embed_dim), or (emb, feats with the MLP's outputs added).
  """
  x, hidden_feats = MLP(tower.hidden, tower.activation, tower.dtype, tower.param_dtype,
                        name="mlp")(x)
  emb = Dense(tower.embed_dim, dtype=tower.dtype, param_dtype=tower.param_dtype,
              name="head")(x).astype(jnp.float32)
  return (emb, {**feats, **hidden_feats}) if return_features else emb


# ----------------------------------------------------------------------------- image towers

class ConvTower(nn.Module):
  """Small CNN: [Gabor energy] -> (conv k x k stride s -> act) per channel count -> global
  pool -> MLP(hidden) -> linear embed_dim.

  __call__(images (B, H, W, C), *, train, return_features=False) -> (B, embed_dim), or
  (emb, features) with features["level{i}"] the (B, h_i, w_i, channels[i-1]) activation of
  conv i (1-based), features["front_end"] the Gabor energies when used, and
  features["pooled"] (B, channels[-1]).
  """
  channels: tuple[int, ...] = (32, 64, 128)
  kernel_size: int = 3
  strides: int = 2
  embed_dim: int = 128
  hidden: tuple[int, ...] = ()
  pool: str = "mean"
  activation: str = "gelu"
  front_end: str | None = None
  gabor: dict | None = None
  input_mean: float = 0.5
  input_std: float = 0.25
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, return_features: bool = False):
    del train  # no dropout / batch statistics in this tower
    if images.ndim != 4:
      raise ValueError(f"ConvTower: images must be (B, H, W, C), got shape {images.shape}")
    act, feats = _activation(self.activation), {}
    x = scale_images(images, self.input_mean, self.input_std, self.dtype)
    if self.front_end == "gabor":
      x = GaborEnergyFrontEnd(**(self.gabor or {}), dtype=self.dtype, name="gabor")(x)
      feats["front_end"] = x
    elif self.front_end is not None:
      raise ValueError(f"image_tower.front_end: unknown {self.front_end!r}; expected None|'gabor'")
    for i, ch in enumerate(self.channels):
      x = act(Conv(ch, self.kernel_size, self.strides, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=f"conv{i + 1}")(x))
      feats[f"level{i + 1}"] = x
    if self.pool == "mean":
      x = x.astype(jnp.float32).mean(axis=(1, 2)).astype(self.dtype)
    elif self.pool == "max":
      x = x.max(axis=(1, 2))
    else:
      raise ValueError(f"image_tower.pool: unknown {self.pool!r}; expected 'mean'|'max'")
    feats["pooled"] = x
    return _mlp_head(self, x, feats, return_features)


class MLPTower(nn.Module):
  """Flattened image (or a vector) -> MLP(hidden, act) -> linear embed_dim.

  __call__(x (B, ...) uint8/float, *, train, return_features=False) -> (B, embed_dim) or
  (emb, {"hidden{i}": (B, hidden[i])}). Images are scaled as in ConvTower.
  """
  hidden: tuple[int, ...] = (512, 256)
  embed_dim: int = 128
  activation: str = "relu"
  input_mean: float = 0.5
  input_std: float = 0.25
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, return_features: bool = False):
    del train
    x = scale_images(x, self.input_mean, self.input_std, self.dtype)
    x = x.reshape(x.shape[0], -1)
    return _mlp_head(self, x, {}, return_features)


class FeatureHead(nn.Module):
  """LiT-style head on precomputed features of a frozen network: (B, F) -> (B, embed_dim).

  Features are used as given (no scaling). Same return convention as MLPTower.
  """
  hidden: tuple[int, ...] = (512,)
  embed_dim: int = 128
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool, return_features: bool = False):
    del train
    x = features.reshape(features.shape[0], -1).astype(self.dtype)
    return _mlp_head(self, x, {}, return_features)


# ----------------------------------------------------------------------------- neural tower

def neuron_mask(num_neurons_per_subject: Sequence[int]) -> np.ndarray:
  """(S, K_max) bool: True for the recorded neurons of each subject."""
  counts = np.asarray(num_neurons_per_subject)
  return np.arange(counts.max())[None, :] < counts[:, None]


def preprocess_responses(responses: jax.Array, mode: str) -> jax.Array:
  """'none': as given; 'log1p': sign(x) * log1p(|x|), compresses heavy-tailed counts
  (sign-preserving so upstream-standardised responses stay valid)."""
  if mode == "none":
    return responses
  if mode == "log1p":
    return jnp.sign(responses) * jnp.log1p(jnp.abs(responses))
  raise ValueError(f"neural_tower.preprocess: unknown {mode!r}; expected 'none'|'log1p'")


class SubjectReadin(nn.Module):
  """Per-subject linear read-in as one batched op: (B, K_max), subject (B,) -> (B, D).

  Weights are stacked (S, K_max, D); rows beyond a subject's neuron count are masked to
  zero (so padded inputs are ignored and get no gradient). The batch is spread into a
  (B, S * K_max) block-one-hot matrix and multiplied by the (S * K_max, D) weight: one
  matmul for any mix of subjects, S times the FLOPs of a single read-in (S is small), no
  (B, K_max, D) gather.
  """
  num_neurons_per_subject: tuple[int, ...]
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, responses: jax.Array, subject: jax.Array) -> jax.Array:
    counts = tuple(int(c) for c in self.num_neurons_per_subject)
    s, k = len(counts), max(counts)
    if responses.shape[-1] != k:
      raise ValueError(f"responses have {responses.shape[-1]} columns; expected K_max={k} "
                       f"(the largest of num_neurons_per_subject={counts})")
    # lecun_normal on a stacked weight uses fan_in = K_max for every subject; scale to the
    # subject's own count instead so each read-in starts with unit-variance outputs.
    kernel = self.param("kernel", nn.initializers.normal(1.0), (s, k, self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (s, self.features), self.param_dtype)
    mask = jnp.asarray(neuron_mask(counts))
    scale = 1.0 / jnp.sqrt(jnp.asarray(counts, jnp.float32))[:, None, None]
    kernel = jnp.where(mask[:, :, None], kernel * scale, 0.0).astype(self.dtype)
    onehot = jax.nn.one_hot(subject, s, dtype=self.dtype)                  # (B, S)
    x = responses.astype(self.dtype) * (onehot @ mask.astype(self.dtype))   # zero padding
    if s == 1:
      y = linear(x, kernel[0])
    else:
      spread = (onehot[:, :, None] * x[:, None, :]).reshape(x.shape[0], s * k)
      y = linear(spread, kernel.reshape(s * k, self.features))
    return y + onehot @ bias.astype(self.dtype)


class NeuralTower(nn.Module):
  """Responses -> [preprocess] -> neuron dropout -> per-subject read-in -> act -> MLP ->
  linear embed_dim.

  __call__(responses (B, K_max) float, subject (B,) int32, *, train,
  return_features=False) -> (B, embed_dim), or (emb, {"readin": (B, readin_dim),
  "hidden{i}": ...}). At train time each neuron of each example is dropped with
  probability `neuron_dropout` (rng stream "dropout") and the rest rescaled by 1/(1-p).
  """
  num_neurons_per_subject: tuple[int, ...]
  readin_dim: int = 256
  hidden: tuple[int, ...] = (512, 256)
  embed_dim: int = 128
  neuron_dropout: float = 0.1
  preprocess: str = "none"
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, responses: jax.Array, subject: jax.Array, *, train: bool,
               return_features: bool = False):
    if responses.ndim != 2 or subject.shape != responses.shape[:1]:
      raise ValueError(f"NeuralTower: responses must be (B, K_max) and subject (B,), got "
                       f"{responses.shape} and {subject.shape}")
    x = preprocess_responses(responses.astype(jnp.float32), self.preprocess)
    if train and self.neuron_dropout > 0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.neuron_dropout, x.shape)
      x = jnp.where(keep, x / (1 - self.neuron_dropout), 0.0)
    act = _activation(self.activation)
    x = act(SubjectReadin(tuple(self.num_neurons_per_subject), self.readin_dim, self.dtype,
                          self.param_dtype, name="readin")(x, subject))
    feats = {"readin": x}
    return _mlp_head(self, x, feats, return_features)


# ----------------------------------------------------------------------------- top level

class DualEncoder(nn.Module):
  """The VNA dual encoder.

  __call__(images, responses, subject, *, train, return_features=False) ->
  (img_emb (B, D), neu_emb (B, D), temperature (), bias ()), embeddings L2-normalised
  float32; with return_features a fifth item, the image tower's feature maps. The CLIP
  logits are img_emb @ neu_emb.T / temperature; `bias` is the SigLIP logit bias (unused by
  the CLIP loss). Parameters "log_temperature" (init log(init_temperature)) and "bias".
  """
  image_tower: nn.Module
  neural_tower: nn.Module
  init_temperature: float = 0.07
  min_temperature: float = 0.01
  init_bias: float = -10.0
  eps: float = 1e-6

  def setup(self):
    self.log_temperature = self.param(
        "log_temperature", nn.initializers.constant(math.log(self.init_temperature)), ())
    self.bias = self.param("bias", nn.initializers.constant(self.init_bias), ())

  def embed_images(self, images: jax.Array, *, train: bool = False,
                   return_features: bool = False):
    """(B, ...) images -> L2-normalised (B, D) [, features]."""
    out = self.image_tower(images, train=train, return_features=return_features)
    if return_features:
      return l2_normalize(out[0], self.eps), out[1]
    return l2_normalize(out, self.eps)

  def embed_responses(self, responses: jax.Array, subject: jax.Array, *,
                      train: bool = False) -> jax.Array:
    """(B, K_max) responses, (B,) subject -> L2-normalised (B, D)."""
    return l2_normalize(self.neural_tower(responses, subject, train=train), self.eps)

  def temperature(self) -> jax.Array:
    """The clamped temperature (scalar)."""
    return temperature_from_log(self.log_temperature, self.min_temperature)

  def __call__(self, images, responses, subject, *, train: bool,
               return_features: bool = False):
    img = self.embed_images(images, train=train, return_features=return_features)
    neu = self.embed_responses(responses, subject, train=train)
    out = (img[0] if return_features else img, neu, self.temperature(), self.bias)
    return out + (img[1],) if return_features else out


def _per_subject_readout(h, subject, counts, param_dtype, dtype, module):
  """(B, F) -> (B, K_max) by each example's subject's linear readout, one matmul."""
  s, k = len(counts), max(counts)
  kernel = module.param("readout_kernel", nn.initializers.lecun_normal(),
                        (h.shape[-1], s * k), param_dtype)
  bias = module.param("readout_bias", nn.initializers.zeros, (s, k), param_dtype)
  y = (h.astype(dtype) @ kernel.astype(dtype)).reshape(h.shape[0], s, k).astype(jnp.float32)
  y = jnp.take_along_axis(y, subject[:, None, None], axis=1)[:, 0] + bias[subject]
  return y, jnp.asarray(neuron_mask(counts))[subject]


class DirectEncoder(nn.Module):
  """Baseline: image -> firing rates of every neuron of the example's subject.

  __call__(images, subject (B,), *, train) -> (B, K_max) float32 softplus rates; entries
  beyond the subject's neuron count are 0. The trunk is an image tower (its embedding,
  after `activation`, feeds the per-subject linear readout).
  """
  image_tower: nn.Module
  num_neurons_per_subject: tuple[int, ...]
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, subject, *, train: bool):
    h = _activation(self.activation)(self.image_tower(images, train=train))
    y, mask = _per_subject_readout(h, subject, tuple(int(c) for c in self.num_neurons_per_subject),
                                   self.param_dtype, self.dtype, self)
    return jnp.where(mask, nn.softplus(y), 0.0)


class DirectDecoder(nn.Module):
  """Baseline: response -> downsampled grey image (B, out_size * out_size), linear output
  (the target is `downsample_images`: area-averaged grey in [0, 1], flattened row-major).

  __call__(responses, subject, *, train) -> (B, out_size**2) float32.
  """
  neural_tower: nn.Module
  out_size: int = 16
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, responses, subject, *, train: bool):
    h = _activation(self.activation)(self.neural_tower(responses, subject, train=train))
    out = nn.Dense(self.out_size * self.out_size, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="pixels")(h)
    return out.astype(jnp.float32)


# ----------------------------------------------------------------------------- config

def default_model_config():
  """The model ConfigDict with every field `build_model` reads, at its default."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.embed_dim = 128
  c.dtype = "float32"
  c.init_temperature = 0.07
  c.min_temperature = 0.01
  c.init_bias = -10.0
  c.decoder_size = 16
  c.image_tower = ml_collections.ConfigDict(dict(
      type="cnn", channels=(32, 64, 128), kernel_size=3, strides=2, hidden=(),
      activation="gelu", pool="mean", front_end=ml_collections.FieldReference(None, str),
      gabor=dict(size=11, orientations=4, spatial_frequencies=(0.125, 0.25), stride=2, pool=1),
      input_mean=0.5, input_std=0.25))
  c.neural_tower = ml_collections.ConfigDict(dict(
      readin_dim=256, hidden=(512, 256), neuron_dropout=0.1, preprocess="none",
      activation="relu"))
  return c


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _get(cfg, key, default):
  if cfg is None:
    return default
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None and default is not None else value


def _build_image_tower(cfg, embed_dim, image_shape, dtype):
  kind = _get(cfg, "type", "cnn")
  common = dict(embed_dim=embed_dim, dtype=dtype)
  if kind == "cnn":
    if len(image_shape) != 3:
      raise ValueError(f"image_tower.type='cnn' needs (H, W, C) images, got {image_shape}")
    gabor_cfg = _get(cfg, "gabor", None)
    gabor_kw = None if gabor_cfg is None else {
        k: (tuple(v) if isinstance(v, (list, tuple)) else v)
        for k, v in (gabor_cfg.to_dict() if hasattr(gabor_cfg, "to_dict") else dict(gabor_cfg)).items()}
    return ConvTower(channels=tuple(_get(cfg, "channels", (32, 64, 128))),
                     kernel_size=_get(cfg, "kernel_size", 3), strides=_get(cfg, "strides", 2),
                     hidden=tuple(_get(cfg, "hidden", ())), pool=_get(cfg, "pool", "mean"),
                     activation=_get(cfg, "activation", "gelu"),
                     front_end=_get(cfg, "front_end", None), gabor=gabor_kw,
                     input_mean=_get(cfg, "input_mean", 0.5),
                     input_std=_get(cfg, "input_std", 0.25), **common)
  if kind == "mlp":
    return MLPTower(hidden=tuple(_get(cfg, "hidden", (512, 256))),
                    activation=_get(cfg, "activation", "relu"),
                    input_mean=_get(cfg, "input_mean", 0.5),
                    input_std=_get(cfg, "input_std", 0.25), **common)
  if kind == "features":
    return FeatureHead(hidden=tuple(_get(cfg, "hidden", (512,))),
                       activation=_get(cfg, "activation", "relu"), **common)
  raise ValueError(f"image_tower.type: unknown {kind!r}; expected one of {IMAGE_TOWER_TYPES}")


def build_model(config, num_neurons_per_subject: Sequence[int], image_shape: Sequence[int],
                *, method: str | None = None, decoder_size: int | None = None) -> nn.Module:
  """The module for `method` (default config.method, else "vna") from a model config.

  Args:
    config: model ConfigDict (fields in the module docstring; missing ones default).
    num_neurons_per_subject: neuron count of each subject (K_max = the largest).
    image_shape: shape of one image (H, W, C), or (F,) for image_tower.type="features".
    method: "vna" -> DualEncoder, "direct_encoding" -> DirectEncoder,
      "direct_decoding" -> DirectDecoder.
    decoder_size: overrides config.decoder_size for the direct decoder.

  Returns:
    An unbound flax module.
  """
  method = method or _get(config, "method", "vna")
  counts = tuple(int(c) for c in num_neurons_per_subject)
  if not counts or min(counts) < 1:
    raise ValueError(f"num_neurons_per_subject must be positive counts, got {counts}")
  dtype_name = _get(config, "dtype", "float32")
  if dtype_name not in _DTYPES:
    raise ValueError(f"model.dtype: unknown {dtype_name!r}; expected one of {sorted(_DTYPES)}")
  dtype = _DTYPES[dtype_name]
  embed_dim = _get(config, "embed_dim", 128)
  ncfg = _get(config, "neural_tower", None)

  def neural_tower():
    return NeuralTower(counts, readin_dim=_get(ncfg, "readin_dim", 256),
                       hidden=tuple(_get(ncfg, "hidden", (512, 256))), embed_dim=embed_dim,
                       neuron_dropout=_get(ncfg, "neuron_dropout", 0.1),
                       preprocess=_get(ncfg, "preprocess", "none"),
                       activation=_get(ncfg, "activation", "relu"), dtype=dtype)

  if method == "vna":
    return DualEncoder(_build_image_tower(_get(config, "image_tower", None), embed_dim,
                                          tuple(image_shape), dtype), neural_tower(),
                       init_temperature=_get(config, "init_temperature", 0.07),
                       min_temperature=_get(config, "min_temperature", 0.01),
                       init_bias=_get(config, "init_bias", -10.0))
  if method == "direct_encoding":
    return DirectEncoder(_build_image_tower(_get(config, "image_tower", None), embed_dim,
                                            tuple(image_shape), dtype), counts, dtype=dtype)
  if method == "direct_decoding":
    size = decoder_size or _get(config, "decoder_size", 16)
    return DirectDecoder(neural_tower(), out_size=size, dtype=dtype)
  raise ValueError(f"method: unknown {method!r}; expected one of {METHODS}")
