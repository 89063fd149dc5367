"""DINA: per-level heads and embeddings, the summed per-level CLIP objective, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvna.configs import dina_sim
from jaxvna.methods.dina import modules as dina
from jaxvna.training import train

COUNTS = (7, 5)
IMAGE_SHAPE = (16, 16, 1)


def tiny_config():
  c = dina_sim.get_config("tiny")
  c.model.embed_dim = 8
  c.model.image_tower.channels = (4, 8, 8)
  c.model.neural_tower.update(dict(readin_dim=8, hidden=(16,), neuron_dropout=0.2))
  c.dina.levels = ("level1", "level3")
  c.dina.level_weights = (1.0, 0.5)
  return c


def init(config, seed=0):
  model = dina.build_dina(config, COUNTS, IMAGE_SHAPE)
  images = jnp.zeros((1, *IMAGE_SHAPE), jnp.uint8)
  params = model.init(jax.random.key(seed), images, jnp.zeros((1, max(COUNTS))),
                      jnp.zeros((1,), jnp.int32), train=False)["params"]
  return model, params


def random_batch(b=16, seed=1):
  rng = np.random.default_rng(seed)
  subject = (np.arange(b) % 2).astype(np.int32)
  mask = np.arange(max(COUNTS))[None, :] < np.asarray(COUNTS)[subject][:, None]
  return {"image": rng.integers(0, 256, (b, *IMAGE_SHAPE)).astype(np.uint8),
          "response": rng.poisson(2.0, (b, max(COUNTS))).astype(np.float32) * mask,
          "neuron_mask": mask, "subject": subject}


def numpy_clip(x, y, t):
  logits = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / float(t)
  lse = lambda a, axis: np.log(np.exp(a - a.max(axis, keepdims=True)).sum(axis)) + a.max(axis)
  diag = np.diag(logits)
  return 0.5 * (np.mean(lse(logits, 1) - diag) + np.mean(lse(logits, 0) - diag))


def test_levels_have_their_own_heads_and_unit_embeddings():
  config = tiny_config()
  model, params = init(config)
  assert set(params) >= {"heads_level1", "heads_level3", "image_tower", "neural_tower"}
  assert params["heads_level1"]["position_bias"].shape == (8, 8)   # level1: stride 2
  assert params["heads_level3"]["position_bias"].shape == (2, 2)
  assert params["log_temperature"].shape == (2,)
  batch = random_batch()
  img, neu, temps = model.apply({"params": params}, batch["image"], batch["response"],
                                batch["subject"], train=False)
  for emb in (*img.values(), *neu.values()):
    assert emb.shape == (16, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(temps, [0.07, 0.07], rtol=1e-6)
  _, attention = model.apply({"params": params}, model.apply(
      {"params": params}, batch["image"], method=model.feature_maps), return_attention=True,
      method=model.embed_feature_maps)
  np.testing.assert_allclose(attention["level1"].sum((1, 2)), 1.0, rtol=1e-5)
  # The joint embeddings' cosine is the level-weighted mean of the per-level cosines.
  joint_img = model.apply({"params": params}, batch["image"], method=model.embed_images)
  joint_neu = model.apply({"params": params}, batch["response"], batch["subject"],
                          method=model.embed_responses)
  per_level = [np.sum(img[l] * neu[l], axis=1) for l in ("level1", "level3")]
  np.testing.assert_allclose(np.sum(joint_img * joint_neu, axis=1),
                             (per_level[0] + 0.5 * per_level[1]) / 1.5, rtol=1e-5, atol=1e-6)


def test_objective_is_the_weighted_sum_of_per_level_clip_losses():
  config = tiny_config()
  model, params = init(config)
  batch = random_batch()
  rng = jax.random.key(3)
  loss, metrics = train.make_objective(config, model, None)(params, batch, rng)
  img, neu, temps = model.apply({"params": params}, batch["image"], batch["response"],
                                batch["subject"], train=True, rngs={"dropout": rng})
  terms = [numpy_clip(img[l], neu[l], temps[i]) for i, l in enumerate(("level1", "level3"))]
  assert float(metrics["loss_level1"]) == pytest.approx(terms[0], rel=1e-5)
  assert float(metrics["loss_level3"]) == pytest.approx(terms[1], rel=1e-5)
  assert float(loss) == pytest.approx(terms[0] + 0.5 * terms[1], rel=1e-5)


def test_sharded_objective_and_gradients_equal_single_device(objective_single_and_sharded):
  config = tiny_config()
  model, params = init(config)
  batch = random_batch(b=32)
  (loss1, _, grads1), (loss8, grads8) = objective_single_and_sharded(config, model, params,
                                                                     batch)
  assert float(loss8) == pytest.approx(float(loss1), rel=1e-5)
  for g1, g8 in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8)):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-6)
  # Both levels' heads and temperatures learn; the tower's unused pooled head does not.
  assert np.abs(grads1["heads_level1"]["position_bias"]).sum() > 0
  assert np.all(np.abs(grads1["log_temperature"]) > 0)
  assert np.abs(grads1["image_tower"]["head"]["kernel"]).sum() == 0


def test_bad_configs_are_refused():
  config = tiny_config()
  config.dina.levels = ("level4",)
  with pytest.raises(ValueError, match="dina.levels: expected distinct names among"):
    dina.build_dina(config, COUNTS, IMAGE_SHAPE)
  config = tiny_config()
  config.dina.level_weights = (1.0,)
  with pytest.raises(ValueError, match="2 positive weights"):
    dina.build_dina(config, COUNTS, IMAGE_SHAPE)
  config = tiny_config()
  config.model.image_tower.type = "mlp"
  with pytest.raises(ValueError, match="image_tower.type 'cnn' or 'backbone'"):
    dina.build_dina(config, COUNTS, IMAGE_SHAPE)
  config = tiny_config()
  config.loss.type = "sigmoid"
  with pytest.raises(ValueError, match="loss.type='clip'"):
    train.make_objective(config, None, None)


def test_levels_of_a_pretrained_backbone_are_its_map_stages():
  from jaxvna.configs import common
  config = tiny_config()
  config.model.image_tower = common.image_tower(
      "backbone", backbone="resnet18", weights_file="random", layer="layer3", input_size=32,
      hidden=(8,))
  assert dina.feature_map_names(config.model.image_tower) == (
      "stem", "pool1", "layer1", "layer2", "layer3", "layer4")
  config.dina.levels = ("layer2", "layer3")
  model, params = init(config)
  batch = random_batch(4)
  img = model.apply({"params": params}, batch["image"], train=False,
                    method=model.image_embeddings)
  assert set(img) == {"layer2", "layer3"}
  assert all(v.shape == (4, 8) for v in img.values())
  config.dina.levels = ("avgpool",)  # a vector, not a map
  with pytest.raises(ValueError, match="distinct names among .*'layer4'\\)"):
    dina.build_dina(config, COUNTS, IMAGE_SHAPE)
