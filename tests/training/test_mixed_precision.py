"""model.dtype="bfloat16": the towers compute in bfloat16 while the parameters, the AdamW
state and the loss stay float32, and the whole training step trains."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvna.configs import common, vna_sim
from jaxvna.data import pipeline, readers
from jaxvna.training import train

@pytest.fixture(scope="module")
def tiny_dataset():
  return readers.load("simulator", **vna_sim.get_config("vna,tiny").data.kwargs)


def tiny_config(dtype: str, image_tower: str = "mlp"):
  c = vna_sim.get_config("vna,tiny")
  c.model.dtype = dtype
  if image_tower == "cnn":
    c.model.image_tower = common.image_tower("cnn", channels=(8, 16), hidden=(128,))
  c.loss.impl = "ring"
  c.train.steps = 80
  c.train.log_every = 1
  c.train.checkpoint_every = 80
  return c


def _equations(jaxpr, in_loss=False):
  """(equation, inside the loss's shard_map) for every equation, nested ones included."""
  for eqn in jaxpr.eqns:
    yield eqn, in_loss
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub, in_loss or eqn.primitive.name == "shard_map")


def test_bfloat16_step_keeps_float32_state_and_computes_the_loss_in_float32(tiny_dataset):
  """Traced, not run (the training test below runs it): the dtypes of the step's outputs
  and of every product inside it."""
  config = tiny_config("bfloat16", image_tower="cnn")
  mesh = train.make_mesh()
  model = train.make_model(config, tiny_dataset)
  tx = train.make_optimizer(config)
  objective = train.make_objective(config, model, mesh)
  state = jax.eval_shape(lambda: train.init_state(config, model, tx, tiny_dataset))
  batch = next(pipeline.make_train_iterator(
      pipeline.DatasetSource(tiny_dataset, "train"), global_batch_size=64, mesh=mesh, seed=0))
  with jax.set_mesh(mesh):
    new_state, metrics = jax.eval_shape(train.make_train_step(config, objective, tx), state,
                                        batch)
    grad_jaxpr = jax.make_jaxpr(lambda p: jax.value_and_grad(objective, has_aux=True)(
        p, batch, jax.random.key(0), state.step))(state.params)

  floats = [x for x in jax.tree.leaves((new_state.params, new_state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert metrics["loss"].dtype == jnp.float32 and metrics["grad_norm"].dtype == jnp.float32

  tower_products, loss_dtypes = set(), set()
  for eqn, in_loss in _equations(grad_jaxpr.jaxpr):
    if in_loss:
      loss_dtypes |= {v.aval.dtype for v in eqn.invars + eqn.outvars if hasattr(v.aval, "dtype")}
    elif eqn.primitive.name == "dot_general":
      tower_products |= {v.aval.dtype for v in eqn.invars}
  # Every matmul of the towers (convolutions included: patches @ kernel), forward and
  # backward, is a bfloat16 product; nothing in the loss, forward or backward, is.
  assert tower_products == {jnp.dtype(jnp.bfloat16)}
  assert loss_dtypes and jnp.dtype(jnp.bfloat16) not in loss_dtypes


def test_bfloat16_training_lowers_the_loss(tmp_path, tiny_dataset):
  config = tiny_config("bfloat16")
  model, params, _ = train.train(config, tmp_path, dataset=tiny_dataset)
  losses = np.array([json.loads(line)["loss"]
                     for line in (tmp_path / "metrics.jsonl").read_text().splitlines()])
  assert len(losses) == 80
  # Measured (seed 0, 2 CPU cores): 4.99 over the first 10 steps, 2.82 over the last 10
  # (float32 alike). Chance, a uniform CLIP loss over the batch of 64, is log 64 = 4.16:
  # floor margin 0.33 (25% of 4.16 - 2.82); the drop, 2.17, margin 0.67. NaN fails both.
  assert losses[-10:].mean() < 3.15, losses
  assert losses[-10:].mean() < losses[:10].mean() - 1.5, losses
  assert json.loads((tmp_path / "summary.json").read_text())["skipped_steps"] == 0

  # The trained parameters, one batch: the bfloat16 loss is the float32 loss up to rounding.
  mesh = train.make_mesh()
  f32 = tiny_config("float32")
  batch = next(pipeline.make_train_iterator(
      pipeline.DatasetSource(tiny_dataset, "train"), global_batch_size=64, mesh=mesh, seed=1))
  with jax.set_mesh(mesh):
    bf16_loss, f32_loss = (
        jax.jit(objective)(params, batch, jax.random.key(1), jnp.int32(80))[0]
        for objective in (train.make_objective(config, model, mesh),
                          train.make_objective(f32, train.make_model(f32, tiny_dataset),
                                                    mesh)))
  np.testing.assert_allclose(float(bf16_loss), float(f32_loss), rtol=5e-3)  # measured 3e-4
