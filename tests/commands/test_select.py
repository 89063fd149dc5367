"""Tests of `jaxvna select` (jaxvna.commands.select): the grid, the candidates' configs,
and a choice made on the validation split with the test split scored once at the end."""

import json

import ml_collections
import numpy as np
import pytest

from jaxvna.commands import demo, select
from jaxvna.configs import vna_sim
from jaxvna.errors import ConfigError
from jaxvna.training import preflight, train


def test_grid_points_are_the_product_of_the_fields_values():
  grid = ml_collections.ConfigDict({"optim": {"weight_decay": (0.1, 0.2), "lr": 3e-3},
                                    "train": {"steps": (10, 20, 30)}})
  points = select.grid_points(grid)
  assert len(points) == 6
  assert points[0] == {"optim.lr": 3e-3, "optim.weight_decay": 0.1, "train.steps": 10}
  assert points[1]["train.steps"] == 20 and points[3]["optim.weight_decay"] == 0.2


def test_a_candidate_is_the_config_with_its_settings_scored_on_the_split():
  config = vna_sim.get_config("tiny")
  c = select.candidate_config(config, {"optim.weight_decay": 0.3, "train.steps": 7},
                              "validation")
  assert (c.optim.weight_decay, c.train.steps, c.eval.split) == (0.3, 7, "validation")
  assert "select" not in c and not c.eval.null_control
  assert config.optim.weight_decay != 0.3  # the run's config is untouched
  with pytest.raises(ConfigError, match="select.grid.optim.momentum: the config has no field"):
    select.candidate_config(config, {"optim.momentum": 0.9}, "validation")
  with pytest.raises(ConfigError, match="select.grid.train.steps: 'many' cannot be set"):
    select.candidate_config(config, {"train.steps": "many"}, "validation")


def test_grid_values_meet_the_rule_of_their_field_and_a_grid_needs_a_choice():
  config = vna_sim.get_config("tiny")
  config.select.grid.optim.weight_decay = (1e-4, -1.0)
  assert preflight.config_problems(config) == [
      "config.select.grid.optim.weight_decay=(0.0001, -1.0): expected each value a finite "
      "number >= 0"]
  config.select.grid.optim.weight_decay = (1e-4,)
  with pytest.raises(ConfigError, match="select.grid: nothing to choose from"):
    select.run(config, "unused")
  config = vna_sim.get_config("tiny")
  config.eval.split = "validation"
  with pytest.raises(ConfigError, match="eval.split: 'validation' is what select chooses on"):
    select.run(config, "unused")


def test_the_choice_is_made_on_validation_and_the_test_split_is_scored_once(tmp_path):
  config = vna_sim.get_config("tiny")
  # one step leaves the towers at their random start: the longer run must win on validation
  config.select.grid = ml_collections.ConfigDict({"train": {"steps": (1, 60)}})
  out = select.run(config, tmp_path)
  dataset = train.load_dataset(config)
  sizes = {name: sum(int((r.split == i).sum()) for r in dataset.recordings)
           for i, name in enumerate(("train", "validation", "test"))}
  scores = [c["validation_score"] for c in out["selection"]["candidates"]]
  assert out["selection"]["chosen"]["settings"] == {"train.steps": 60}
  assert scores[1] > scores[0] + 0.05, scores
  for i in (0, 1):
    candidate = json.loads((tmp_path / "candidates" / str(i) / "validation.json").read_text())
    assert candidate["validation_score"] == scores[i] and candidate["seeds"] == [0]
    queries = sum(s["decoding"]["10"]["num_queries"]
                  for s in candidate["results"]["vna"]["per_subject"].values())
    assert queries == sizes["validation"]
  final = json.loads((tmp_path / "results.json").read_text())
  assert final["provenance"]["config"]["eval"]["split"] == "test"
  assert final["provenance"]["config"]["train"]["steps"] == 60
  assert final["selection"] == out["selection"]
  queries = sum(s["decoding"]["10"]["num_queries"]
                for s in final["results"]["vna"]["per_subject"].values())
  assert queries == sizes["test"]
  assert np.isfinite(final["results"]["vna"]["encoding"]["10"]["top1"])


def test_with_several_seeds_each_candidate_is_scored_as_their_ensemble(tmp_path, capsys):
  """Here a grid of one setting: an ensemble with nothing to choose."""
  config = vna_sim.get_config("tiny")
  config.select.grid = ml_collections.ConfigDict({"optim": {"weight_decay": (1e-4,)}})
  config.select.seeds = (0, 1)
  config.train.steps = 5  # what is checked is how the seeds are combined, not accuracy
  out = select.run(config, tmp_path)
  assert out["selection"]["seeds"] == [0, 1] and len(out["selection"]["candidates"]) == 1
  assert sorted(p.name for p in (tmp_path / "candidates" / "0").iterdir()) == [
      "seed0", "seed1", "validation.json"]
  ensemble, member = out["results"]["vna_ensemble"], out["results"]["vna"]
  assert ensemble["per_subject"].keys() == member["per_subject"].keys()
  assert ensemble["decoding"]["10"]["top1"] != member["decoding"]["10"]["top1"]
  # The test split's table, the ensemble's rows included, is printed at the end.
  assert capsys.readouterr().out.endswith(
      "test split:\n" + demo.results_table(out["results"]) + "\n")



def test_a_backbone_layer_is_a_grid_key():
  """The pretrained tower's stage as a choice: each candidate's config names its own
  stage (training one is the backbone tower's own test, tests/models/test_towers.py)."""
  from jaxvna.configs import common
  config = vna_sim.get_config("tiny")
  config.model.image_tower = common.image_tower(
      "backbone", backbone="resnet18", weights_file="random", layer="layer2", input_size=32)
  config.select.grid = ml_collections.ConfigDict(
      {"model": {"image_tower": {"layer": ("layer2", "layer3")}}})
  assert preflight.config_problems(config) == []
  points = select.grid_points(config.select.grid)
  layers = [select.candidate_config(config, p, "validation").model.image_tower.layer
            for p in points]
  assert layers == ["layer2", "layer3"]
