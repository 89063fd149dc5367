"""One stage of a backbone for a whole image set, pooled, batched over the devices.

  extract(backbone, images, stage="layer3", pool="2")  ->  (N, F) float32

Pooling of a (B, h, w, c) map, `towers.pool_features`: "mean" over h and w, "none"
(flattened), or "k", the mean of each of k x k blocks (a coarse layout, which a neuron's
receptive field needs and the global mean throws away).

The images are split into steps of `batch_size` (rounded up to a multiple of the device
count, the last step padded), each step sharded over the devices along the batch; the
parameters are replicated. Every step's output is fetched before the next one is sent,
which bounds what is in flight (sharded steps queued back to back can stall on CPU).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from jaxvna.errors import ConfigError
from jaxvna.models.backbones import Backbone, check_stage

@functools.cache
def _step():
  """The jitted features of one step, compiled once per network, stage, pooling, shape and
  sharding (the sharding follows the inputs'), whichever recording it is called for."""
  import jax  # noqa: PLC0415

  from jaxvna.models import towers  # noqa: PLC0415

  def features(variables, x, *, module, preprocess, stage, pool, kernel_form):
    with towers.use_kernel_form(kernel_form):
      out = module.apply(variables, preprocess(x), train=False)
    return towers.pool_features(out[stage], pool).astype(np.float32)
  return jax.jit(features, static_argnames=("module", "preprocess", "stage", "pool",
                                            "kernel_form"))


def extract(backbone: Backbone, images: np.ndarray, *, stage: str, pool: str | int = "mean",
            batch_size: int = 64, devices: Sequence | None = None, progress=None,
            kernel_form: str = "xla") -> np.ndarray:
  """The `stage` features of every image, pooled.

  Args:
    backbone: the network (`jaxvna.models.backbones.Backbone`).
    images: (N, H, W, C) uint8 (0-255) or float in [0, 1]; C = 1 or 3.
    stage: one of `backbone.stages`.
    pool: "mean", "none" or k (see the module doc).
    batch_size: images per step, rounded up to a multiple of the device count.
    devices: the devices to shard each step over; default all of `jax.devices()`.
    progress: an object with update(n) (e.g. a tqdm bar), told each step's image count.
    kernel_form: how convolutions are traced (`towers.use_kernel_form`); "xla", the plain
      XLA convolution, is the faster for forward passes on every backend (on CPU too,
      benchmarks/backbone_features.py), "cpu" the im2col form that training uses on CPU.

  Returns:
    (N, F) float32, row i the features of images[i]; identical (to float rounding) for any
    number of devices and batch size.
  """
  import jax  # noqa: PLC0415
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: PLC0415

  from jaxvna.models import towers  # noqa: PLC0415

  check_stage(backbone, stage)
  pool = towers.parse_pool(pool)
  if images.ndim != 4:
    raise ConfigError(f"images: expected (N, H, W, C), got shape {images.shape}")
  devices = list(jax.devices() if devices is None else devices)
  mesh = Mesh(np.array(devices), ("batch",))
  by_batch, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  step_size = -(-max(batch_size, 1) // len(devices)) * len(devices)
  step = functools.partial(_step(), module=backbone.module, preprocess=backbone.preprocess,
                           stage=stage, pool=pool, kernel_form=kernel_form)
  variables = jax.device_put(backbone.variables, replicated)
  rows = []
  for start in range(0, len(images), step_size):
    chunk = images[start:start + step_size]
    padded = np.concatenate([chunk, np.zeros((step_size - len(chunk), *chunk.shape[1:]),
                                             chunk.dtype)]) if len(chunk) < step_size else chunk
    rows.append(np.asarray(step(variables, jax.device_put(padded, by_batch)))[:len(chunk)])
    if progress is not None:
      progress.update(len(chunk))
  if not rows:
    raise ConfigError("images: none to compute features of")
  return np.concatenate(rows)
