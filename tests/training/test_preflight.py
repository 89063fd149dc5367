"""Config values and datasets that cannot work are refused before data loading, compiling
or training, with the field, the value and what is allowed."""

import importlib.util
import pathlib

import numpy as np
import pytest

from jaxvna import configs
from jaxvna.configs import vna_sim
from jaxvna.data.dataset import DataError
from jaxvna.errors import ConfigError
from jaxvna.estimator import arrays_to_dataset
from jaxvna.training import preflight, train
from toy_recordings import features_folder

CONFIGS = pathlib.Path(vna_sim.__file__).parent


def _shipped_configs(features_dir):
  for name in configs.names():
    path = CONFIGS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # vna_features.py trains on the folder of files that `jaxvna features` wrote
    yield path.name, module.get_config(str(features_dir) if name == "vna_features" else None)


def test_every_shipped_config_passes(tmp_path):
  for name, config in _shipped_configs(features_folder(tmp_path)):
    assert preflight.config_problems(config) == [], name
  for arg in ("vna,tiny", "direct_encoding,tiny", "direct_decoding,tiny"):
    assert preflight.config_problems(vna_sim.get_config(arg)) == []


@pytest.mark.parametrize("field, value, allowed", [
    ("train.checkpoint_every", 0, "an integer >= 1"),
    ("train.log_every", 0, "an integer >= 1"),
    ("train.steps", 0, "an integer >= 1"),
    ("train.steps", -5, "an integer >= 1"),
    ("train.batch_size", 0, "an integer >= 1"),
    ("optim.lr", -1e-3, "a finite number > 0"),
    ("optim.lr", float("nan"), "a finite number > 0"),
    ("optim.warmup_steps", -1, "an integer >= 0"),
    ("optim.max_consecutive_nonfinite", 0, "an integer >= 1"),
    ("optim.final_lr_fraction", 1.5, "a number in [0, 1]"),
    ("data.train_fraction", 0.0, "a number in (0, 1]"),
    ("model.neural_tower.neuron_dropout", 1.0, "a number in [0, 1)"),
    ("model.init_temperature", 0.0, "a finite number > 0"),
    ("eval.draws", 0, "an integer >= 1"),
    ("seed", -1, "an integer in [0, 2**32)"),
])
def test_a_value_that_cannot_work_is_named_with_what_is_allowed(tmp_path, field, value,
                                                                allowed):
  config = vna_sim.get_config("vna,tiny")
  node = config
  *parents, leaf = field.split(".")
  for part in parents:
    node = node[part]
  node[leaf] = value
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as error:
    train.train(config, workdir)
  assert f"config.{field}={value!r}: expected {allowed}" in str(error.value)
  assert not workdir.exists()  # refused before anything was written


def test_sequences_are_checked_entry_by_entry():
  config = vna_sim.get_config("vna,tiny")
  config.eval.n_ways = (2, 1, "all")
  config.model.image_tower.hidden = (128, 0)
  problems = preflight.config_problems(config)
  assert any(p.startswith("config.eval.n_ways=(2, 1, 'all')") for p in problems), problems
  assert any(p.startswith("config.model.image_tower.hidden=(128, 0)") for p in problems)


def test_a_non_finite_number_in_a_field_without_a_rule_is_refused():
  config = vna_sim.get_config("vna,tiny")
  config.data.kwargs.spatial_frequency_range = (2.0, 8.0)  # tuples are not checked here
  with config.unlocked():
    config.model.extra_scale = float("inf")
  assert preflight.config_problems(config) == [
      "config.model.extra_scale=inf: expected a finite number"]


def _arrays_dataset(n=100, split=None, responses=None, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
  if responses is None:
    responses = rng.poisson(2.0, (n, 20)).astype(np.float32)
  return arrays_to_dataset(images, responses, split=split)


def test_a_batch_larger_than_the_training_set_is_refused_before_training(tmp_path):
  config = vna_sim.get_config("vna,tiny")
  config.train.batch_size = 128
  dataset = _arrays_dataset(100)  # 100 training examples
  with pytest.raises(DataError, match=r"100 training examples .* batch of "
                                      r"config.train.batch_size=128"):
    train.train(config, tmp_path, dataset=dataset)
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()


def test_a_split_without_test_images_is_refused_before_training(tmp_path):
  config = vna_sim.get_config("vna,tiny")
  dataset = _arrays_dataset(100, split=np.array(["train"] * 90 + ["validation"] * 10))
  with pytest.raises(DataError, match=r"fewer than 2 images of split 'test'"):
    train.train_and_evaluate(config, tmp_path, dataset=dataset)
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_negative_responses_are_refused_for_a_poisson_objective():
  rng = np.random.default_rng(0)
  responses = rng.normal(0.0, 1.0, (100, 20)).astype(np.float32)
  dataset = _arrays_dataset(100, responses=responses)
  config = vna_sim.get_config("direct_encoding,tiny")
  with pytest.raises(DataError, match=r"negative values .* Poisson .*encoding_loss='mse'"):
    preflight.check_training_data(config, dataset, device_count=8)
  config.baseline.encoding_loss = "mse"
  preflight.check_training_data(config, dataset, device_count=8)  # accepted
  preflight.check_training_data(vna_sim.get_config("vna,tiny"), dataset, device_count=8)


def test_the_batch_must_divide_over_the_devices():
  config = vna_sim.get_config("vna,tiny")
  config.train.batch_size = 60
  with pytest.raises(ConfigError, match="not a multiple of the 8 devices"):
    preflight.check_training_data(config, _arrays_dataset(100), device_count=8)


def test_a_decoder_size_that_does_not_divide_the_images_is_refused_with_what_fits():
  config = vna_sim.get_config("direct_decoding,tiny")
  config.model.decoder_size = 12  # 32x32 images
  with pytest.raises(ConfigError, match=r"decoder_size=12: .* 32x32 images; direct_decoding "
                                        r".* \(here: 1, 2, 4, 8, 16, 32\)"):
    preflight.check_training_data(config, _arrays_dataset(100), device_count=8)
  config.model.decoder_size = 8
  preflight.check_training_data(config, _arrays_dataset(100), device_count=8)  # accepted
  vna = vna_sim.get_config("vna,tiny")  # decodes no pixels: any size
  vna.model.decoder_size = 12
  preflight.check_training_data(vna, _arrays_dataset(100), device_count=8)
