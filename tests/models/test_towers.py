"""Tests of jaxvna.models.towers: shapes, feature maps, read-in masking, dropout, Gabor
front end, bf16, the im2col convolution against lax, build_model."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest
from jax import lax

from jaxvna.configs import common
from jaxvna.errors import ConfigError
from jaxvna.models import towers as T


def _tower(kind="cnn", *, embed_dim, dtype=jnp.float32, **fields):
  """An image tower of `kind`: configs/common.py's defaults but `fields`."""
  return T.IMAGE_TOWERS[kind](**{**common.IMAGE_TOWERS[kind], **fields}, embed_dim=embed_dim,
                              dtype=dtype)


def _neural_tower(counts, *, embed_dim, **fields):
  """A neural tower: configs/common.py's defaults but `fields`."""
  return T.NeuralTower(tuple(counts), **{**common.NEURAL_TOWER, **fields}, embed_dim=embed_dim)

KEY = jax.random.key(0)


def _init(module, *args, **kw):
  return module.init({"params": KEY, "dropout": KEY}, *args, train=False, **kw)


def _images(b=3, h=32, w=32, c=1, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, h, w, c)), jnp.uint8)


# ----------------------------------------------------------------------------- conv2d

@pytest.mark.parametrize("shape,k,stride", [((2, 9, 11, 3), 3, 2), ((2, 8, 8, 4), 3, 1),
                                            ((1, 12, 10, 2), 5, 2), ((2, 16, 16, 1), 3, 2)])
def test_conv2d_matches_lax_values_and_grads(shape, k, stride):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, shape[-1], 5)), jnp.float32)
  pad = T.same_padding(k)

  def ref(x, w):
    return lax.conv_general_dilated(x, w, (stride, stride), pad,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)

  def fast(x, w):
    return T.conv2d(x, w, stride, pad)

  np.testing.assert_allclose(fast(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(rng.normal(size=ref(x, w).shape), jnp.float32)
  g_ref = jax.grad(lambda x, w: jnp.sum(ref(x, w) * cot), argnums=(0, 1))(x, w)
  g_fast = jax.grad(lambda x, w: jnp.sum(fast(x, w) * cot), argnums=(0, 1))(x, w)
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv2d_pads_like_torch_not_lax_same():
  # A stride-2 3x3 conv on an even size reads pixel 0 with tap 1 (torch padding=1).
  x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
  w = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
  assert float(T.conv2d(x, w, 2)[0, 0, 0, 0]) == 1.0


def test_conv2d_rejects_channel_mismatch():
  with pytest.raises(ValueError, match="channels"):
    T.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 3, 1)))


@pytest.mark.parametrize("x_shape", [(6, 5), (2, 3, 4, 5)])
def test_linear_equals_matmul_values_and_grads(x_shape):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=x_shape[:-1] + (7,)), jnp.float32)
  np.testing.assert_allclose(T.linear(x, k), x @ k, rtol=1e-6, atol=1e-6)
  g_fast = jax.grad(lambda x, k: jnp.sum(T.linear(x, k) * cot), argnums=(0, 1))(x, k)
  g_ref = jax.grad(lambda x, k: jnp.sum((x @ k) * cot), argnums=(0, 1))(x, k)
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_linear_weight_gradient_is_a_row_major_product():
  # After XLA's optimisations the weight gradient must still be (K, M) @ (M, N), not a
  # dot contracting over the rows of x (XLA:CPU's slow path), which plain autodiff gives.
  x, k = jnp.ones((8, 16)), jnp.ones((16, 4))

  def compiled_dots(loss):
    hlo = jax.jit(jax.grad(loss)).lower(k).compile().as_text()
    return [line for line in hlo.splitlines() if "contracting_dims" in line]

  assert any("lhs_contracting_dims={0}" in d for d in compiled_dots(lambda k: jnp.sum(x @ k)))
  dots = compiled_dots(lambda k: jnp.sum(T.linear(x, k)))
  assert dots and all("lhs_contracting_dims={1}, rhs_contracting_dims={0}" in d
                      for d in dots), dots


def test_dense_has_nn_dense_parameters_and_values():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 6)), jnp.float32)
  params = T.Dense(5).init(KEY, x)
  jax.tree.map(np.testing.assert_array_equal, params, nn.Dense(5).init(KEY, x))
  np.testing.assert_allclose(T.Dense(5).apply(params, x), nn.Dense(5).apply(params, x),
                             rtol=1e-6)


