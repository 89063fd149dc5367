"""A small DDPM/DDIM image diffusion model and MI-guided editing (MIG-Vis).

Forward process (Ho et al. 2020), discrete steps t = 0 .. T-1:

  q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I),   a_t = alpha_bar[t] = prod_{s<=t} (1 - beta_s),

with `alpha_bar` from a cosine (Nichol & Dhariwal 2021) or linear beta schedule. The U-Net
predicts the noise eps of x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps and is trained with the
epsilon objective E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2 (method "diffusion", one
trainer step like every other method).

Sampling is deterministic DDIM (Song et al. 2021, eta = 0) on a subsequence of the steps:

  x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),
  x_{t'} = sqrt(a_{t'}) x0_hat + sqrt(1 - a_{t'}) eps,      t' < t the next step.

Guidance (Dhariwal & Nichol 2021, classifier guidance written for DDIM) replaces eps by

  eps' = eps - s * sqrt(1 - a_t) * grad_{x_t} score(x0_hat(x_t)),

where `score` is any differentiable function of the predicted clean image (for MIG-Vis:
the critic's InfoNCE estimate of the pointwise mutual information with a target value of
one latent group, `migvis.MICritic.pointwise_mi`). The gradient flows through the U-Net
into x_t. Optionally the gradient with respect to x0_hat is first made orthogonal to the
gradients of other readings of the image (`project_out`), which then stay put to first
order (for MIG-Vis: the critic's readings of the other groups). Editing starts from a
real image taken to an intermediate step t0 and runs the guided DDIM back to 0, so the
result keeps the layout of its source. The image reaches t0 either by the forward process
(random noise, SDEdit) or by deterministic DDIM inversion, whose unguided round trip
returns the image itself (`start_point`).

Images live in [-1, 1] (`to_model_space`); shapes are (B, H, W, C) throughout.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvna.models import towers

SCHEDULES = ("cosine", "linear")


# ----------------------------------------------------------------------------- schedule

def noise_schedule(kind: str, num_timesteps: int) -> np.ndarray:
  """alpha_bar (T,) float32, strictly decreasing from just below 1 towards 0.

  "cosine": a_t = f(t + 1) / f(0), f(t) = cos^2(((t / T) + 0.008) / 1.008 * pi / 2), with
  each beta_t = 1 - a_t / a_{t-1} clipped to 0.999 (Nichol & Dhariwal).
  "linear": beta linear from 1e-4 to 0.02 over 1000 steps (Ho et al.), rescaled to T steps.
  """
  t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  if kind == "cosine":
    f = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
  elif kind == "linear":
    scale = 1000 / num_timesteps
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps)
  else:
    raise ValueError(f"diffusion.schedule: unknown {kind!r}; expected one of {SCHEDULES}")
  return np.cumprod(1 - betas).astype(np.float32)


def to_model_space(images: jax.Array) -> jax.Array:
  """uint8 (0..255) images -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_pixels(x: jax.Array) -> jax.Array:
  """Model-space images -> float32 pixel values in [0, 255] (clipped)."""
  return jnp.clip((x + 1.0) * 127.5, 0.0, 255.0)


