"""Diffusion: the noise schedules, q(x_t | x_0), DDIM with the true noise, guidance on a
toy with a closed-form denoiser, and the U-Net."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxvna.methods.migvis import diffusion

from jaxvna.methods.migvis import modules as migvis


@pytest.mark.parametrize("kind", diffusion.SCHEDULES)
def test_alpha_bar_is_strictly_decreasing_from_one_towards_zero(kind):
  a = diffusion.noise_schedule(kind, 1000)
  assert a.shape == (1000,) and a.dtype == np.float32
  assert np.all(np.diff(a) < 0)
  assert 0.99 < a[0] < 1 and 0 <= a[-1] < 1e-3
  # Fewer steps trace the same curve.
  short = diffusion.noise_schedule(kind, 100)
  assert abs(short[49] - a[499]) < 0.03


def test_unknown_schedule():
  with pytest.raises(ValueError, match="unknown 'quadratic'"):
    diffusion.noise_schedule("quadratic", 10)


def test_q_sample_moments():
  alpha_bar = jnp.asarray(diffusion.noise_schedule("cosine", 1000))
  x0 = jnp.asarray([[0.5, -0.8, 0.1]])
  n, t = 20000, 400
  noise = jax.random.normal(jax.random.key(0), (n, 3))
  x_t = diffusion.q_sample(jnp.broadcast_to(x0, (n, 3)), jnp.full((n,), t), noise, alpha_bar)
  a = float(alpha_bar[t])
  np.testing.assert_allclose(x_t.mean(0), np.sqrt(a) * x0[0], atol=0.02)
  np.testing.assert_allclose(x_t.var(0), 1 - a, rtol=0.05)


def test_ddim_timesteps():
  steps = diffusion.ddim_timesteps(1000, 5)
  np.testing.assert_array_equal(steps, [999, 749, 500, 250, 0])
  assert diffusion.ddim_timesteps(1000, 50, start=3).tolist() == [3, 2, 1, 0]
  with pytest.raises(ValueError, match="outside"):
    diffusion.ddim_timesteps(10, 3, start=10)


def true_eps_fn(x0, alpha_bar):
  """The noise of x_t given that it came from x0: (x_t - sqrt(a) x0) / sqrt(1 - a)."""
  def eps(x, t):
    a = alpha_bar[t].reshape(-1, 1, 1, 1)
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
  return eps


@pytest.mark.parametrize("t0", [999, 300])
def test_ddim_with_the_true_noise_recovers_x0(t0):
  alpha_bar = jnp.asarray(diffusion.noise_schedule("cosine", 1000))
  x0 = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(2), x0.shape)
  out = diffusion.edit(true_eps_fn(x0, alpha_bar), x0, alpha_bar, t0=t0, num_steps=10,
                       noise=noise)
  np.testing.assert_allclose(out, x0, atol=1e-4)


def test_ddim_inversion_then_sampling_returns_the_image():
  alpha_bar = jnp.asarray(diffusion.noise_schedule("cosine", 1000))
  x0 = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), minval=-1, maxval=1)
  steps = diffusion.ddim_timesteps(1000, 10, 400)
  # With the true noise of x0 the inversion lands on the forward-process line of x0 and
  # sampling retraces it exactly.
  eps_fn = true_eps_fn(x0, alpha_bar)
  x_t = diffusion.ddim_invert(eps_fn, x0, steps, alpha_bar)
  a = float(alpha_bar[400])
  eps = (x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)
  np.testing.assert_allclose(eps, eps_fn(x0, jnp.zeros(3, jnp.int32)), atol=1e-4)
  np.testing.assert_allclose(diffusion.ddim_sample(eps_fn, x_t, steps, alpha_bar), x0, atol=1e-4)
  # With a real (here: the Gaussian optimal) denoiser the unguided round trip is close.
  images = 0.5 * jax.random.normal(jax.random.key(2), (8, 4, 4, 1))
  back = diffusion.edit(gaussian_eps_fn(alpha_bar), images, alpha_bar, t0=400, num_steps=50)
  np.testing.assert_allclose(back, images, atol=0.05)


def gaussian_eps_fn(alpha_bar, sd=0.5):
  """The optimal denoiser of data ~ N(0, sd^2 I):
  E[eps | x_t] = sqrt(1 - a) x_t / (a sd^2 + 1 - a)."""
  def eps(x, t):
    a = alpha_bar[t].reshape(-1, 1, 1, 1)
    return jnp.sqrt(1 - a) * x / (a * sd**2 + 1 - a)
  return eps


def test_guidance_increases_the_score_it_follows():
  alpha_bar = jnp.asarray(diffusion.noise_schedule("cosine", 1000))
  images = 0.5 * jax.random.normal(jax.random.key(3), (16, 6, 6, 1))
  noise = jax.random.normal(jax.random.key(4), images.shape)
  eps_fn = gaussian_eps_fn(alpha_bar)
  brightness = lambda x0: x0.mean(axis=(1, 2, 3))
  run = lambda s: diffusion.edit(eps_fn, images, alpha_bar, t0=500, num_steps=10, noise=noise,
                                 score_fn=brightness, scale=s)
  means = [float(brightness(run(s)).mean()) for s in (0.0, 10.0, 40.0)]
  assert means[0] < means[1] < means[2]
  # s = 0 is the unguided round trip.
  unguided = diffusion.edit(eps_fn, images, alpha_bar, t0=500, num_steps=10, noise=noise)
  np.testing.assert_allclose(run(0.0), unguided, atol=1e-6)


def test_project_out_removes_exactly_the_span_of_each_images_directions():
  rng = np.random.default_rng(0)
  grad = jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32)
  directions = jnp.asarray(rng.normal(size=(2, 3, 4, 4, 1)), jnp.float32)
  directions = directions.at[1, 2].set(0.0)  # image 2 holds one reading only
  out = np.asarray(diffusion.project_out(grad, directions)).reshape(3, -1)
  d, g = np.asarray(directions).reshape(2, 3, -1), np.asarray(grad).reshape(3, -1)
  for b in range(3):
    np.testing.assert_allclose(d[:, b] @ out[b], 0.0, atol=1e-4)
    basis = d[:, b][np.abs(d[:, b]).sum(1) > 0]
    expected = g[b] - basis.T @ np.linalg.lstsq(basis.T, g[b], rcond=None)[0]
    np.testing.assert_allclose(out[b], expected, atol=1e-4)


def test_projected_guidance_moves_its_score_and_holds_the_kept_reading():
  alpha_bar = jnp.asarray(diffusion.noise_schedule("cosine", 1000))
  images = 0.5 * jax.random.normal(jax.random.key(3), (16, 6, 6, 1))
  noise = jax.random.normal(jax.random.key(4), images.shape)
  # Two overlapping readings: the left half's and the top half's brightness.
  left = lambda x0: x0[:, :, :3].mean(axis=(1, 2, 3))
  top = lambda x0: x0[:, :3].mean(axis=(1, 2, 3))
  run = lambda s, keep: diffusion.edit(gaussian_eps_fn(alpha_bar), images, alpha_bar, t0=500,
                                       num_steps=10, noise=noise, score_fn=left, scale=s,
                                       keep_fn=keep)
  unguided = run(0.0, None)
  plain, projected = run(20.0, None), run(20.0, lambda x0: top(x0)[:, None])
  change = lambda f, x: float(jnp.abs(f(x) - f(unguided)).mean())
  assert change(left, projected) > 0.05
  assert change(top, plain) > 0.4 * change(left, plain)  # plain guidance drags top along
  assert change(top, projected) < 0.1 * change(top, plain)


def test_guidance_toward_a_critic_target_increases_its_score():
  config = ml_collections.ConfigDict(dict(
      migvis=dict(groups=(2, 1)),
      critic=dict(channels=(8,), hidden=(16,), embed_dim=8, value_hidden=(16,),
                  init_temperature=0.1, min_temperature=0.01)))
  critic = migvis.build_critic(config)
  params = jax.jit(critic.init, static_argnames="train")(
      jax.random.key(0), jnp.zeros((1, 6, 6, 1)), jnp.zeros((1, 3)), train=False)["params"]
  reference = jax.random.normal(jax.random.key(5), (32, 3))
  target = jnp.tile(reference[:1], (16, 1))

  def score(x0):  # group 0's pointwise MI with its target
    return critic.apply({"params": params}, (x0 + 1) / 2, target, reference,
                        method=critic.pointwise_mi)[:, 0]
  alpha_bar = jnp.asarray(diffusion.noise_schedule("cosine", 1000))
  images = 0.5 * jax.random.normal(jax.random.key(6), (16, 6, 6, 1))
  noise = jax.random.normal(jax.random.key(7), images.shape)
  run = lambda s: diffusion.edit(gaussian_eps_fn(alpha_bar), images, alpha_bar, noise=noise,
                                 t0=500, num_steps=10, score_fn=score, scale=s)
  assert float(score(run(2.0)).mean()) > float(score(run(0.0)).mean()) + 0.1


def test_unet_shapes_and_divisibility():
  unet = diffusion.UNet(channels=(8, 16), num_res_blocks=1, time_dim=16)
  x = jnp.zeros((2, 8, 8, 1))
  params = jax.jit(unet.init)(jax.random.key(0), x, jnp.zeros((2,), jnp.int32))["params"]
  apply = jax.jit(lambda x, t: unet.apply({"params": params}, x, t))
  out = apply(x + 0.3, jnp.asarray([0, 999]))
  assert out.shape == (2, 8, 8, 1) and out.dtype == jnp.float32
  # The step matters.
  assert not np.allclose(out[0], apply(x + 0.3, jnp.asarray([999, 0]))[0])
  with pytest.raises(ValueError, match="not divisible by 2"):
    jax.eval_shape(unet.init, jax.random.key(0), jnp.zeros((1, 7, 7, 1)),
                   jnp.zeros((1,), jnp.int32))


def test_diffusion_objective_is_the_epsilon_mse():
  config = ml_collections.ConfigDict(dict(diffusion=dict(
      channels=(8,), num_res_blocks=1, time_dim=16, schedule="linear", num_timesteps=50)))
  unet = diffusion.build_unet(config)
  images = np.random.default_rng(0).integers(0, 256, (4, 4, 4, 1)).astype(np.uint8)
  params = jax.jit(unet.init)(jax.random.key(0), diffusion.to_model_space(images[:1]),
                              jnp.zeros((1,), jnp.int32))["params"]
  objective = jax.jit(diffusion.make_objective(config, unet))
  loss, metrics = objective(params, {"image": images}, jax.random.key(1))
  # Recompute with the same draws.
  r_t, r_noise = jax.random.split(jax.random.key(1))
  t = jax.random.randint(r_t, (4,), 0, 50)
  noise = jax.random.normal(r_noise, images.shape)
  alpha_bar = jnp.asarray(diffusion.noise_schedule("linear", 50))
  x_t = diffusion.q_sample(diffusion.to_model_space(images), t, noise, alpha_bar)
  expected = jnp.mean((jax.jit(unet.apply)({"params": params}, x_t, t) - noise) ** 2)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics["loss"]) == float(loss)
