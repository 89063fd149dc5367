"""Tests of the ground-truth simulator: structure, determinism and the biology it claims."""

import sys
import time

import numpy as np
import pytest

from jaxvna.data import simulator as sim
from jaxvna.data.dataset import SPLITS, validate_recording

SMALL = dict(seed=1, num_subjects=2, num_images=400, image_size=32,
             neurons_per_subject=(40, 30), repeats=(1, 3, 7))


@pytest.fixture(scope="module")
def small():
  return sim.simulate_with_model(**SMALL)


@pytest.fixture(scope="module")
def reverse_correlation():
  """Many small images, V1 cells only: enough data to estimate linear RFs."""
  return sim.simulate_with_model(seed=3, num_subjects=1, num_images=4000, image_size=32,
                                 neurons_per_subject=30, cell_type_fractions=(1, 1, 0, 0),
                                 subject_train_fraction=1.0)


def grating(size, center, orientation, spatial_frequency, phase, contrast):
  """(size, size) pixel values on the 0-255 scale, carrier phase measured at `center`."""
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
  along = (cols - center[1]) * np.cos(orientation) + (rows - center[0]) * np.sin(orientation)
  return 127.5 * (1 + contrast * np.cos(2 * np.pi * spatial_frequency * along + phase))


def preferred_gratings(truth, neuron, size, phases=(0.0,), contrasts=(0.5,)):
  return np.stack([grating(size, truth["rf_center"][neuron], truth["orientation"][neuron],
                           truth["spatial_frequency"][neuron], truth["phase"][neuron] + p, c)
                   for c in contrasts for p in phases])


def test_default_call_shapes_dtypes_and_time():
  start = time.perf_counter()
  ds = sim.simulate()
  elapsed = time.perf_counter() - start
  print(f"default simulate(): {elapsed:.2f} s")
  assert ds.neuron_counts == (300, 250, 200)
  assert ds.image_shape == (64, 64, 1)
  for rec in ds.recordings:
    validate_recording(rec)
    n, r, k = rec.responses.shape
    assert rec.images.dtype == np.uint8 and rec.num_images > 3000
    assert rec.neuron_coords.shape == (k, 2) and rec.split.dtype == np.int8
    t = rec.truth
    assert t["rf"].shape == (k, 64, 64) and t["rf"].dtype == np.float32
    assert t["rates"].shape == (n, k) and t["rates"].dtype == np.float32
    assert t["gain"].shape == (n, r) and t["latents"].shape == (n, 8)
    assert t["image_factors"].shape == (n, len(sim.IMAGE_FACTORS))
    for key in ("orientation", "spatial_frequency", "phase", "sigma", "cell_type",
                "responsive"):
      assert t[key].shape == (k,)
    assert t["rf_center"].shape == (k, 2) and t["responsive"].dtype == bool
    for key, value in t.items():
      assert value.dtype in (np.float32, np.int8, np.bool_), key
    # Every cell type is present and the latents are whitened over the pool.
    assert set(np.unique(t["cell_type"])) == set(range(len(sim.CELL_TYPES)))
    assert np.allclose(np.cov(t["latents"], rowvar=False), np.eye(8), atol=0.15)
  # Photographs are mixed in (scikit-image is installed in the test environment).
  photo = ds.recordings[0].truth["image_factors"][:, sim.IMAGE_FACTORS.index("photo")]
  assert 0.15 < photo.mean() < 0.35


def test_deterministic_given_seed_and_different_across_seeds(small):
  ds, _ = small
  again = sim.simulate(**SMALL)
  other = sim.simulate(**{**SMALL, "seed": 2})
  for a, b, c in zip(ds.recordings, again.recordings, other.recordings):
    for field in ("images", "responses", "neuron_coords", "split", "stimulus_ids"):
      assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert a.truth.keys() == b.truth.keys()
    for key in a.truth:
      assert np.array_equal(a.truth[key], b.truth[key], equal_nan=True), key
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.truth["rates"], c.truth["rates"])