def q_sample(x0: jax.Array, t: jax.Array, noise: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """Draw from q(x_t | x_0): x0, noise (B, ...), t (B,) int -> x_t (B, ...)."""
  a = alpha_bar[t].reshape((-1,) + (1,) * (x0.ndim - 1))
  return jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise


def predict_x0(x_t: jax.Array, eps: jax.Array, a: jax.Array) -> jax.Array:
  """x0_hat = (x_t - sqrt(1 - a) eps) / sqrt(a) for a scalar (or broadcastable) a."""
  return (x_t - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)


def ddim_timesteps(num_timesteps: int, num_steps: int, start: int | None = None) -> np.ndarray:
  """The decreasing DDIM steps from `start` (default T-1) to 0, `num_steps` of them
  (fewer when start is small), evenly spaced and without repeats."""
  start = num_timesteps - 1 if start is None else int(start)
  if not 0 <= start < num_timesteps:
    raise ValueError(f"DDIM start step {start} outside [0, {num_timesteps})")
  return np.unique(np.round(np.linspace(0, start, max(num_steps, 1))).astype(np.int32))[::-1]


# ----------------------------------------------------------------------------- sampling

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
ScoreFn = Callable[[jax.Array], jax.Array]
KeepFn = Callable[[jax.Array], jax.Array]


def guided_eps(eps_fn: EpsFn, score_fn: ScoreFn | None, scale, x_t: jax.Array,
               t: jax.Array, a: jax.Array, keep_fn: KeepFn | None = None) -> jax.Array:
  """eps' = eps - scale * sqrt(1 - a) * grad_{x_t} sum_b score(x0_hat(x_t))_b.

  With `keep_fn`, the score's gradient with respect to x0_hat is first projected, per
  image, onto the orthogonal complement of the gradients of the K readings keep_fn(x0_hat)
  (B, K): to first order the guided step then leaves those readings where they are.

  Args:
    eps_fn: (x (B, ...), t (B,)) -> predicted noise (B, ...).
    score_fn: predicted clean images (B, ...) -> (B,) scores to increase, or None.
    scale: guidance strength s (scalar, may be traced).
    x_t: (B, ...) current noisy images; t: (B,) their step; a: alpha_bar[t] scalar.
    keep_fn: optional predicted clean images (B, ...) -> (B, K) readings to hold.

  Returns:
    (B, ...) guided noise prediction (eps itself when score_fn is None).
  """
  if score_fn is None:
    return eps_fn(x_t, t)

  def x0_hat(x):
    eps = eps_fn(x, t)
    return predict_x0(x, eps, a), eps

  x0, pull_back, eps = jax.vjp(x0_hat, x_t, has_aux=True)
  grad = jax.grad(lambda y: jnp.sum(score_fn(y)))(x0)
  if keep_fn is not None:
    grad = project_out(grad, jax.jacrev(lambda y: jnp.sum(keep_fn(y), axis=0))(x0))
  return eps - scale * jnp.sqrt(1 - a) * pull_back(grad)[0]


def project_out(grad: jax.Array, directions: jax.Array,
                ridge: float = 1e-6) -> jax.Array:
  """grad minus, per image, its least-squares projection on the span of `directions`.

  Args:
    grad: (B, ...) one vector per image.
    directions: (K, B, ...) K vectors per image (zero rows are ignored).
    ridge: relative Tikhonov term of the (K, K) Gram matrices.

  Returns:
    (B, ...) the part of each grad orthogonal to its image's directions.
  """
  b = grad.shape[0]
  g = grad.reshape(b, -1)
  d = jnp.swapaxes(directions.reshape(directions.shape[0], b, -1), 0, 1)  # (B, K, P)
  gram = jnp.einsum("bkp,bjp->bkj", d, d)
  gram = gram + ridge * (jnp.trace(gram, axis1=1, axis2=2)[:, None, None] + 1e-30) * jnp.eye(
      d.shape[1])
  coef = jnp.linalg.solve(gram, jnp.einsum("bkp,bp->bk", d, g)[..., None])[..., 0]
  return (g - jnp.einsum("bk,bkp->bp", coef, d)).reshape(grad.shape)


def ddim_sample(eps_fn: EpsFn, x_t: jax.Array, timesteps, alpha_bar, *,
                score_fn: ScoreFn | None = None, scale=0.0,
                keep_fn: KeepFn | None = None) -> jax.Array:
  """Deterministic DDIM from x_t at timesteps[0] down through timesteps[-1] to x_0.

  Args:
    eps_fn: (x, t (B,)) -> predicted noise, as in `guided_eps`.
    x_t: (B, ...) images at step timesteps[0].
    timesteps: decreasing int steps (`ddim_timesteps`), the first the one of x_t.
    alpha_bar: (T,) schedule.
    score_fn, scale, keep_fn: optional guidance (see `guided_eps`).

  Returns:
    (B, ...) the final x0_hat (at a_{-1} = 1), in model space (not clipped).
  """
  alpha_bar = jnp.asarray(alpha_bar)
  steps = jnp.asarray(np.asarray(timesteps), jnp.int32)
  # a of each step and of the next one; after the last step comes a = 1 (clean image).
  a_now = alpha_bar[steps]
  a_next = jnp.concatenate([a_now[1:], jnp.ones((1,), a_now.dtype)])

  def step(x, inputs):
    t, a, a_prev = inputs
    eps = guided_eps(eps_fn, score_fn, scale, x, jnp.full((x.shape[0],), t), a, keep_fn)
    x0 = predict_x0(x, eps, a)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev) * eps, None

  x0, _ = jax.lax.scan(step, x_t, (steps, a_now, a_next))
  return x0


