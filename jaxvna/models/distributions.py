"""Diagonal Gaussians and Poisson counts: the probability pieces the VAEs share (miVAE,
MIG-Vis' group VAE). Shapes broadcast; densities sum over the last axis."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> jax.Array:
  """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) of factorised Gaussians, summed over
  the last axis. All (..., D) -> (...)."""
  return 0.5 * jnp.sum(logvar_p - logvar_q + (jnp.exp(logvar_q) + (mu_q - mu_p) ** 2)
                       / jnp.exp(logvar_p) - 1.0, axis=-1)


def gaussian_log_density(z, mu, logvar) -> jax.Array:
  """Elementwise log N(z; mu, e^logvar). All (..., D) -> (..., D)."""
  return -0.5 * ((z - mu) ** 2 * jnp.exp(-logvar) + logvar + _LOG_2PI)


def poisson_log_likelihood(counts, rates, mask) -> jax.Array:
  """Sum over recorded neurons of log Poisson(counts | rates). (B, K) -> (B,)."""
  ll = counts * jnp.log(rates + 1e-6) - rates - gammaln(counts + 1.0)
  return jnp.sum(jnp.where(mask, ll, 0.0), axis=-1)


def sample(rng, mu, logvar):
  """Reparameterised draw from N(mu, e^logvar)."""
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)
