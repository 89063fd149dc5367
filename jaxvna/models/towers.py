"""Flax (linen) towers of the dual encoder and of the direct baselines.

Every module is pure functional: the trainer calls `model.init` / `model.apply`. Shapes:
images (B, H, W, C) uint8 or float, responses (B, K_max) float zero-padded, subject (B,)
int32, embeddings (B, D) float32 (not normalised; `l2_normalize` does that).

Kernel forms. Both forms below are XLA:CPU's; on GPU and TPU (`kernel_form`) the plain
`dot_general` and `conv_general_dilated` are traced instead, with the same parameters, so
checkpoints move between backends.

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
std (`input_mean`, `input_std`), not per image: per-image standardisation would erase the
luminance and contrast that neurons respond to.

Building from a config: `dual_encoder`, `direct_encoder` and `direct_decoder` take the
run's `config.model` and pass each block's fields to its module (`ConvTower(**fields)`).
The configurable fields have no defaults here: the config is their single source
(`configs/common.py` lists every field at its default), and a missing field, or one that
no tower of its kind has, is a ConfigError naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvna.errors import ConfigError
from jaxvna.gabor import quadrature_bank

Dtype = Any

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


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
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


# Which form of the dense and convolution kernels to trace: "cpu" (the patch matmul and
# row-major weight gradient that XLA:CPU runs fastest), "xla" (plain `dot_general` and
# `conv_general_dilated`, which GPU and TPU compilers map to their own kernels), or None:
# "cpu" on the CPU backend, "xla" elsewhere. Values, gradients and parameters agree.
KERNEL_FORMS = ("cpu", "xla")
_kernel_form: list[str | None] = [None]


def kernel_form() -> str:
  """The form traced now: the one set by `use_kernel_form`, else by backend."""
  if _kernel_form[0] is not None:
    return _kernel_form[0]
  return "cpu" if jax.default_backend() == "cpu" else "xla"


@contextlib.contextmanager
def use_kernel_form(form: str | None):
  """Traces `linear` and `conv2d` in `form` ("cpu" | "xla" | None: by backend) inside."""
  if form not in (*KERNEL_FORMS, None):
    raise ValueError(f"kernel form: unknown {form!r}; expected one of {KERNEL_FORMS}")
  previous, _kernel_form[0] = _kernel_form[0], form
  try:
    yield
  finally:
    _kernel_form[0] = previous


def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x (..., K) @ kernel (K, N) -> (..., N), differentiated in fast matmul layouts.

  Values and gradients equal those of `x @ kernel`; in the "cpu" form the weight gradient
  is computed as (row-major copy of x^T) @ g (see the module docstring for why).
  """
  if kernel_form() == "xla":
    return x @ kernel
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
  """2-D convolution (cross-correlation), NHWC / HWIO: im2col + one matmul in the "cpu"
  kernel form, `lax.conv_general_dilated` in the "xla" form.

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
  if kernel_form() == "xla":
    return lax.conv_general_dilated(x, kernel, _pair(strides), tuple(padding),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
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
  size: int
  orientations: int
  spatial_frequencies: tuple[float, ...]
  stride: int
  pool: int
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
    act, feats = activation_fn(self.activation), {}
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
  channels: tuple[int, ...]
  kernel_size: int
  strides: int
  embed_dim: int
  hidden: tuple[int, ...]
  pool: str
  activation: str
  front_end: str | None
  gabor: dict | None  # GaborEnergyFrontEnd's fields, used when front_end == "gabor"
  input_mean: float
  input_std: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, return_features: bool = False):
    del train  # no dropout / batch statistics in this tower
    if images.ndim != 4:
      raise ValueError(f"ConvTower: images must be (B, H, W, C), got shape {images.shape}")
    act, feats = activation_fn(self.activation), {}
    x = scale_images(images, self.input_mean, self.input_std, self.dtype)
    if self.front_end == "gabor":
      x = GaborEnergyFrontEnd(**self.gabor, dtype=self.dtype, name="gabor")(x)
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
  hidden: tuple[int, ...]
  embed_dim: int
  activation: str
  input_mean: float
  input_std: float
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
  hidden: tuple[int, ...]
  embed_dim: int
  activation: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool, return_features: bool = False):
    del train
    x = features.reshape(features.shape[0], -1).astype(self.dtype)
    return _mlp_head(self, x, {}, return_features)


POOLS = ("mean", "none", "k (an integer: k x k blocks)")


def parse_pool(pool: str | int) -> str | int:
  """`pool` as "mean", "none" or a positive int k; ConfigError otherwise."""
  if isinstance(pool, int) or (isinstance(pool, str) and pool.isdigit()):
    k = int(pool)
    if k < 1:
      raise ConfigError(f"pool: a block grid must be at least 1, got {pool!r}")
    return k
  if pool not in ("mean", "none"):
    raise ConfigError(f"pool: unknown {pool!r}; expected one of {POOLS}")
  return pool


def pool_features(x: jax.Array, pool: str | int) -> jax.Array:
  """(B, h, w, c) maps or (B, c) vectors -> (B, F). A vector is returned as it is; a map
  pooled by `pool`: "mean" over h and w (F = c), "none" flattened row-major
  (F = h * w * c), or k, the mean of each of k x k equal blocks, flattened (F = k * k * c;
  k must divide h and w)."""
  pool = parse_pool(pool)
  if x.ndim == 2:
    return x
  if x.ndim != 4:
    raise ConfigError(f"pool: expected (B, h, w, c) maps or (B, c) vectors, got shape "
                      f"{tuple(x.shape)}")
  b, h, w, c = x.shape
  if pool == "mean":
    return jnp.mean(x, axis=(1, 2))
  if pool == "none":
    return x.reshape(b, h * w * c)
  if h % pool or w % pool:
    raise ConfigError(f"pool: a {pool}x{pool} grid does not divide the {h}x{w} map; choose "
                      "a k that divides both (or 'mean')")
  blocks = x.reshape(b, pool, h // pool, pool, w // pool, c).mean(axis=(2, 4))
  return blocks.reshape(b, pool * pool * c)


FROZEN_PREFIX = "frozen_"  # parameters named so are never updated (`trained_mask`)


@functools.lru_cache(maxsize=2)
def pretrained(backbone: str, weights_file: str, input_size: int):
  """The `jaxvna.models.backbones.Backbone` of a tower's fields, loaded once per process.

  The first call often comes from inside a jitted init or step: the weights are made
  eagerly even then, since a cached array staged into one trace would leak into the next.
  """
  from jaxvna.models import backbones  # noqa: PLC0415 -- backbones import this module
  if not weights_file:
    raise ConfigError("model.image_tower.weights_file: empty; expected the backbone's "
                      "parameter file (or 'random' for a randomly initialised ResNet)")
  with jax.ensure_compile_time_eval():
    return backbones.load(backbone, weights_file, image_size=input_size or None)


class BackboneTower(nn.Module):
  """A pretrained network, frozen or fine-tuned: images -> the network's `layer`, pooled
  -> MLP(hidden) -> linear embed_dim.

  The network (`jaxvna.models.backbones`: "resnet18", "resnet50", "vit" or a user's
  "package.module:factory") is initialised from its `weights_file` when the model is
  initialised, and runs in eval mode (BatchNorm with the file's running statistics, held
  as the never-updated parameter "frozen_stats"). With `freeze` its parameters are
  "frozen_backbone", outside the gradient and never updated (a LiT-style locked tower
  that still sees the pixels); without, "backbone", fine-tuned with the rest. Pooling of
  the stage as `pool_features` ("mean", "none", "k").

  __call__(images (B, H, W, C), *, train, return_features=False) -> (B, embed_dim), or
  (emb, features) with features[stage] every stage of the network (maps (B, h, w, c) or
  vectors), for DINA's levels, and the MLP's outputs.
  """
  backbone: str
  weights_file: str  # .pth / .npz ('random': a randomly initialised ResNet)
  layer: str
  pool: str
  input_size: int  # the side images are resized to; 0: the network's own
  freeze: bool
  hidden: tuple[int, ...]
  embed_dim: int
  activation: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, return_features: bool = False):
    del train  # eval mode always: fine-tuning keeps the file's BatchNorm statistics
    from jaxvna.models import backbones  # noqa: PLC0415
    net = pretrained(self.backbone, self.weights_file, self.input_size)
    backbones.check_stage(net, self.layer)
    name = FROZEN_PREFIX + "backbone" if self.freeze else "backbone"
    params = self.param(name, lambda _: net.variables["params"])
    if self.freeze:
      params = lax.stop_gradient(params)
    variables = {"params": params}
    stats = {k: v for k, v in net.variables.items() if k != "params"}
    if stats:
      variables.update(lax.stop_gradient(self.param(FROZEN_PREFIX + "stats", lambda _: stats)))
    if self.is_initializing():  # the head needs only the shapes: skip the network's FLOPs
      feats = {k: jnp.zeros(v.shape, v.dtype)
               for k, v in jax.eval_shape(net.apply, variables, images).items()}
    else:
      feats = net.apply(variables, images)
    x = pool_features(feats[self.layer], self.pool).astype(self.dtype)
    return _mlp_head(self, x, dict(feats), return_features)


def backbone_feature_maps(block) -> tuple[str, ...]:
  """The stages of a `backbone` image tower block's network that are (B, h, w, c) maps."""
  net = pretrained(block["backbone"], block["weights_file"], block["input_size"])
  shapes = jax.eval_shape(net.apply, net.variables,
                          jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.uint8))
  return tuple(s for s in net.stages if len(shapes[s].shape) == 4)