def ddim_invert(eps_fn: EpsFn, x0: jax.Array, timesteps, alpha_bar) -> jax.Array:
  """Deterministic DDIM encoding of clean images up to timesteps[0], the inverse of
  `ddim_sample` over the same (decreasing) `timesteps`.

  Each step runs the DDIM update backwards, from level a to the next a' > ... noisier:
  x' = sqrt(a') x0_hat(x, eps) + sqrt(1 - a') eps, with eps predicted at the current x
  and step (the standard approximation; the first step, from the clean image, uses
  timesteps[-1]). With a model whose eps is consistent along the trajectory (e.g. the
  true noise of a known x0) `ddim_sample` of the result gives x0 back exactly.

  Args:
    eps_fn: (x, t (B,)) -> predicted noise.
    x0: (B, ...) clean model-space images.
    timesteps: decreasing int steps (`ddim_timesteps`); the result is at timesteps[0].
    alpha_bar: (T,) schedule.

  Returns:
    (B, ...) images at step timesteps[0].
  """
  alpha_bar = jnp.asarray(alpha_bar)
  up = jnp.asarray(np.asarray(timesteps)[::-1].copy(), jnp.int32)
  a_to = alpha_bar[up]
  a_from = jnp.concatenate([jnp.ones((1,), a_to.dtype), a_to[:-1]])
  eps_steps = jnp.concatenate([up[:1], up[:-1]])

  def step(x, inputs):
    t, a, a_next = inputs
    eps = eps_fn(x, jnp.full((x.shape[0],), t))
    return jnp.sqrt(a_next) * predict_x0(x, eps, a) + jnp.sqrt(1 - a_next) * eps, None

  x_t, _ = jax.lax.scan(step, x0, (eps_steps, a_from, a_to))
  return x_t


STARTS = ("noise", "inversion")


def start_point(eps_fn: EpsFn, images: jax.Array, alpha_bar, *, t0: int, num_steps: int,
                noise: jax.Array | None = None) -> jax.Array:
  """Where an edit of model-space images starts: their step-t0 version.

  With `noise` (standard normal, images' shape) the forward process q(x_t0 | x_0)
  (SDEdit; the unguided round trip then re-synthesises detail), else the deterministic
  DDIM encoding (`ddim_invert`; the unguided round trip then returns the image).
  """
  alpha_bar = jnp.asarray(alpha_bar)
  if noise is not None:
    return q_sample(images, jnp.full((images.shape[0],), t0, jnp.int32), noise, alpha_bar)
  return ddim_invert(eps_fn, images, ddim_timesteps(alpha_bar.shape[0], num_steps, t0),
                     alpha_bar)


def edit(eps_fn: EpsFn, images: jax.Array, alpha_bar, *, t0: int, num_steps: int,
         noise: jax.Array | None = None, score_fn: ScoreFn | None = None,
         scale=0.0, keep_fn: KeepFn | None = None) -> jax.Array:
  """`start_point` at step t0, then (guided) DDIM back to 0 in `num_steps` steps:
  (B, ...) model-space images -> (B, ...)."""
  x_t = start_point(eps_fn, images, alpha_bar, t0=t0, num_steps=num_steps, noise=noise)
  steps = ddim_timesteps(jnp.asarray(alpha_bar).shape[0], num_steps, t0)
  return ddim_sample(eps_fn, x_t, steps, alpha_bar, score_fn=score_fn, scale=scale,
                     keep_fn=keep_fn)


