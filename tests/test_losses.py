"""Tests of jaxvna.losses: the contrastive losses, plain and sharded over fake CPU devices."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxvna import losses

AUTO = jax.sharding.AxisType.Auto
EXPLICIT = jax.sharding.AxisType.Explicit
# Compiles dominate the run time, so few examples; each one compiles a fresh shard_map.
FEW = hypothesis.settings(max_examples=8, deadline=None)


def _embeddings(seed: int, batch: int, dim: int, dtype=jnp.float32):
  """Two (batch, dim) unit-norm embeddings, the second correlated with the first."""
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, dim))
  y = x + jax.random.normal(ky, (batch, dim))
  unit = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)
  return unit(x).astype(dtype), unit(y).astype(dtype)


def _mesh(n_devices: int, axis_type=EXPLICIT):
  return jax.make_mesh((n_devices,), ("data",), axis_types=(axis_type,))


def _clip_value_and_grads(x, y, t, mesh=None, impl="gather"):
  """(loss, (d/dx, d/dy, d/dt)) from a jit under jax.set_mesh, as a user's train step."""
  fn = jax.jit(jax.value_and_grad(
      lambda x, y, t: losses.clip_loss(x, y, t, mesh=mesh, impl=impl), argnums=(0, 1, 2)))
  if mesh is None:
    return jax.block_until_ready(fn(x, y, t))
  with jax.set_mesh(mesh):
    batch = NamedSharding(mesh, P("data"))
    x, y = jax.device_put(x, batch), jax.device_put(y, batch)
    return jax.block_until_ready(fn(x, y, t))


def _sigmoid_value_and_grads(x, y, t, b, mesh=None, impl="gather"):
  """(loss, (d/dx, d/dy, d/dt, d/db)) from a jit under jax.set_mesh."""
  fn = jax.jit(jax.value_and_grad(
      lambda x, y, t, b: losses.sigmoid_loss(x, y, t, b, mesh=mesh, impl=impl),
      argnums=(0, 1, 2, 3)))
  if mesh is None:
    return jax.block_until_ready(fn(x, y, t, b))
  with jax.set_mesh(mesh):
    batch = NamedSharding(mesh, P("data"))
    x, y = jax.device_put(x, batch), jax.device_put(y, batch)
    return jax.block_until_ready(fn(x, y, t, b))


def _assert_close(actual, expected, tol=1e-5):
  actual_leaves, expected_leaves = jax.tree.leaves(actual), jax.tree.leaves(expected)
  assert len(actual_leaves) == len(expected_leaves)
  for a, e in zip(actual_leaves, expected_leaves):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32),
                               rtol=tol, atol=tol)


def _numpy_clip(x, y, t):
  """Symmetric InfoNCE written out in float64 numpy, row by row."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  logits = x @ y.T / t
  batch = len(x)
  img = [-logits[i, i] + math.log(np.exp(logits[i]).sum()) for i in range(batch)]
  neu = [-logits[j, j] + math.log(np.exp(logits[:, j]).sum()) for j in range(batch)]
  return 0.5 * (np.mean(img) + np.mean(neu))


def _numpy_sigmoid(x, y, t, b):
  """SigLIP loss in float64 numpy: -(1/B) sum_ij log sigmoid(z_ij (x_i.y_j / t + b))."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  batch = len(x)
  total = 0.0
  for i in range(batch):
    for j in range(batch):
      z = 1.0 if i == j else -1.0
      total -= math.log(1.0 / (1.0 + math.exp(-z * (x[i] @ y[j] / t + b))))
  return total / batch


# ---------------------------------------------------------------------------------------
# Plain (mesh=None) values.


def test_clip_matches_numpy_reference():
  x, y = _embeddings(0, 5, 3)
  np.testing.assert_allclose(losses.clip_loss(x, y, 0.3), _numpy_clip(x, y, 0.3), rtol=1e-6)


def test_sigmoid_matches_numpy_reference():
  x, y = _embeddings(1, 5, 3)
  np.testing.assert_allclose(losses.sigmoid_loss(x, y, 0.3, -1.5),
                             _numpy_sigmoid(x, y, 0.3, -1.5), rtol=1e-6)


def test_clip_aligned_orthogonal_embeddings_give_zero_loss():
  emb = jnp.eye(6, 8)
  assert float(losses.clip_loss(emb, emb, 0.01)) < 1e-6


