"""What the models read from a batch: the direct decoder's target."""

import numpy as np
import pytest

from jaxvna.models import inputs


def test_downsample_images_is_an_area_mean_in_unit_range():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  images[0, :2, :2] = 255  # top-left quadrant white
  out = np.asarray(inputs.downsample_images(images, 2))
  np.testing.assert_allclose(out[0], [1.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(out[1], 0.0)
  with pytest.raises(ValueError, match="multiple"):
    inputs.downsample_images(images, 3)