def trained_mask(params) -> Any:
  """params -> a tree of bools: False for parameters under a name starting with
  FROZEN_PREFIX (which the optimiser must leave as they are), True elsewhere."""
  def trained(path, _):
    return not any(str(getattr(k, "key", "")).startswith(FROZEN_PREFIX) for k in path)
  return jax.tree_util.tree_map_with_path(trained, params)


def has_frozen_params(model_config) -> bool:
  """Whether a model config builds parameters that `trained_mask` marks frozen."""
  return model_config.get("image_tower", {}).get("type") == "backbone"


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
  readin_dim: int
  hidden: tuple[int, ...]
  embed_dim: int
  neuron_dropout: float
  preprocess: str
  activation: str
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
    act = activation_fn(self.activation)
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
  init_temperature: float
  min_temperature: float
  init_bias: float
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


def per_subject_readout(h, subject, counts, param_dtype, dtype, module):
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
    h = activation_fn(self.activation)(self.image_tower(images, train=train))
    y, mask = per_subject_readout(h, subject, tuple(int(c) for c in self.num_neurons_per_subject),
                                   self.param_dtype, self.dtype, self)
    return jnp.where(mask, nn.softplus(y), 0.0)


class DirectDecoder(nn.Module):
  """Baseline: response -> downsampled grey image (B, out_size * out_size), linear output
  (the target is `downsample_images`: area-averaged grey in [0, 1], flattened row-major).

  __call__(responses, subject, *, train) -> (B, out_size**2) float32.
  """
  neural_tower: nn.Module
  out_size: int
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, responses, subject, *, train: bool):
    h = activation_fn(self.activation)(self.neural_tower(responses, subject, train=train))
    out = nn.Dense(self.out_size * self.out_size, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="pixels")(h)
    return out.astype(jnp.float32)