def test_gelu_is_exact_erf_gelu_with_its_gradient():
  x = jnp.linspace(-6, 6, 101)
  ref = functools.partial(jax.nn.gelu, approximate=False)
  np.testing.assert_allclose(T.gelu(x), ref(x), atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(T.gelu))(x), jax.vmap(jax.grad(ref))(x),
                             atol=1e-5)


# ----------------------------------------------------------------------------- image towers

def test_conv_tower_shapes_and_feature_maps():
  tower = _tower(channels=(8, 16, 32), embed_dim=12, hidden=(20,))
  images = _images(3, 32, 32, 1)
  variables = _init(tower, images)
  emb, feats = tower.apply(variables, images, train=False, return_features=True)
  assert emb.shape == (3, 12) and emb.dtype == jnp.float32
  assert feats["level1"].shape == (3, 16, 16, 8)
  assert feats["level2"].shape == (3, 8, 8, 16)
  assert feats["level3"].shape == (3, 4, 4, 32)
  assert feats["pooled"].shape == (3, 32) and feats["hidden0"].shape == (3, 20)
  np.testing.assert_allclose(feats["pooled"], feats["level3"].mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(tower.apply(variables, images, train=False), emb)


def test_conv_tower_scales_uint8_like_float_in_unit_range():
  tower = _tower(channels=(4,), embed_dim=3)
  images = _images(2, 8, 8, 1)
  variables = _init(tower, images)
  as_float = images.astype(jnp.float32) / 255.0
  np.testing.assert_allclose(tower.apply(variables, images, train=False),
                             tower.apply(variables, as_float, train=False), rtol=1e-5, atol=1e-6)


def test_mlp_tower_and_feature_head_shapes():
  mlp = _tower("mlp", hidden=(16, 8), embed_dim=4)
  images = _images(5, 8, 8, 1)
  emb, feats = mlp.apply(_init(mlp, images), images, train=False, return_features=True)
  assert emb.shape == (5, 4) and feats["hidden0"].shape == (5, 16)
  assert feats["hidden1"].shape == (5, 8) and bool(jnp.all(feats["hidden1"] >= 0))  # relu
  head = _tower("features", hidden=(6,), embed_dim=3)
  x = jnp.ones((4, 10))
  assert head.apply(_init(head, x), x, train=False).shape == (4, 3)


def test_gabor_front_end_has_no_params_and_is_not_trained():
  tower = _tower(channels=(4,), embed_dim=3, front_end="gabor",
                      gabor=dict(size=7, orientations=3, spatial_frequencies=(0.25,), stride=2,
                           pool=1))
  images = _images(2, 16, 16, 3)
  variables = _init(tower, images)
  assert "gabor" not in variables["params"]
  # 3 orientations x 1 frequency energies feed conv1.
  assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 4)
  emb, feats = tower.apply(variables, images, train=False, return_features=True)
  assert feats["front_end"].shape == (2, 8, 8, 3) and bool(jnp.all(feats["front_end"] > 0))
  grads = jax.grad(lambda p: jnp.sum(tower.apply({"params": p}, images, train=False)))(
      variables["params"])
  assert set(grads) == {"conv1", "head"}  # everything trainable; nothing of the bank


def test_gabor_energy_is_phase_invariant_quadrature_energy():
  # A grating at the bank's frequency/orientation: energy ~ constant across phase shifts.
  front = T.GaborEnergyFrontEnd(size=15, orientations=2, spatial_frequencies=(0.125,), stride=1,
                                pool=1)
  cols = np.arange(32)
  phases = np.array([0.0, 1.0, 2.0])[:, None, None, None]
  img = np.cos(2 * np.pi * 0.125 * cols[None, None, :, None] + phases) * np.ones((3, 32, 32, 1))
  energies = np.asarray(jax.jit(front.apply)({}, jnp.asarray(img, jnp.float32)))[:, 16, 16, 0]
  np.testing.assert_allclose(energies, energies[0], rtol=0.05)
  assert energies[0] > 1.0


def test_bf16_compute_is_close_to_f32_with_f32_params():
  images = _images(4, 16, 16, 1)
  f32 = _tower(channels=(8, 16), embed_dim=8)
  bf16 = _tower(channels=(8, 16), embed_dim=8, dtype=jnp.bfloat16)
  variables = _init(f32, images)
  assert jax.tree.leaves(_init(bf16, images))[0].dtype == jnp.float32
  a = f32.apply(variables, images, train=False)
  b = bf16.apply(variables, images, train=False)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(b, a, atol=0.05 * float(jnp.abs(a).max()))