def test_test_images_shared_and_train_images_partly_different(small):
  ds, _ = small
  a, b = ds.recordings
  test = SPLITS.index("test")
  assert np.array_equal(a.stimulus_ids[a.split == test], b.stimulus_ids[b.split == test])
  assert np.array_equal(a.images[a.split == test], b.images[b.split == test])
  # The same stimulus id means the same image in every recording.
  common, ia, ib = np.intersect1d(a.stimulus_ids, b.stimulus_ids, return_indices=True)
  assert np.array_equal(a.images[ia], b.images[ib])
  train_a = set(a.stimulus_ids[a.split == 0].tolist())
  train_b = set(b.stimulus_ids[b.split == 0].tolist())
  assert train_a != train_b and len(train_a & train_b) > 0
  assert len(common) < min(a.num_images, b.num_images)


def test_repeats_have_the_configured_counts(small):
  ds, _ = small
  for rec in ds.recordings:
    assert rec.responses.shape[1] == 7
    for split, count in zip(SPLITS, SMALL["repeats"]):
      idx = rec.indices(split)
      assert idx.size > 0
      assert np.all(rec.num_repeats[idx] == count), split
      gain = rec.truth["gain"][idx]
      assert np.all(np.isfinite(gain[:, :count])) and np.all(np.isnan(gain[:, count:]))


def test_responses_follow_rates_times_gain(small):
  ds, _ = small
  rec = ds.recordings[0]
  # Poisson counts: non-negative integers whose mean matches gain * rate.
  resp = rec.responses[~np.isnan(rec.responses)]
  assert np.all(resp >= 0) and np.all(resp == np.round(resp))
  expected = np.nanmean(rec.truth["gain"][:, :, None] * rec.truth["rates"][:, None, :])
  assert np.nanmean(rec.responses) == pytest.approx(expected, rel=0.05)
  gamma = sim.simulate(**{**SMALL, "noise": "gamma", "fano_factor": 0.5}).recordings[0]
  values = gamma.responses[~np.isnan(gamma.responses)]
  assert np.any(values != np.round(values))
  assert np.nanmean(gamma.responses) == pytest.approx(expected, rel=0.05)


def test_reverse_correlation_recovers_simple_cell_receptive_fields(reverse_correlation):
  ds, _ = reverse_correlation
  rec = ds.recordings[0]
  pixels = rec.images[..., 0].reshape(rec.num_images, -1).astype(np.float64) / 255
  pixels -= pixels.mean(axis=0)
  responses = rec.mean_responses - rec.mean_responses.mean(axis=0)  # noisy responses
  gram = pixels.T @ pixels
  ridge = np.trace(gram) / gram.shape[0]
  weights = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), pixels.T @ responses)
  truth = rec.truth["rf"].reshape(rec.num_neurons, -1)
  corr = np.array([np.corrcoef(weights[:, k], truth[k])[0, 1] for k in range(rec.num_neurons)])
  simple = rec.truth["cell_type"] == sim.SIMPLE
  assert simple.sum() >= 10
  assert np.all(corr[simple] > 0.5), corr[simple]
  # Complex cells have no linear receptive field to recover.
  assert np.median(np.abs(corr[~simple])) < 0.2


def test_complex_cells_are_phase_invariant_and_simple_cells_are_not(small):
  ds, model = small
  truth = ds.recordings[0].truth
  phases = np.linspace(0, 2 * np.pi, 12, endpoint=False)
  modulation = {}
  for cell_type in (sim.SIMPLE, sim.COMPLEX):
    values = []
    for k in np.flatnonzero(truth["cell_type"] == cell_type):
      rates = model.rates(0, preferred_gratings(truth, k, 32, phases=phases))[:, k]
      driven = rates - model.populations[0].baseline[k]
      values.append((driven.max() - driven.min()) / driven.mean())
    modulation[cell_type] = np.array(values)
  assert np.all(modulation[sim.COMPLEX] < 0.15), modulation[sim.COMPLEX]
  assert np.all(modulation[sim.SIMPLE] > 1.0), modulation[sim.SIMPLE]


def test_divisive_normalisation_saturates_contrast_response(small):
  ds, model = small
  _, unnormalised = sim.simulate_with_model(**{**SMALL, "normalization": False})
  truth = ds.recordings[0].truth
  v1 = np.flatnonzero(np.isin(truth["cell_type"], (sim.SIMPLE, sim.COMPLEX)))
  ratios = {}
  for label, m in (("normalised", model), ("unnormalised", unnormalised)):
    values = []
    for k in v1:
      rates = m.rates(0, preferred_gratings(truth, k, 32, contrasts=(0.4, 0.8)))[:, k]
      driven = rates - m.populations[0].baseline[k]
      values.append(driven[1] / driven[0])
    ratios[label] = np.array(values)
  # Without normalisation drive ~ contrast^2 and rate ~ drive^power, so doubling the
  # contrast multiplies the driven rate by 4^power; normalisation saturates it.
  power = model.populations[0].output_power
  assert np.allclose(ratios["unnormalised"], 4.0**power, rtol=1e-3)
  assert np.all(ratios["normalised"] < 0.6 * ratios["unnormalised"]), ratios["normalised"]


