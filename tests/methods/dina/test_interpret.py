"""DINA interpretation: attribution on toys with known answers, and the `jaxvna interpret`
run end to end on a tiny simulator (the command's dispatch is tested in tests/test_cli.py)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvna.configs import dina_sim
from jaxvna.evaluation import identifiability
from jaxvna.methods.dina import interpret as dina
from jaxvna.training import train


def test_gradient_x_activation_of_a_linear_similarity_is_weight_times_activation():
  rng = np.random.default_rng(0)
  maps = {"a": jnp.asarray(rng.normal(size=(3, 4, 5, 2)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(3, 2, 2, 6)), jnp.float32)}
  partners = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
  wa = rng.normal(size=(4, 5, 2)).astype(np.float32)
  # S = partner_0 * sum(wa * a) + partner_1 * sum(b): linear in each map.
  similarity = lambda m, q: (q[:, 0] * jnp.sum(m["a"] * wa, axis=(1, 2, 3))
                             + q[:, 1] * jnp.sum(m["b"], axis=(1, 2, 3)))
  out = dina.gradient_x_activation(similarity, maps, partners)
  expected_a = np.sum(np.asarray(maps["a"]) * wa, -1) * np.asarray(partners)[:, :1, None]
  np.testing.assert_allclose(out["a"], expected_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["b"], np.sum(maps["b"], -1) * partners[:, 1:, None],
                             rtol=1e-5, atol=1e-6)
  # The maps sum to the similarity (a linear function is its own first-order expansion),
  # and relative to a baseline to the similarity's change from the baseline.
  total = sum(np.sum(v, axis=(1, 2)) for v in out.values())
  np.testing.assert_allclose(total, similarity(maps, partners), rtol=1e-5)
  baselines = {k: v.mean(0) for k, v in maps.items()}
  out = dina.gradient_x_activation(similarity, maps, partners, baselines)
  total = sum(np.sum(v, axis=(1, 2)) for v in out.values())
  at_baseline = similarity({k: jnp.broadcast_to(v, maps[k].shape) for k, v in baselines.items()},
                           partners)
  np.testing.assert_allclose(total, similarity(maps, partners) - at_baseline, rtol=1e-4,
                             atol=1e-5)


def test_upsampling_keeps_each_maps_sum():
  m = jnp.asarray(np.random.default_rng(1).random((2, 4, 4)), jnp.float32)
  up = dina.upsample_map(m, (16, 16))
  assert up.shape == (2, 16, 16)
  np.testing.assert_allclose(up.sum((1, 2)), m.sum((1, 2)), rtol=1e-5)


def test_occlusion_finds_the_region_the_similarity_reads():
  images = np.random.default_rng(2).random((3, 20, 20, 1)).astype(np.float32)
  images[:, 8:12, 4:8] = 1.0          # bright square where the similarity looks
  # S = contrast of the window [8:12, 4:8] against the image mean, scaled by the partner.
  similarity = lambda x, q: q * (x[:, 8:12, 4:8].mean((1, 2, 3)) - x.mean((1, 2, 3)))
  maps = dina.occlusion_map(similarity, images, np.ones(3, np.float32), patch=4, stride=2)
  assert maps.shape == (3, 20, 20)
  window = np.zeros((20, 20), bool)
  window[8:12, 4:8] = True
  for m in maps:
    assert m[window].min() > 0
    # Squares that miss the window lose (almost) nothing: only the global mean moves.
    assert np.abs(m[12 + 4:, 8 + 4:]).max() < 0.1 * m[window].mean()
  masks = dina.occluder_masks((20, 18), 4, 3)
  assert masks.any(0).all() and masks.sum((1, 2)).min() == 16


def test_neuron_scores_of_a_linear_similarity_are_exact():
  rng = np.random.default_rng(3)
  responses = rng.poisson(3.0, (50, 6)).astype(np.float32)
  partners = rng.normal(size=(50,)).astype(np.float32)
  v = np.array([2.0, 0.0, -1.0, 0.5, 0.0, 3.0], np.float32)
  similarity = lambda r, q: (r @ v) * q
  expected = np.mean(np.abs((responses - responses.mean(0)) * v * partners[:, None]), axis=0)
  for scores in (dina.neuron_occlusion_scores(similarity, responses, partners,
                                              neurons_per_call=4),
                 dina.gradient_x_input_scores(similarity, responses, partners, batch_size=16)):
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


def test_key_neurons_are_the_ones_the_model_reads():
  rng = np.random.default_rng(4)
  k, read = 30, np.arange(30) % 3 == 0          # the model reads every third neuron
  images = rng.normal(size=(200, 4)).astype(np.float32)
  mix = rng.normal(size=(4, k)).astype(np.float32)
  responses = (np.exp(0.5 * images @ mix) + rng.poisson(1.0, (200, k))).astype(np.float32)
  w = np.where(read[:, None], 0.1 * rng.normal(size=(k, 4)), 0.0).astype(np.float32)
  # S(r, image) = <tanh(r W), image embedding>: every neuron responds, only some are read.
  similarity = lambda r, q: jnp.sum(jnp.tanh(r @ w) * q, axis=-1)
  partners = images / np.linalg.norm(images, axis=1, keepdims=True)
  for scores in (dina.neuron_occlusion_scores(similarity, responses, partners),
                 dina.gradient_x_input_scores(similarity, responses, partners, batch_size=64)):
    assert scores[~read].max() < 1e-6 < scores[read].min()   # float rounding aside
    assert identifiability.roc_auc(scores, read) == 1.0


def test_ablation_curve_against_random_rankings():
  informative = np.zeros(20, bool)
  informative[:4] = True
  accuracy = lambda keep: keep[informative].mean()   # fraction of informative neurons kept
  curve = dina.ablation_curve(accuracy, {"best": np.arange(20), "worst": np.arange(20)[::-1]},
                              (0.1, 0.2, 1.0), random_rankings=50)
  assert curve["num_kept"] == [2, 4, 20]
  assert curve["accuracy_best"] == [0.5, 1.0, 1.0]
  assert curve["accuracy_worst"] == [0.0, 0.0, 1.0]
  np.testing.assert_allclose(curve["accuracy_random"], [0.1, 0.2, 1.0], atol=0.08)
  responses = np.array([[1.0, 4.0], [3.0, 0.0]], np.float32)
  np.testing.assert_allclose(dina.ablation_fill("mean", responses), [2.0, 2.0])
  np.testing.assert_allclose(dina.ablation_fill("zero", responses), [0.0, 0.0])
  with pytest.raises(ValueError, match="ablation_fill"):
    dina.ablation_fill("median", responses)


def test_frequency_split_and_rf_coverage():
  x = np.full((1, 32, 32, 1), 128, np.uint8)
  x[0, :, ::2] = 192                               # a 2-pixel grating on grey
  low, high = dina.frequency_split(x, sigma=2.0)
  assert np.ptp(low[:, 8:-8, 8:-8]) < 0.01          # the grating is gone from the low pass
  np.testing.assert_allclose(high.mean(), x.mean() / 255, atol=1e-3)
  assert np.ptp(high) > 0.2                        # and kept in the high pass
  rf = np.random.default_rng(4).normal(size=(5, 8, 8))
  rf /= np.linalg.norm(rf.reshape(5, -1), axis=1)[:, None, None]
  coverage = dina.rf_coverage(rf, np.array([True, True, False, True, False]))
  assert coverage.sum() == pytest.approx(1.0, rel=1e-5)
  np.testing.assert_allclose(coverage, np.mean(rf[[0, 1, 3]] ** 2, axis=0), rtol=1e-5)


def test_interpret_end_to_end(tmp_path):
  config = dina_sim.get_config("tiny")
  assert config.interpret.probe_sigma == pytest.approx(32 / 24)   # follows the image size
  dina.run(config, tmp_path)
  r = json.loads((tmp_path / "interpret.json").read_text())
  # Regression floors: value measured at seed 0 on 2 CPU cores (8 fake devices), the
  # untrained model's (1 training step), and the margin below the measured value.
  # spatial_rf_corr: measured 0.397, untrained -0.189, chance 0; margin 0.097 (24%).
  assert 0.30 < r["spatial_rf_corr"] <= 1
  # Occlusion maps: measured 0.351 (subjects 0.085 and 0.618), untrained 0.202; margin 0.1.
  assert 0.25 < r["spatial_rf_corr_occlusion"] <= 1
  # key_neuron_auc (occlusion): measured 0.919, chance 0.5; margin 0.1 (24%). The
  # untrained model scores 0.934 (responsive neurons vary, the others hardly): this floor
  # catches a broken or inverted ranking; the ablation below, that the model reads them.
  assert 0.82 < r["key_neuron_auc"] <= 1
  assert set(r["spatial_rf_corr_per_level"]) == {"level2", "level3"}
  ablation = r["ablation"]
  assert len(ablation["accuracy_top_ranked"]) == len(ablation["fractions"])
  assert ablation["accuracy_top_ranked"][-1] == ablation["accuracy_random"][-1]
  # Keeping the top-ranked 30% of neurons keeps 10-way decoding at 0.196, random 30% at
  # 0.108 (untrained: 0.105 and 0.102): a 0.088 difference; margin 0.038.
  at = ablation["fractions"].index(0.3)
  assert ablation["accuracy_top_ranked"][at] > ablation["accuracy_random"][at] + 0.05
  probe = r["frequency_probe"]
  # 10-way, chance 0.1: measured 0.2165, untrained 0.102; margin 0.0265 (23%).
  assert probe["unfiltered"] > 0.19
  assert all(0 <= probe[k] <= 1 for k in ("low_pass", "high_pass"))
  subject = r["per_subject"]["subject0"]
  assert sorted(subject["key_neuron_ranking"]) == list(range(60))
  maps = np.load(tmp_path / "interpret_maps.npz")
  assert maps["subject1/gradient_x_activation"].shape == (32, 32)
  assert maps["subject1/rf_coverage"].sum() == pytest.approx(1.0, rel=1e-4)
  for name in r["files"]:
    assert (tmp_path / name).exists()
  # The same workdir is a finished DINA run: `jaxvna eval` reports results.dina.
  results = train.evaluate_workdir(config, tmp_path)["results"]["dina"]
  assert results["decoding"]["10"]["top1"] == pytest.approx(probe["unfiltered"], abs=0.05)
  # 10-way, chance 0.1: measured 0.206; margin 0.026 (24%).
  assert results["encoding"]["10"]["top1"] > 0.18