# ----------------------------------------------------------------------------- U-Net

def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding (B,) -> (B, dim) of the step (Transformer positions)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _norm(channels: int) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=min(8, channels))


class ResBlock(nn.Module):
  """GN -> SiLU -> conv -> + time projection -> GN -> SiLU -> conv, plus a (1x1) skip."""
  channels: int

  @nn.compact
  def __call__(self, x: jax.Array, time_emb: jax.Array) -> jax.Array:
    h = towers.Conv(self.channels, 3)(nn.silu(_norm(x.shape[-1])(x)))
    h = h + nn.Dense(self.channels)(time_emb)[:, None, None, :]
    h = towers.Conv(self.channels, 3)(nn.silu(_norm(self.channels)(h)))
    skip = x if x.shape[-1] == self.channels else towers.Conv(self.channels, 1)(x)
    return skip + h


class UNet(nn.Module):
  """eps_theta(x_t, t): a small U-Net, one resolution level per entry of `channels`.

  __call__(x (B, H, W, C) float model space, t (B,) int, *, train) -> (B, H, W, C) float32.
  Each level has `num_res_blocks` ResBlocks on the way down and up (skips concatenated),
  a stride-2 conv between levels going down and nearest x2 + conv going up; H and W must
  be divisible by 2 ** (len(channels) - 1). Convolutions are `towers.Conv` (im2col +
  matmul, fast on CPU).
  """
  channels: tuple[int, ...] = (32, 64)
  num_res_blocks: int = 1
  time_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no dropout or batch statistics
    factor = 2 ** (len(self.channels) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"UNet: image {x.shape[1]}x{x.shape[2]} is not divisible by {factor} "
                       f"({len(self.channels)} levels)")
    temb = timestep_embedding(t, self.time_dim)
    temb = nn.Dense(4 * self.time_dim)(nn.silu(nn.Dense(4 * self.time_dim)(temb)))
    h = towers.Conv(self.channels[0], 3, name="stem")(x.astype(jnp.float32))
    skips = []
    for level, ch in enumerate(self.channels):
      for _ in range(self.num_res_blocks):
        h = ResBlock(ch)(h, temb)
        skips.append(h)
      if level < len(self.channels) - 1:
        h = towers.Conv(ch, 3, strides=2)(h)
    h = ResBlock(self.channels[-1])(h, temb)
    for level in reversed(range(len(self.channels))):
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.channels[level])(jnp.concatenate([h, skips.pop()], axis=-1), temb)
      if level > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = towers.Conv(self.channels[level - 1], 3)(h)
    h = nn.silu(_norm(h.shape[-1])(h))
    return towers.Conv(x.shape[-1], 3, name="out")(h).astype(jnp.float32)


def build_unet(config) -> UNet:
  """The U-Net of `config.diffusion` (channels, num_res_blocks, time_dim)."""
  d = config.diffusion
  return UNet(channels=tuple(d.channels), num_res_blocks=d.num_res_blocks,
              time_dim=d.time_dim)


def make_objective(config, model: UNet):
  """The DDPM epsilon objective (method "diffusion"), trainer signature
  objective(params, batch, rng, step) -> (loss, metrics): t uniform over the T steps,
  loss = mean over pixels and batch of (eps_theta(x_t, t) - eps)^2 on batch["image"]."""
  d = config.diffusion
  alpha_bar = jnp.asarray(noise_schedule(d.schedule, d.num_timesteps))

  def diffusion_loss(params, batch, rng, step=None):
    del step
    x0 = to_model_space(batch["image"])
    r_t, r_noise = jax.random.split(rng)
    t = jax.random.randint(r_t, (x0.shape[0],), 0, d.num_timesteps)
    noise = jax.random.normal(r_noise, x0.shape, jnp.float32)
    eps = model.apply({"params": params}, q_sample(x0, t, noise, alpha_bar), t, train=True)
    loss = jnp.mean((eps - noise) ** 2)
    return loss, {"loss": loss}
  return diffusion_loss
