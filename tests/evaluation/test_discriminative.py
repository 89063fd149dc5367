"""The evaluation driver: scoring of representations and the subject summary."""

import ml_collections
import numpy as np

from jaxvna.evaluation import discriminative

EVAL = ml_collections.ConfigDict(dict(n_ways=(2, 10), draws=20, seed=0))


def _reprs(image_repr, mean_repr, trials_per_image=2, noise=0.0, seed=0):
  rng = np.random.default_rng(seed)
  trial_images = np.repeat(np.arange(len(mean_repr)), trials_per_image)
  trials = mean_repr[trial_images] + noise * rng.normal(size=(len(trial_images),
                                                               mean_repr.shape[1]))
  return dict(image_repr=image_repr, mean_repr=mean_repr, trial_repr=trials,
              trial_images=trial_images, metric="cosine")


def test_identical_representations_are_identified_perfectly():
  x = np.random.default_rng(0).normal(size=(40, 16))
  report = discriminative.score_representations(_reprs(x, x), EVAL)
  for task in ("decoding", "encoding"):
    assert report[task]["10"]["top1"] == 1.0
    assert report["single_trial"][task]["10"]["top1"] == 1.0


def test_unrelated_representations_score_chance():
  rng = np.random.default_rng(1)
  report = discriminative.score_representations(
      _reprs(rng.normal(size=(300, 16)), rng.normal(size=(300, 16))), EVAL)
  lo, hi = report["decoding"]["10"]["top1_ci95"]
  assert lo - 0.03 <= 0.1 <= hi + 0.03


def test_combine_subjects_averages_numbers_and_keeps_labels():
  a = {"decoding": {"2": {"top1": 0.8, "top1_ci95": [0.7, 0.9], "n_way": 2}}}
  b = {"decoding": {"2": {"top1": 0.6, "top1_ci95": [0.5, 0.7], "n_way": 2}}}
  out = discriminative.combine_subjects({"s0": a, "s1": b})
  np.testing.assert_allclose(out["decoding"]["2"]["top1"], 0.7)
  np.testing.assert_allclose(out["decoding"]["2"]["top1_ci95"], [0.6, 0.8])
  labels = discriminative.combine_subjects({"s0": {"n": "all"}, "s1": {"n": "all"}})
  assert labels == {"n": "all"}


def test_predictivity_is_reported_for_encoding_models():
  rng = np.random.default_rng(2)
  rates = rng.gamma(2.0, size=(30, 5))
  responses = rng.poisson(rates[:, None, :].repeat(4, axis=1)).astype(np.float32)
  reprs = dict(_reprs(rates, responses.mean(1)), metric="pearson",
               predictivity=discriminative.predictivity.predictivity_report(rates, responses))
  report = discriminative.score_representations(reprs, EVAL)
  assert report["predictivity"]["correlation_to_average"] > 0.5
  combined = discriminative.combine_subjects({"a": report, "b": report})
  assert combined["predictivity"] == report["predictivity"]
