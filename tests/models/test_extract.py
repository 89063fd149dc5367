"""Tests of jaxvna.models.backbones.extract: one stage's features of an image set, the
backbone's pooled, the same on 8 devices as on one and for any batch size."""

import jax
import numpy as np
import pytest

from jaxvna.errors import ConfigError
from jaxvna.models import backbones
from jaxvna.models.backbones import extract

SIZE = 32


@pytest.fixture(scope="module")
def net():
  return backbones.load("resnet18", backbones.RANDOM, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (21, 20, 20, 1), dtype=np.uint8)


def test_features_equal_the_backbone_pooled_on_any_devices_and_batch(net, images):
  stages = net(images.astype(np.float32) / 255.0, stages=("layer2", "avgpool"))
  want = np.asarray(stages["layer2"]).reshape(21, 2, 2, 2, 2, 128).mean(axis=(2, 4))
  one = extract.extract(net, images, stage="layer2", pool=2, batch_size=5,
                        devices=jax.devices()[:1])
  assert one.shape == (21, 2 * 2 * 128) and one.dtype == np.float32
  np.testing.assert_allclose(one, want.reshape(21, -1), atol=2e-5, rtol=1e-4)
  assert len(jax.devices()) == 8
  sharded = extract.extract(net, images, stage="layer2", pool=2, batch_size=12)  # 2 steps of 16
  np.testing.assert_allclose(sharded, one, atol=2e-5, rtol=1e-4)
  vector = extract.extract(net, images, stage="avgpool", pool="none", batch_size=8)
  np.testing.assert_allclose(vector, np.asarray(stages["avgpool"]), atol=2e-5, rtol=1e-4)


def test_progress_counts_every_image_and_errors_name_the_stage(net, images):
  class Counter:
    n = 0

    def update(self, k):
      self.n += k
  counter = Counter()
  extract.extract(net, images[:10], stage="avgpool", batch_size=8, progress=counter)
  assert counter.n == 10
  with pytest.raises(ConfigError, match="no stage 'layer5'; expected one of stem, pool1"):
    extract.extract(net, images, stage="layer5")
