"""The evaluation driver: scoring of representations and the subject summary."""

import json

import ml_collections
import numpy as np
import pytest

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


def test_infonce_bound_spans_nothing_to_log_batch_size():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 32))
  perfect = discriminative.infonce_bound(x, x, 0.01, batch_size=50)
  y = rng.normal(size=(200, 32))
  unrelated = discriminative.infonce_bound(x, y, 1.0, batch_size=50)
  assert perfect["batch_size"] == 50 and perfect["batches"] == 40
  assert perfect["bound_nats"] == pytest.approx(np.log(50), abs=1e-3)  # every pair found
  assert abs(unrelated["bound_nats"]) < 0.05  # nothing learned
  # A confident temperature on unrelated pairs costs more than log(B): the bound is < 0.
  assert discriminative.infonce_bound(x, y, 0.1, batch_size=50)["bound_nats"] < -0.5
  # B is capped at the number of held-out pairs.
  assert discriminative.infonce_bound(x[:20], x[:20], 0.1, batch_size=64)["batch_size"] == 20


def _per_subject(similarity_of_subject):
  per_subject = {f"s{i}": {task: ident_report(sim) for task, sim in (
      ("decoding", s), ("encoding", s.T))} for i, s in enumerate(similarity_of_subject)}
  return dict(discriminative.combine_subjects(per_subject), per_subject=per_subject)


def ident_report(similarity):
  from jaxvna.evaluation import identification
  return identification.identification_report(similarity, n_ways=(2, 10, "all"), draws=50)


def test_chance_check_passes_noise_and_flags_signal():
  rng = np.random.default_rng(0)
  noise = _per_subject([rng.normal(size=(300, 300)) for _ in range(2)])
  check = discriminative.chance_check(noise)
  assert check["at_chance"] and set(check["decoding"]) == {"2", "10"}  # "all" not checked
  lo, hi = check["decoding"]["10"]["band"]
  assert lo < 0.1 < hi and hi - 0.1 < 0.03
  # A weak signal (10-way top-1 about 0.2) is off chance.
  weak = _per_subject([rng.normal(size=(300, 300)) + 0.6 * np.eye(300) for _ in range(2)])
  weak_check = discriminative.chance_check(weak)
  assert not weak_check["decoding"]["10"]["at_chance"]
  assert discriminative.off_chance(check) == []
  assert ("decoding", "10") in discriminative.off_chance(weak_check)
  assert set(discriminative.off_chance(weak_check)) == {
      (task, n) for task in ("decoding", "encoding") for n in ("2", "10")
      if not weak_check[task][n]["at_chance"]}


def _member(image_repr, response_repr, metric):
  def represent(held_out, trials, subject, k_max):
    return dict(image_repr=image_repr, mean_repr=response_repr, trial_repr=response_repr,
                metric=metric, temperature=0.1)
  return represent


def test_an_ensemble_cosine_is_the_mean_of_its_members_cosines():
  rng = np.random.default_rng(3)
  members = [(rng.normal(size=(12, d)), rng.normal(size=(12, d))) for d in (5, 8, 3)]
  out = discriminative.ensemble_represent([_member(x, y, "cosine") for x, y in members])(
      None, None, 0, 0)
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  want = np.mean([unit(x) @ unit(y).T for x, y in members], axis=0)
  got = unit(out["image_repr"]) @ unit(out["mean_repr"]).T
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert out["image_repr"].shape == (12, 16) and "temperature" not in out
  single = discriminative.ensemble_represent([_member(*members[0], "cosine")])(None, None, 0, 0)
  np.testing.assert_allclose(unit(single["image_repr"]) @ unit(single["mean_repr"]).T,
                             unit(members[0][0]) @ unit(members[0][1]).T, atol=1e-5)


def test_an_ensemble_of_predictions_averages_them_and_refuses_mixed_similarities():
  rng = np.random.default_rng(4)
  a, b, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  out = discriminative.ensemble_represent([_member(a, y, "pearson"), _member(b, y, "pearson")])(
      None, None, 0, 0)
  np.testing.assert_allclose(out["image_repr"], (a + b) / 2, atol=1e-6)
  np.testing.assert_allclose(out["mean_repr"], y, atol=1e-6)
  with pytest.raises(ValueError, match="different similarities"):
    discriminative.ensemble_represent([_member(a, y, "pearson"), _member(b, y, "cosine")])(
        None, None, 0, 0)


def test_paired_comparison_from_the_stored_query_ranks():
  rng = np.random.default_rng(5)
  images = rng.normal(size=(80, 16))
  good = discriminative.score_representations(
      _reprs(images, images + 0.8 * rng.normal(size=images.shape)), EVAL)
  poor = discriminative.score_representations(
      _reprs(images, images + 3.0 * rng.normal(size=images.shape)), EVAL)
  # The ranks survive a JSON round trip and are not averaged across subjects.
  good, poor = json.loads(json.dumps(good)), json.loads(json.dumps(poor))
  assert len(good["query_ranks"]["decoding"]["greater"]) == 80
  a = dict(discriminative.combine_subjects({"s": good}), per_subject={"s": good})
  b = dict(discriminative.combine_subjects({"s": poor}), per_subject={"s": poor})
  assert "query_ranks" not in a
  out = discriminative.paired_comparison(a, b, "decoding", "10")
  # The exact expectation sits within the draws' noise of the drawn report.
  drawn = good["decoding"]["10"]["top1"] - poor["decoding"]["10"]["top1"]
  assert out["difference"] == pytest.approx(drawn, abs=0.05)
  assert out["ci95"][0] > 0
  reverse = discriminative.paired_comparison(b, a, "decoding", "10")
  assert reverse["difference"] == pytest.approx(-out["difference"])
  del b["per_subject"]["s"]["query_ranks"]
  with pytest.raises(ValueError, match="query_ranks"):
    discriminative.paired_comparison(a, b, "decoding", "10")