# ----------------------------------------------------------------------------- neural tower

COUNTS = (5, 8, 3)


def _neural(**kw):
  tower = _neural_tower(COUNTS, readin_dim=16, hidden=(12,), embed_dim=6, **kw)
  r = jnp.asarray(np.random.default_rng(2).normal(size=(6, 8)), jnp.float32)
  s = jnp.asarray([0, 1, 2, 2, 1, 0], jnp.int32)
  return tower, r, s, _init(tower, r, s)


def test_neural_tower_shapes_and_features():
  tower, r, s, variables = _neural()
  emb, feats = tower.apply(variables, r, s, train=False, return_features=True)
  assert emb.shape == (6, 6) and feats["readin"].shape == (6, 16)
  assert variables["params"]["readin"]["kernel"].shape == (3, 8, 16)


def test_readin_ignores_values_beyond_the_subjects_count():
  tower, r, s, variables = _neural()
  mask = T.neuron_mask(COUNTS)[np.asarray(s)]
  garbage = jnp.where(mask, r, 1e3)
  np.testing.assert_allclose(tower.apply(variables, garbage, s, train=False),
                             tower.apply(variables, r, s, train=False), rtol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(tower.apply({"params": p}, garbage, s, train=False)))(
      variables["params"])
  kernel_grad = np.asarray(grads["readin"]["kernel"])
  assert np.all(kernel_grad[~T.neuron_mask(COUNTS)] == 0)
  assert np.any(kernel_grad[T.neuron_mask(COUNTS)] != 0)


def test_mixed_subject_batch_equals_each_example_alone():
  tower, r, s, variables = _neural()
  batch = tower.apply(variables, r, s, train=False)
  for i in range(r.shape[0]):
    alone = tower.apply(variables, r[i:i + 1], s[i:i + 1], train=False)
    np.testing.assert_allclose(batch[i:i + 1], alone, rtol=1e-5, atol=1e-6)
  # Subjects really use different read-ins.
  other = tower.apply(variables, r, jnp.asarray([1, 0, 1, 1, 0, 1], jnp.int32), train=False)
  assert not np.allclose(other, batch)


def test_neuron_dropout_only_in_training_and_deterministic_given_rng():
  tower, r, s, variables = _neural(neuron_dropout=0.5)
  ev = tower.apply(variables, r, s, train=False)
  np.testing.assert_allclose(ev, tower.apply(variables, r, s, train=False))
  k1, k2 = jax.random.key(7), jax.random.key(8)
  t1 = tower.apply(variables, r, s, train=True, rngs={"dropout": k1})
  np.testing.assert_array_equal(t1, tower.apply(variables, r, s, train=True, rngs={"dropout": k1}))
  assert not np.allclose(t1, ev)
  assert not np.allclose(t1, tower.apply(variables, r, s, train=True, rngs={"dropout": k2}))
  _, feats = tower.apply(variables, jnp.zeros_like(r), s, train=True, rngs={"dropout": k1},
                         return_features=True)
  assert np.all(np.isfinite(feats["readin"]))


def test_neuron_dropout_drops_whole_neurons_and_rescales():
  # With a one-neuron subject and identity-like read-in, dropped = bias only, kept = 2x.
  tower = _neural_tower((1,), readin_dim=1, hidden=(), embed_dim=1, neuron_dropout=0.5,
                        activation="relu")
  r = jnp.ones((64, 1))
  s = jnp.zeros((64,), jnp.int32)
  variables = _init(tower, r, s)
  params = dict(variables["params"])
  params["readin"] = {"kernel": jnp.ones((1, 1, 1)), "bias": jnp.zeros((1, 1))}
  _, feats = tower.apply({"params": params}, r, s, train=True, rngs={"dropout": KEY},
                         return_features=True)
  values = np.unique(np.round(np.asarray(feats["readin"]), 5))
  np.testing.assert_allclose(values, [0.0, 2.0])


def test_log1p_preprocessing():
  np.testing.assert_allclose(T.preprocess_responses(jnp.asarray([-3.0, 0.0, 3.0]), "log1p"),
                             [-math.log(4), 0, math.log(4)], rtol=1e-6)
  with pytest.raises(ValueError, match="preprocess"):
    T.preprocess_responses(jnp.zeros(2), "zscore")


def test_neural_tower_rejects_wrong_width():
  tower, r, s, variables = _neural()
  with pytest.raises(ValueError, match="K_max=8"):
    tower.apply(variables, r[:, :7], s, train=False)