# ----------------------------------------------------------------------------- config

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
IMAGE_TOWERS = {"cnn": ConvTower, "mlp": MLPTower, "features": FeatureHead,
                "backbone": BackboneTower}


def compute_dtype(model_config) -> Dtype:
  """The jnp dtype named by `model.dtype` ("float32" | "bfloat16")."""
  name = model_config.dtype
  if name not in DTYPES:
    raise ConfigError(f"model.dtype: unknown {name!r}; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def module_fields(block, module: type, where: str, *, given=(), ignore=()) -> dict:
  """The keyword arguments of `module` from a config block, checked both ways.

  Args:
    block: a ConfigDict (or mapping) holding every field of `module` that has no default,
      but those in `given`.
    module: a flax module class.
    where: the block's path in the config, for errors ("model.image_tower").
    given: fields the caller passes itself (embed_dim, dtype, ...).
    ignore: keys of the block that are not fields ("type").

  Returns:
    {field: value}, lists as tuples and nested blocks as plain dicts.

  Raises:
    ConfigError: a field is missing from the block, or the block has a key that is no
      field of `module`.
  """
  values = dict(block.items())
  fields = {f.name: f for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  required = [n for n, f in fields.items() if n not in given
              and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  missing = [n for n in required if n not in values]
  unknown = sorted(set(values) - set(required) - set(ignore))
  if missing or unknown:
    raise ConfigError(f"{where}: {module.__name__} needs the fields {sorted(required)}"
                      + (f"; missing {missing}" if missing else "")
                      + (f"; unknown {unknown}" if unknown else ""))

  def plain(value):
    if hasattr(value, "items"):
      return {k: plain(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value
  return {n: plain(values[n]) for n in required}


def image_tower(block, embed_dim: int, image_shape: Sequence[int], dtype: Dtype) -> nn.Module:
  """The image tower of `model.image_tower` (its `type` selects the module)."""
  kind = block.get("type")
  if kind not in IMAGE_TOWERS:
    raise ConfigError(f"model.image_tower.type: unknown {kind!r}; expected one of "
                      f"{sorted(IMAGE_TOWERS)}")
  if kind in ("cnn", "backbone") and len(image_shape) != 3:
    raise ConfigError(f"model.image_tower.type={kind!r} needs (H, W, C) images, got "
                      f"{tuple(image_shape)}")
  module = IMAGE_TOWERS[kind]
  # Fields of the other tower types may stay in the block (a type switched on the command
  # line, `--config.model.image_tower.type=mlp`); a field of none is a typo.
  others = {f.name for m in IMAGE_TOWERS.values() for f in dataclasses.fields(m)}
  return module(**module_fields(block, module, "model.image_tower", given=("embed_dim",),
                                ignore=("type", *others)), embed_dim=embed_dim, dtype=dtype)


def neural_tower(block, num_neurons_per_subject: Sequence[int], embed_dim: int,
                 dtype: Dtype) -> NeuralTower:
  """The neural tower of `model.neural_tower`."""
  counts = _neuron_counts(num_neurons_per_subject)
  return NeuralTower(counts, **module_fields(
      block, NeuralTower, "model.neural_tower",
      given=("num_neurons_per_subject", "embed_dim")), embed_dim=embed_dim, dtype=dtype)


def _neuron_counts(num_neurons_per_subject) -> tuple[int, ...]:
  counts = tuple(int(c) for c in num_neurons_per_subject)
  if not counts or min(counts) < 1:
    raise ValueError(f"num_neurons_per_subject must be positive counts, got {counts}")
  return counts


def dual_encoder(config, num_neurons_per_subject: Sequence[int],
                 image_shape: Sequence[int]) -> DualEncoder:
  """VNA's dual encoder from the model config (`config.model`).

  Args:
    config: the model ConfigDict: embed_dim, dtype, init_temperature, min_temperature,
      init_bias, image_tower, neural_tower (configs/common.py).
    num_neurons_per_subject: neuron count of each subject (K_max = the largest).
    image_shape: shape of one image (H, W, C), or (F,) for image_tower.type="features".
  """
  dtype = compute_dtype(config)
  return DualEncoder(
      image_tower(config.image_tower, config.embed_dim, image_shape, dtype),
      neural_tower(config.neural_tower, num_neurons_per_subject, config.embed_dim, dtype),
      init_temperature=config.init_temperature, min_temperature=config.min_temperature,
      init_bias=config.init_bias)


def direct_encoder(config, num_neurons_per_subject: Sequence[int],
                   image_shape: Sequence[int]) -> DirectEncoder:
  """The direct-encoding baseline (image tower -> rates) from the model config."""
  dtype = compute_dtype(config)
  return DirectEncoder(image_tower(config.image_tower, config.embed_dim, image_shape, dtype),
                       _neuron_counts(num_neurons_per_subject), dtype=dtype)


def direct_decoder(config, num_neurons_per_subject: Sequence[int]) -> DirectDecoder:
  """The direct-decoding baseline (neural tower -> a decoder_size^2 grey image)."""
  dtype = compute_dtype(config)
  return DirectDecoder(
      neural_tower(config.neural_tower, num_neurons_per_subject, config.embed_dim, dtype),
      out_size=config.decoder_size, dtype=dtype)