def test_clip_identical_rows_give_log_batch():
  emb = jnp.ones((7, 4))
  np.testing.assert_allclose(losses.clip_loss(emb, emb, 0.1), math.log(7), rtol=1e-6)


def test_sigmoid_zero_logits_give_batch_log2():
  # Every one of the B^2 pairs contributes log 2, normalised by B.
  emb = jnp.zeros((6, 4))
  np.testing.assert_allclose(losses.sigmoid_loss(emb, emb, 1.0, 0.0), 6 * math.log(2),
                             rtol=1e-6)


def test_known_values_hold_sharded():
  mesh = _mesh(4)
  with jax.set_mesh(mesh):
    for impl in losses.IMPLS:
      loss = jax.jit(lambda e, t: losses.clip_loss(e, e, t, mesh=mesh, impl=impl))
      assert float(loss(jnp.eye(8), 0.01)) < 1e-6
      # Logits of 40 everywhere: float32 keeps log(8) to ~1e-6 after the cancellation.
      np.testing.assert_allclose(loss(jnp.ones((8, 4)), 0.1), math.log(8), rtol=1e-5)


def test_bf16_inputs_are_computed_in_float32():
  x, y = _embeddings(2, 6, 4, jnp.bfloat16)
  loss = losses.clip_loss(x, y, 0.2)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, _numpy_clip(x.astype(jnp.float32), y.astype(jnp.float32),
                                               0.2), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Sharded == single-device full batch (values and gradients).


@FEW
@hypothesis.given(n_devices=st.sampled_from([1, 2, 4, 8]), rows=st.integers(1, 4),
                  dim=st.sampled_from([3, 8]), impl=st.sampled_from(losses.IMPLS),
                  axis_type=st.sampled_from([EXPLICIT, AUTO]),
                  temperature=st.floats(0.05, 2.0), seed=st.integers(0, 2**16))
def test_clip_sharded_equals_full_batch(n_devices, rows, dim, impl, axis_type, temperature,
                                        seed):
  x, y = _embeddings(seed, n_devices * rows, dim)
  t = jnp.float32(temperature)
  expected = _clip_value_and_grads(x, y, t)
  actual = _clip_value_and_grads(x, y, t, _mesh(n_devices, axis_type), impl)
  _assert_close(actual, expected)


@FEW
@hypothesis.given(n_devices=st.sampled_from([1, 2, 4, 8]), rows=st.integers(1, 4),
                  impl=st.sampled_from(losses.IMPLS),
                  axis_type=st.sampled_from([EXPLICIT, AUTO]),
                  temperature=st.floats(0.05, 2.0), bias=st.floats(-10.0, 2.0),
                  seed=st.integers(0, 2**16))
def test_sigmoid_sharded_equals_full_batch(n_devices, rows, impl, axis_type, temperature, bias,
                                           seed):
  x, y = _embeddings(seed, n_devices * rows, 8)
  t, b = jnp.float32(temperature), jnp.float32(bias)
  expected = _sigmoid_value_and_grads(x, y, t, b)
  actual = _sigmoid_value_and_grads(x, y, t, b, _mesh(n_devices, axis_type), impl)
  _assert_close(actual, expected)


@pytest.mark.parametrize("impl", losses.IMPLS)
def test_bf16_sharded_equals_float32_of_rounded_inputs(impl):
  x, y = _embeddings(3, 16, 8, jnp.bfloat16)
  x32, y32 = x.astype(jnp.float32), y.astype(jnp.float32)
  t, b = jnp.float32(0.1), jnp.float32(-2.0)
  mesh = _mesh(8)
  for actual, expected in [
      (_clip_value_and_grads(x, y, t, mesh, impl), _clip_value_and_grads(x32, y32, t)),
      (_sigmoid_value_and_grads(x, y, t, b, mesh, impl),
       _sigmoid_value_and_grads(x32, y32, t, b))]:
    value, (dx, dy, *scalar_grads) = actual
    value32, (dx32, dy32, *scalar_grads32) = expected
    assert value.dtype == jnp.float32 and dx.dtype == jnp.bfloat16
    _assert_close((value, scalar_grads), (value32, scalar_grads32))
    # Embedding gradients are accumulated in float32 and rounded once to bfloat16.
    _assert_close((dx, dy), (dx32.astype(jnp.bfloat16), dy32.astype(jnp.bfloat16)))


