"""Gabor-LiT, the method added through the registry alone: fixed Gabor energy + linear
towers + CLIP, trained and evaluated by the trainer like any method."""

import jax

from jaxvna import registry
from jaxvna.configs import vna_sim
from jaxvna.training import train


def test_only_the_linear_maps_and_the_temperature_learn():
  config = vna_sim.get_config("gabor_lit,tiny")
  dataset = train.load_dataset(config)
  model = train.make_model(config, dataset)
  # Shapes only: abstract parameters (no initialisation run).
  params = jax.eval_shape(lambda: train.init_state(config, model, train.make_optimizer(config),
                                                   dataset)).params
  shapes = {jax.tree_util.keystr(p): v.shape
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  # 32x32 images, stride 2, pool 4: 4x4 positions x (8 orientations x 2 frequencies).
  assert shapes["['image_tower']['embed']['kernel']"] == (4 * 4 * 16, 32)
  assert shapes["['neural_tower']['readin']['kernel']"] == (2, 60, 32)
  assert not any("gabor" in name for name in shapes)  # the Gabor stage is fixed


def test_trains_from_the_registry_and_scores_well_above_chance(tmp_path):
  assert registry.get("gabor_lit").in_demo
  config = vna_sim.get_config("gabor_lit,tiny")
  config.train.steps = 200
  results = train.train_and_evaluate(config, tmp_path)["results"]["gabor_lit"]
  # Measured at 200 tiny steps (seed 0, 2 CPU cores): 10-way top-1 0.229 (decoding), 0.234
  # (encoding), chance 0.10; 2-way 0.659, 0.673, chance 0.5. Floors: the lower of the two
  # minus 0.029 (10-way) and 0.039 (2-way), ~25% of its distance from chance.
  for task in ("decoding", "encoding"):
    assert results[task]["10"]["top1"] > 0.20, (task, results[task]["10"])
    assert results[task]["2"]["top1"] > 0.62, (task, results[task]["2"])
