"""The shipped configs: one importable package, found on disk, each with a tiny variant."""

import importlib
import importlib.util
import pathlib

import pytest

from jaxvna import configs
from jaxvna.configs import dina_sim, vna_sim
from jaxvna.training import preflight
from toy_recordings import features_folder

NAMES = configs.names()
METHODS = ("vna", "direct_encoding", "direct_decoding", "mivae", "dina", "group_vae")


def _module(name):
  return importlib.import_module(f"jaxvna.configs.{name}")


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
  return features_folder(tmp_path_factory.mktemp("features"))


def _get_config(name, arg, features_dir):
  """get_config(arg) of a shipped config; vna_features.py's argument starts with the
  folder of feature files it trains on."""
  if name == "vna_features":
    arg = f"{features_dir},{arg}" if arg else str(features_dir)
  return _module(name).get_config(arg)


def test_configs_dir_holds_the_shipped_configs():
  assert {"vna_sim", "vna_cowley_v4", "bench_dina_mlp", "dina_sim"} <= set(NAMES)
  assert configs.configs_dir() == pathlib.Path(vna_sim.__file__).resolve().parent


def test_a_config_file_anywhere_builds_on_the_shipped_ones(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("from jaxvna.configs import vna_sim\n\n"
                  "def get_config(arg=None):\n"
                  "  c = vna_sim.get_config(arg)\n"
                  "  c.train.steps = 7\n"
                  "  return c\n")
  spec = importlib.util.spec_from_file_location("mine", path)  # as --config=path loads it
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.vna_sim is vna_sim
  config = module.get_config("direct_encoding,tiny")
  assert (config.method, config.train.steps) == ("direct_encoding", 7)
  assert config.data.kwargs.num_images == vna_sim.get_config("tiny").data.kwargs.num_images


@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_config_and_its_tiny_variant_build(name, features_dir):
  default, tiny = (_get_config(name, None, features_dir),
                   _get_config(name, "tiny", features_dir))
  for config in (default, tiny):
    assert config.method in METHODS
    assert config.train.steps > 0 and config.train.batch_size > 0
    assert preflight.config_problems(config) == [], name
  assert tiny.method == default.method and tiny.data.kind == default.data.kind
  assert tiny.train.steps <= default.train.steps
  assert tiny.train.batch_size <= default.train.batch_size
  if "bench" in tiny:
    assert tiny.bench.num_neurons < default.bench.num_neurons
  elif default.data.kind == "simulator":
    assert tiny.data.kwargs.num_images < default.data.kwargs.num_images
  elif default.data.kind == "npz":  # the files of `jaxvna features`, all of them
    assert tiny.data.kwargs.paths == default.data.kwargs.paths
    assert len(default.data.kwargs.paths) == 3
  elif default.data.kind == "allen_natural_scenes":  # one recording, read whole
    assert tiny.data.kwargs.root == default.data.kwargs.root
  else:  # a few of the recorded sessions
    assert default.data.sessions in (None, ("201025",)) and 1 <= len(tiny.data.sessions) <= 2


def test_tiny_is_selected_by_the_end_of_the_argument():
  assert configs.split_tiny(None) == (None, False)
  assert configs.split_tiny("tiny") == (None, True)
  assert configs.split_tiny("direct_encoding,tiny") == ("direct_encoding", True)
  assert configs.split_tiny("direct_encoding") == ("direct_encoding", False)
  assert vna_sim.get_config("tiny").to_dict() == vna_sim.get_config("vna,tiny").to_dict()
  assert vna_sim.get_config(None).to_dict() == vna_sim.get_config().to_dict()
  with pytest.raises(ValueError, match=r"vna_sim: unknown variant\(s\) \['small'\]"):
    vna_sim.get_config("vna,small")
  with pytest.raises(ValueError, match="dina_sim: unknown argument 'small'"):
    dina_sim.get_config("small")


def test_a_method_config_keeps_its_method_in_the_tiny_variant():
  for name in ("vna_sim", "scaling_sim", "vna_cowley_v4", "scaling_cowley_v4"):
    config = _module(name).get_config("direct_decoding,tiny")
    assert config.method == "direct_decoding", name
    assert config.train.steps < _module(name).get_config("direct_decoding").train.steps


@pytest.mark.parametrize("arg", [None, "tiny"])
def test_scaling_configs_define_a_study_of_nested_fractions(arg):
  for name in ("scaling_sim", "scaling_cowley_v4"):
    config = _module(name).get_config(arg)
    fractions = tuple(config.scaling.fractions)
    assert len(fractions) >= 3 and fractions == tuple(sorted(fractions)) and fractions[-1] == 1.0
    assert config.scaling.bootstrap >= 200 and config.data.train_fraction == 1.0


def test_the_features_config_reads_the_folder_and_trains_the_features_head(features_dir,
                                                                          tmp_path):
  config = _get_config("vna_features", None, features_dir)
  assert config.data.kwargs.paths == tuple(str(features_dir / f"{n}.npz") for n in "abc")
  assert config.model.image_tower.type == "features"
  with pytest.raises(ValueError, match="holds no .npz files"):
    _module("vna_features").get_config(str(tmp_path))
  with pytest.raises(ValueError, match="pass the folder"):
    _module("vna_features").get_config("tiny")


@pytest.mark.parametrize("method", ["direct_decoding", "direct_encoding"])
def test_allen_config_trains_and_scores_on_the_recording(method, real_data_dir, tmp_path):
  """vna_allen_v1.py on the Allen scenes: 31x31 images (a prime side: the decoder
  reconstructs every pixel) and signed responses (squared-error encoding), scored on its
  18 test images; Gabor-ridge's pyramid drops the frequency 31 px cannot carry."""
  from jaxvna.evaluation import discriminative
  from jaxvna.training import train
  config = _module("vna_allen_v1").get_config(f"{method},tiny")
  config.data.root = str(real_data_dir / "allen_v1_natural_scenes")
  results = train.train_and_evaluate(config, tmp_path)
  dataset = train.load_dataset(config)
  assert dataset.recordings[0].images.shape[1:] == (31, 31, 1)
  tasks = results["results"][method]
  for task in ("decoding", "encoding"):
    assert 0.0 <= tasks[task]["10"]["top1"] <= 1.0
  if method == "direct_encoding":
    ridge = discriminative.evaluate_gabor_ridge(config, dataset)
    assert set(ridge["decoding"]) == {"2", "10", "all"}
