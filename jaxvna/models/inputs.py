"""What the models read from a batch: pixels or precomputed image features, the direct
decoder's downsampled target, and example inputs for `model.init`.

A batch is the pipeline's global batch dict: "image" (B, H, W, C) uint8, "response"
(B, K_max) float32 zero-padded, "neuron_mask" (B, K_max) bool, "subject" (B,) int32 and,
when the data carries them, "image_features" (B, F) float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvna.errors import ConfigError


def uses_image_features(config) -> bool:
  """True when the image tower reads precomputed features instead of pixels (LiT-style)."""
  return config.model.image_tower.get("type") == "features"


def image_input(config, batch):
  """The image tower's input of a batch: "image_features" for the `features` tower, else
  "image"."""
  if not uses_image_features(config):
    return batch["image"]
  if "image_features" not in batch:
    raise ConfigError("config.model.image_tower.type='features' needs datasets whose "
                      "recordings carry image_features (e.g. the npz field 'image_features')")
  return batch["image_features"]


def recording_images(config, recording):
  """What the image tower reads of a recording's images: its `image_features` for the
  `features` tower, else its pixels (N, H, W, C) uint8."""
  return recording.image_features if uses_image_features(config) else recording.images


def downsample_images(images: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) uint8 or float -> (B, size*size) float32 grey in [0, 1], area-averaged.

  The direct-decoding target; H and W must be multiples of `size`.
  """
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  x = x.mean(axis=-1)
  b, h, w = x.shape
  if h % size or w % size:
    raise ValueError(f"image size {h}x{w} is not a multiple of decoder size {size}")
  x = x.reshape(b, size, h // size, size, w // size).mean(axis=(2, 4))
  return x.reshape(b, size * size)


def example_inputs(config, dataset) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(images (1, H, W, C) uint8 or features (1, F), responses (1, K_max), subject (1,))
  of zeros with `dataset`'s shapes: the inputs `model.init` traces."""
  features = dataset.recordings[0].image_features
  if uses_image_features(config) and features is not None:
    images = jnp.zeros((1, features.shape[1]), jnp.float32)
  else:
    images = jnp.zeros((1, *dataset.image_shape), jnp.uint8)
  return images, jnp.zeros((1, max(dataset.neuron_counts)), jnp.float32), jnp.zeros(
      (1,), jnp.int32)