# ----------------------------------------------------------------------------- top level

def _dual():
  model = T.DualEncoder(_tower(channels=(4, 8), embed_dim=6),
                        _neural_tower(COUNTS, readin_dim=8, hidden=(8,), embed_dim=6),
                        init_temperature=0.07, min_temperature=0.01, init_bias=-10.0)
  images = _images(6, 16, 16, 1)
  r = jnp.asarray(np.random.default_rng(3).normal(size=(6, 8)), jnp.float32)
  s = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
  return model, images, r, s, _init(model, images, r, s)


def test_dual_encoder_outputs_and_methods():
  model, images, r, s, variables = _dual()
  img, neu, temperature, bias = model.apply(variables, images, r, s, train=False)
  np.testing.assert_allclose(jnp.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(neu, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(temperature, 0.07, rtol=1e-5)
  assert float(bias) == -10.0
  np.testing.assert_allclose(model.apply(variables, images, method="embed_images"), img)
  np.testing.assert_allclose(model.apply(variables, r, s, method="embed_responses"), neu)
  *_, feats = model.apply(variables, images, r, s, train=False, return_features=True)
  assert feats["level2"].shape == (6, 4, 4, 8)


def test_temperature_floor_clamps_and_stops_gradient():
  assert float(T.temperature_from_log(jnp.log(0.001), 0.01)) == pytest.approx(0.01)
  assert float(jax.grad(lambda t: T.temperature_from_log(t, 0.01))(jnp.log(0.001))) == 0.0
  assert float(jax.grad(lambda t: T.temperature_from_log(t, 0.01))(jnp.log(0.1))) > 0


def test_l2_normalize_handles_zero_rows():
  out = T.l2_normalize(jnp.asarray([[3.0, 4.0], [0.0, 0.0]]))
  np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def test_direct_encoder_rates_positive_and_zero_beyond_count():
  model = T.DirectEncoder(_tower(channels=(4,), embed_dim=8), COUNTS)
  images = _images(6, 8, 8, 1)
  s = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
  variables = _init(model, images, s)
  rates = model.apply(variables, images, s, train=False)
  mask = T.neuron_mask(COUNTS)[np.asarray(s)]
  assert rates.shape == (6, 8)
  assert np.all(np.asarray(rates)[mask] > 0) and np.all(np.asarray(rates)[~mask] == 0)
  # Same image, different subject -> that subject's readout.
  swapped = model.apply(variables, images, jnp.asarray([1, 1, 1, 1, 1, 1], jnp.int32),
                        train=False)
  np.testing.assert_allclose(swapped[1], rates[1], rtol=1e-6)
  assert not np.allclose(swapped[0, :5], rates[0, :5])


def test_direct_decoder_shape():
  model = T.DirectDecoder(_neural_tower(COUNTS, readin_dim=8, hidden=(), embed_dim=8),
                          out_size=4)
  r, s = jnp.ones((2, 8)), jnp.asarray([0, 2], jnp.int32)
  out = model.apply(_init(model, r, s), r, s, train=False)
  assert out.shape == (2, 16) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------- build_model

BUILDERS = {"vna": T.dual_encoder, "direct_encoding": T.direct_encoder,
            "direct_decoding": lambda config, counts, shape: T.direct_decoder(config, counts)}


def _model_config(kind="cnn", front_end=None):
  image = dict(channels=(4, 8), front_end=front_end, gabor=dict(common.GABOR, size=5)) \
      if kind == "cnn" else {}
  return common.model(
      embed_dim=4, decoder_size=4, image_tower=common.image_tower(kind, hidden=(8,), **image),
      neural_tower=common.neural_tower(readin_dim=8, hidden=(8,)))


@pytest.mark.parametrize("kind,front_end", [("cnn", None), ("cnn", "gabor"), ("mlp", None),
                                            ("features", None)])
@pytest.mark.parametrize("method", BUILDERS)
def test_build_model_every_type_and_method(kind, front_end, method):
  image_shape = (10,) if kind == "features" else (16, 16, 1)
  model = BUILDERS[method](_model_config(kind, front_end), COUNTS, image_shape)
  b = 2
  images = jnp.ones((b, *image_shape), jnp.float32)
  r, s = jnp.ones((b, 8)), jnp.asarray([0, 1], jnp.int32)
  args = {"vna": (images, r, s), "direct_encoding": (images, s),
          "direct_decoding": (r, s)}[method]
  variables = _init(model, *args)
  out = model.apply(variables, *args, train=True, rngs={"dropout": KEY})
  expected = {"vna": [(b, 4), (b, 4), (), ()], "direct_encoding": [(b, 8)],
              "direct_decoding": [(b, 16)]}[method]
  assert [x.shape for x in jax.tree.leaves(out)] == expected


def test_build_model_bf16_and_errors():
  config = common.model(dtype="bfloat16")
  model = T.dual_encoder(config, (8,), (16, 16, 1))
  assert model.image_tower.dtype == jnp.bfloat16 and model.neural_tower.dtype == jnp.bfloat16
  config.dtype = "float16"
  with pytest.raises(ValueError, match="model.dtype"):
    T.dual_encoder(config, (8,), (16, 16, 1))
  config = common.model()
  config.image_tower.type = "resnet"
  with pytest.raises(ValueError, match="image_tower.type"):
    T.dual_encoder(config, (8,), (16, 16, 1))
  with pytest.raises(ValueError, match="needs \\(H, W, C\\)"):
    T.dual_encoder(common.model(), (8,), (10,))


def test_every_configured_field_comes_from_the_config():
  # A missing field is named, not filled in; a field no tower has (a typo) is refused.
  config = common.model()
  del config.image_tower["kernel_size"]
  with pytest.raises(ValueError, match="model.image_tower: ConvTower .*missing \\['kernel_size'\\]"):
    T.dual_encoder(config, (8,), (16, 16, 1))
  config = common.model()
  config.neural_tower.readin_width = 8
  with pytest.raises(ValueError, match="model.neural_tower: .*unknown \\['readin_width'\\]"):
    T.dual_encoder(config, (8,), (16, 16, 1))
  for cls in (T.ConvTower, T.MLPTower, T.FeatureHead, T.NeuralTower, T.DualEncoder):
    configured = [f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")
                  and f.default is dataclasses.MISSING]
    assert configured, cls  # the configured fields have no default of their own
  config = common.model()
  config.image_tower.chanels = (4,)
  with pytest.raises(ValueError, match="unknown \\['chanels'\\]"):
    T.dual_encoder(config, (8,), (16, 16, 1))
  # A type switched in place (as a command-line flag does) uses the block's own values.
  config = common.model()
  config.image_tower.type = "mlp"
  tower = T.dual_encoder(config, (8,), (16, 16, 1)).image_tower
  assert isinstance(tower, T.MLPTower) and tower.activation == "gelu" and tower.hidden == ()
  with pytest.raises(ValueError, match="unknown field"):
    common.image_tower("mlp", channels=(4,))


# ----------------------------------------------------------------------------- backbone tower

def test_pooling_of_maps_and_vectors():
  x = np.random.default_rng(1).normal(size=(2, 4, 6, 3)).astype(np.float32)
  np.testing.assert_allclose(T.pool_features(x, "mean"), x.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(T.pool_features(x, "none"), x.reshape(2, -1))
  blocks = np.asarray(T.pool_features(x, "2")).reshape(2, 2, 2, 3)
  # block (i, j) is the mean of rows 2i..2i+1 and columns 3j..3j+2
  np.testing.assert_allclose(blocks[:, 1, 0], x[:, 2:4, 0:3].mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(T.pool_features(x, 1), x.mean(axis=(1, 2)), rtol=1e-5)
  v = x[:, 0, 0]
  assert T.pool_features(v, "2") is v  # a vector stage is taken as it is


@pytest.mark.parametrize("pool, message", [("max", "unknown 'max'"), ("0", "at least 1"),
                                           ("4", "4x4 grid does not divide the 4x6 map")])
def test_bad_pooling_is_named(pool, message):
  with pytest.raises(ConfigError, match=message):
    T.pool_features(np.zeros((1, 4, 6, 2), np.float32), pool)



def test_a_backbone_first_loaded_inside_a_trace_is_concrete_in_the_next():
  """The tower loads its network during a jitted init or step; the cached weights must
  not be that trace's values (two runs in one process, e.g. `jaxvna select`'s candidates,
  failed with a leaked tracer)."""
  T.pretrained.cache_clear()
  jax.jit(lambda x: x + jax.tree.leaves(T.pretrained("resnet18", "random", 16).variables)[0]
          .sum())(1.0)
  leaves = jax.tree.leaves(T.pretrained("resnet18", "random", 16).variables)
  assert not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
  assert jax.jit(lambda: leaves[0].sum())() == leaves[0].sum()
  T.pretrained.cache_clear()


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("freeze", [True, False])
def test_backbone_tower_starts_from_the_file_and_trains_only_what_it_may(freeze):
  with T.use_kernel_form("xla"):  # plain convolutions compile faster; the same parameters
    _check_backbone_tower(freeze)


def _check_backbone_tower(freeze):
  import optax
  from jaxvna.configs import vna_sim
  from jaxvna.models import backbones
  from jaxvna.training import train
  config = vna_sim.get_config("tiny")
  config.model = common.model(
      embed_dim=4, image_tower=common.image_tower(
          "backbone", backbone="resnet18", weights_file="random", layer="layer2", pool="2",
          input_size=32, freeze=freeze, hidden=(8,)),
      neural_tower=common.neural_tower(readin_dim=8, hidden=(8,)))
  config.optim.weight_decay = 0.1
  model = T.dual_encoder(config.model, COUNTS, (20, 20, 1))
  images, r, s = _images(3, 20, 20), jnp.ones((3, 8)), jnp.asarray([0, 1, 0], jnp.int32)
  params = _init(model, images, r, s)["params"]
  net = backbones.load("resnet18", backbones.RANDOM, image_size=32)
  tower = params["image_tower"]
  assert not _changed(tower["frozen_backbone" if freeze else "backbone"], net.variables["params"])
  assert not _changed(tower["frozen_stats"], {"batch_stats": net.variables["batch_stats"]})
  _, feats = jax.jit(functools.partial(model.apply, train=False, return_features=True,
                                       method=model.embed_images))({"params": params}, images)
  np.testing.assert_allclose(feats["layer2"], net(images, stages=("layer2",))["layer2"],
                             atol=1e-5)

  def loss(p):
    img, neu, _, _ = model.apply({"params": p}, images, r, s, train=False)
    return jnp.sum((img - neu) ** 2)
  tx, grad = train.make_optimizer(config), jax.jit(jax.grad(loss))
  state, new = tx.init(params), params
  for _ in range(2):  # the first update has learning rate 0 (warmup)
    updates, state = tx.update(grad(new), state, new)
    new = optax.apply_updates(new, updates)
  assert not _changed(new["image_tower"]["frozen_stats"], tower["frozen_stats"])
  assert _changed(new["image_tower"]["mlp"], tower["mlp"])
  if freeze:
    assert not _changed(new["image_tower"]["frozen_backbone"], tower["frozen_backbone"])
  else:
    assert _changed(new["image_tower"]["backbone"], tower["backbone"])


def test_trained_mask_marks_frozen_names_at_any_depth():
  params = {"a": {"frozen_x": {"k": 1}, "y": 2}, "frozen_z": 3, "b": 4}
  assert T.trained_mask(params) == {"a": {"frozen_x": {"k": False}, "y": True},
                                    "frozen_z": False, "b": True}
  assert T.has_frozen_params(common.model(image_tower=common.image_tower("backbone")))
  assert not T.has_frozen_params(common.model())


# ----------------------------------------------------------------------------- kernel forms

def test_kernel_forms_agree_in_values_gradients_and_parameters():
  """The CPU forms (patch matmul, row-major weight gradient) and the plain XLA forms that
  GPU and TPU get: same values and gradients, the same parameter tree."""
  assert T.kernel_form() == "cpu"  # these tests run on the CPU backend
  model = T.dual_encoder(_model_config("cnn"), COUNTS, (16, 16, 1))
  images = _images(4, 16, 16, 1)
  r = jnp.asarray(np.random.default_rng(5).normal(size=(4, 8)), jnp.float32)
  s = jnp.asarray([0, 1, 2, 0], jnp.int32)
  out = {}
  for form in T.KERNEL_FORMS:
    with T.use_kernel_form(form):
      variables = _init(model, images, r, s)
      loss = lambda p: jnp.sum(model.apply({"params": p}, images, r, s, train=False)[0] ** 2)
      out[form] = (variables, jax.jit(jax.value_and_grad(loss))(variables["params"]))
  (v_cpu, (l_cpu, g_cpu)), (v_xla, (l_xla, g_xla)) = out["cpu"], out["xla"]
  assert jax.tree.structure(v_cpu) == jax.tree.structure(v_xla)
  for a, b in zip(jax.tree.leaves(v_cpu), jax.tree.leaves(v_xla)):
    np.testing.assert_array_equal(a, b)  # same initial parameters
  np.testing.assert_allclose(l_cpu, l_xla, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="kernel form"):
    with T.use_kernel_form("gpu"):
      pass
