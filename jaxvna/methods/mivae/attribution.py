"""Score-based attribution: which inputs (pixels, neurons) each latent dimension comes from.

For an encoder q(z | x) = N(mu(x), diag e^logvar(x)), the attribution of input i to latent
j is the expected magnitude of the score of the latent's density with respect to the input,

    A_j(i) = E_{x ~ stimuli} E_{z_j ~ q(z_j | x)} | d log q(z_j | x) / d x_i |,

estimated with `num_samples` posterior draws per stimulus (z held fixed while
differentiating). Inputs that move latent j's density, through its mean or its
uncertainty, get large scores; inputs that do not, zero. Pixel maps come from the image
encoder, neuron profiles from the neural encoder (on standardised responses, so neurons
with different firing rates are compared on one scale).

Neuron subpopulations: neurons whose attribution profiles over latents (K, L), normalised
per neuron, point the same way are grouped by k-means (`neuron_groups`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvna import files

Encoder = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def score_attribution(encode: Encoder, inputs: np.ndarray, rng: jax.Array, *,
                      num_samples: int = 4, batch_size: int = 64) -> np.ndarray:
  """Mean |score| of every latent w.r.t. every input entry.

  Args:
    encode: (B, *S) float inputs -> (mu (B, L), logvar (B, L)); pure and jittable.
    inputs: (N, *S) stimuli (or standardised responses) to average over.
    rng: key for the posterior draws.
    num_samples: posterior draws per stimulus.
    batch_size: stimuli per jitted chunk.

  Returns:
    (L, *S) float32 attribution maps.
  """

  def chunk_scores(x, key):
    mu0, logvar0 = encode(x)
    eps = jax.random.normal(key, (num_samples, *mu0.shape), mu0.dtype)
    draws = jax.lax.stop_gradient(mu0 + jnp.exp(0.5 * logvar0) * eps)   # (M, B, L)

    def one_draw(z):
      def log_q(xx):  # (L,): summing over stimuli keeps their gradients apart
        mu, logvar = encode(xx)
        return jnp.sum(-0.5 * ((z - mu) ** 2 * jnp.exp(-logvar) + logvar), axis=0)
      return jnp.abs(jax.jacrev(log_q)(x))                                # (L, B, *S)
    # One draw at a time: |.| must be taken per draw, before averaging.
    return jnp.sum(jax.lax.map(one_draw, draws), axis=(0, 2))             # (L, *S)

  chunk_scores = jax.jit(chunk_scores)
  inputs = np.asarray(inputs, np.float32)
  total = None
  for i, start in enumerate(range(0, len(inputs), batch_size)):
    part = np.asarray(chunk_scores(jnp.asarray(inputs[start:start + batch_size]),
                                   jax.random.fold_in(rng, i)))
    total = part if total is None else total + part
  return (total / (len(inputs) * num_samples)).astype(np.float32)


def neuron_groups(profiles: np.ndarray, num_groups: int, *, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """K-means on attribution profiles normalised to unit L2 norm per neuron.

  Args:
    profiles: (K, L) attribution of each neuron to each latent.
    num_groups: number of subpopulations.
    seed: k-means initialisation seed.

  Returns:
    labels (K,) int in [0, num_groups) and centroids (num_groups, L) of the normalised
    profiles.
  """
  from scipy.cluster import vq
  unit = profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
  centroids, labels = vq.kmeans2(unit.astype(np.float64), num_groups, minit="++", seed=seed)
  return labels.astype(np.int64), centroids.astype(np.float32)


def plot_pixel_maps(maps: np.ndarray, path, *, reference: np.ndarray | None = None,
                    titles=None) -> None:
  """PNG of one pixel-attribution map per latent; a second row for reference maps (truth)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = 1 if reference is None else 2
  n = len(maps)
  fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.7 * rows + 0.3), squeeze=False)
  for j in range(n):
    axes[0, j].imshow(maps[j], cmap="magma")
    axes[0, j].set_title(titles[j] if titles else f"z{j}", fontsize=8)
    if reference is not None:
      axes[1, j].imshow(reference[j], cmap="magma")
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_ylabel("attribution", fontsize=8)
  if reference is not None:
    axes[1, 0].set_ylabel("truth", fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)
  plt.close(fig)


def plot_neuron_groups(profiles: np.ndarray, labels: np.ndarray, path, *,
                       title: str = "") -> None:
  """PNG: mean normalised attribution profile of each neuron group, with group sizes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  unit = profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
  groups = np.unique(labels)
  fig, ax = plt.subplots(figsize=(1.0 + 0.5 * unit.shape[1], 0.5 + 0.35 * len(groups)))
  means = np.stack([unit[labels == g].mean(0) for g in groups])
  ax.imshow(means, cmap="viridis", aspect="auto")
  ax.set_yticks(range(len(groups)),
                [f"group {g} (n={int((labels == g).sum())})" for g in groups], fontsize=8)
  ax.set_xticks(range(unit.shape[1]), [f"z{j}" for j in range(unit.shape[1])], fontsize=8)
  ax.set_title(title or "neuron groups: mean attribution profile", fontsize=9)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)
  plt.close(fig)
