"""Tests of jaxvna.models.backbones: the Backbone protocol and `load`, which picks a
network by name or calls a user's factory."""

import sys

import numpy as np
import pytest

from jaxvna.errors import ConfigError
from jaxvna.models import backbones
from jaxvna.models.backbones import Backbone


def test_random_resnets_are_seeded_and_resized_to_the_asked_size():
  a = backbones.load("resnet18", backbones.RANDOM, image_size=32, seed=0)
  b = backbones.load("resnet18", backbones.RANDOM, image_size=32, seed=0)
  c = backbones.load("resnet18", backbones.RANDOM, image_size=32, seed=1)
  assert isinstance(a, Backbone) and a.name == "resnet18"
  assert a.stages[:3] == ("stem", "pool1", "layer1") and a.stages[-1] == "logits"
  images = np.random.default_rng(0).uniform(size=(2, 24, 24, 1)).astype(np.float32)
  assert a.preprocess(images).shape == (2, 32, 32, 3)
  fa, fb, fc = (np.asarray(n(images, stages=("layer1",))["layer1"]) for n in (a, b, c))
  np.testing.assert_array_equal(fa, fb)
  assert fa.shape == (2, 8, 8, 64) and not np.allclose(fa, fc)


def test_a_users_factory_is_called_with_the_weights(tmp_path, monkeypatch):
  (tmp_path / "my_nets.py").write_text(
      "from jaxvna.models import backbones\n"
      "def small(weights):\n"
      "  net = backbones.load('resnet18', weights, image_size=32)\n"
      "  return backbones.Backbone('mine', net.module, net.variables, net.preprocess,\n"
      "                            net.stages[:3])\n"
      "def wrong(weights):\n"
      "  return {'weights': weights}\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  net = backbones.load("my_nets:small", backbones.RANDOM)
  assert net.name == "mine" and net.stages == ("stem", "pool1", "layer1")
  with pytest.raises(ConfigError, match=r"my_nets:wrong.*returned a dict, expected a Backbone"):
    backbones.load("my_nets:wrong", "w.npz")
  with pytest.raises(ConfigError, match="cannot import absent from my_nets"):
    backbones.load("my_nets:absent", "w.npz")
  sys.modules.pop("my_nets", None)


@pytest.mark.parametrize("name, weights, message", [
    ("resnet34", "w.pth", r"unknown 'resnet34'; expected one of \('resnet18', 'resnet50', "
                          r"'vit'\) or 'package.module:factory'"),
    ("vit", "random", "only for the ResNets"),
])
def test_unknown_names_and_random_vits_are_refused(name, weights, message):
  with pytest.raises(ConfigError, match=message):
    backbones.load(name, weights)


def test_a_missing_weights_file_is_named(tmp_path):
  from jaxvna.data.dataset import DataError
  with pytest.raises(DataError, match="r50.pth: file is missing"):
    backbones.load("resnet50", str(tmp_path / "r50.pth"))