def test_nonresponsive_neurons_have_no_stimulus_dependence(small):
  ds, model = small
  rec = ds.recordings[0]
  silent = ~rec.truth["responsive"]
  assert silent.sum() >= 2
  assert np.all(rec.truth["rf"][silent] == 0)
  rates = model.rates(0, rec.images[:50])
  assert np.all(rates[:, silent] == rates[0, silent])
  assert np.all(rec.truth["rates"][:, silent] == rec.truth["rates"][0, silent])
  responsive_std = rec.truth["rates"][:, ~silent].std(axis=0)
  assert np.all(responsive_std > 0)


def test_higher_cells_are_driven_by_the_latent_factors(small):
  ds, _ = small
  t = ds.recordings[0].truth
  higher = np.flatnonzero(t["cell_type"] == sim.HIGHER)
  assert higher.size >= 5
  for k in higher:
    drive = t["latents"] @ t["latent_weights"][k]
    # The rate is a monotonic function of the weighted latents.
    order = np.argsort(drive)
    assert np.all(np.diff(t["rates"][order, k]) >= -1e-5)
  assert np.all(t["latent_weights"][t["cell_type"] != sim.HIGHER] == 0)
  assert np.all(np.isfinite(t["rf_center"][higher]))
  assert np.all(np.linalg.norm(t["rf"][higher].reshape(higher.size, -1), axis=1) > 0.99)


def test_latent_receptive_fields_are_the_latent_gradients(small):
  ds, model = small
  rf = ds.recordings[0].truth["latent_rf"]
  size = ds.image_shape[0]
  assert rf.shape == (model.latent_network.num_latents, size, size)
  np.testing.assert_allclose(np.linalg.norm(rf.reshape(len(rf), -1), axis=1), 1.0, rtol=1e-5)
  for rec in ds.recordings[1:]:
    np.testing.assert_array_equal(rec.truth["latent_rf"], rf)
  # A latent's gradient at one image lies within its RMS receptive field's support.
  jac = sim.latent_jacobian(model.latent_network, ds.recordings[0].images[:1])[0]
  assert np.all((np.abs(jac) > 1e-6) <= (rf > 0))


def test_v1_cortical_coordinates_are_retinotopic(small):
  ds, _ = small
  rec = ds.recordings[0]
  v1 = np.isin(rec.truth["cell_type"], (sim.SIMPLE, sim.COMPLEX))
  for axis in range(2):
    corr = np.corrcoef(rec.neuron_coords[v1, axis], rec.truth["rf_center"][v1, axis])[0, 1]
    assert corr > 0.8


def test_dead_leaves_only_without_scikit_image(monkeypatch):
  monkeypatch.setitem(sys.modules, "skimage", None)  # makes `import skimage.data` fail
  images, factors = sim.make_image_pool(np.random.default_rng(0), 50, 32, photo_fraction=0.9)
  assert images.shape == (50, 32, 32) and images.dtype == np.uint8
  assert np.all(factors[:, sim.IMAGE_FACTORS.index("photo")] == 0)
  assert np.all(np.isfinite(factors))


@pytest.mark.parametrize("override, message", [
    (dict(neurons_per_subject=(10, 10)), "neurons_per_subject"),
    (dict(repeats=(1, 0, 3)), "repeats"),
    (dict(noise="laplace"), "noise"),
    (dict(image_size=8), "image_size"),
    (dict(cell_type_fractions=(1, 1)), "cell_type_fractions"),
    (dict(split_fractions=(0.8, 0.1)), "split_fractions"),
])
def test_bad_configuration_is_rejected(override, message):
  config = dict(num_subjects=3, num_images=100, image_size=32, neurons_per_subject=10)
  with pytest.raises(ValueError, match=message):
    sim.simulate(**{**config, **override})