@pytest.mark.parametrize("impl", losses.IMPLS)
def test_gradients_reach_every_device_shard(impl):
  n_devices, rows = 8, 2
  mesh = _mesh(n_devices)
  x, y = _embeddings(4, n_devices * rows, 4)
  _, (dx, dy, dt) = _clip_value_and_grads(x, y, jnp.float32(0.5), mesh, impl)
  assert float(dt) != 0.0
  for grad in (dx, dy):
    shards = grad.addressable_shards
    assert len(shards) == n_devices
    for shard in shards:
      assert shard.data.shape == (rows, 4)
      assert np.all(np.linalg.norm(np.asarray(shard.data), axis=1) > 0), shard.index


@pytest.mark.parametrize("impl", losses.IMPLS)
def test_two_axis_mesh_shards_batch_over_data_only(impl):
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AUTO, AUTO))
  x, y = _embeddings(5, 8, 4)
  t, b = jnp.float32(0.3), jnp.float32(-1.0)
  _assert_close(_clip_value_and_grads(x, y, t, mesh, impl), _clip_value_and_grads(x, y, t))
  _assert_close(_sigmoid_value_and_grads(x, y, t, b, mesh, impl),
                _sigmoid_value_and_grads(x, y, t, b))


def test_custom_axis_name_and_eager_call():
  mesh = jax.make_mesh((2, 4), ("model", "batch"), axis_types=(EXPLICIT, EXPLICIT))
  x, y = _embeddings(6, 8, 4)
  expected = losses.clip_loss(x, y, 0.5)
  # Eager for gather; a jit for ring, whose scan runs op by op (slowly) when eager.
  eager = losses.clip_loss(x, y, 0.5, mesh=mesh, impl="gather", axis_name="batch")
  np.testing.assert_allclose(eager, expected, rtol=1e-6)
  with jax.set_mesh(mesh):
    ring = jax.jit(lambda x, y: losses.clip_loss(x, y, 0.5, mesh=mesh, impl="ring",
                                                 axis_name="batch"))(x, y)
  np.testing.assert_allclose(ring, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Bad input.


def test_bad_input_is_rejected_with_a_clear_message():
  x, y = _embeddings(7, 6, 4)
  mesh = _mesh(4)
  with pytest.raises(ValueError, match="same shape"):
    losses.clip_loss(x, y[:5], 0.1)
  with pytest.raises(ValueError, match="impl"):
    losses.clip_loss(x, y, 0.1, mesh=mesh, impl="allreduce")
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    losses.clip_loss(x, y, 0.1, mesh=mesh)
  with pytest.raises(ValueError, match="axis_name 'batch'"):
    losses.sigmoid_loss(x, y, 0.1, 0.0, mesh=mesh, axis_name="batch")
  with pytest.raises(ValueError, match="temperature must be a scalar"):
    losses.clip_loss(x, y, jnp.ones(2))


# --- Per-neuron and per-image losses ---------------------------------------------------


def test_poisson_nll_ignores_masked_neurons_and_is_minimal_at_the_counts():
  counts = jnp.array([[2.0, 5.0, 0.0]])
  mask = jnp.array([[True, True, False]])
  at_counts = losses.poisson_nll(counts + 1e-9, counts, mask)
  assert losses.poisson_nll(counts * 1.5, counts, mask) > at_counts
  # The masked entry (rate 100) does not count.
  same = losses.poisson_nll(jnp.array([[2.0, 5.0, 100.0]]), counts, mask)
  np.testing.assert_allclose(same, at_counts, rtol=1e-5)
  expected = np.mean([2 - 2 * np.log(2), 5 - 5 * np.log(5)])
  np.testing.assert_allclose(at_counts, expected, rtol=1e-5)


def test_masked_mse_and_negative_correlation():
  pred = jnp.array([[1.0, 2.0, 3.0]])
  target = jnp.array([[1.0, 2.0, 9.0]])
  mask = jnp.array([[True, True, False]])
  assert float(losses.masked_mse(pred, target, mask)) == 0.0
  np.testing.assert_allclose(losses.negative_correlation(pred, 2 * pred + 1), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.negative_correlation(pred, -pred), 2.0, atol=1e-6)
