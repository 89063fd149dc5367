"""miVAE end to end on a tiny simulator: results.mivae, zero-shot subjects, truth scores,
figures; the held-out ELBO improves with 4x the training data; bad input."""

import json

import jax
import numpy as np
import pytest

from jaxvna import errors
from jaxvna.configs import mivae_sim
from jaxvna.data import DataError, readers
from jaxvna.methods.mivae import neuron_features
from jaxvna.methods.mivae import evaluation as mivae_evaluation
from jaxvna.training import train

def tiny_config(steps=150):
  c = mivae_sim.get_config("tiny")
  c.train.steps = steps
  return c


@pytest.fixture(scope="module")
def dataset():
  return readers.load("simulator", **mivae_sim.get_config("tiny").data.kwargs)


def test_train_reports_mivae_results(tmp_path, dataset):
  # 600 steps, not 150: at 150 the truth scores do not beat an untrained model (mcc 0.49
  # vs 0.58 after 1 step, rf_corr 0.05), so no floor could catch a regression; the extra
  # steps cost ~5 s (compilation dominates).
  config = tiny_config(steps=600)
  config.eval.null_control = True
  out = train.train_and_evaluate(config, tmp_path, dataset=dataset)
  r = out["results"]["mivae"]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["results"]["mivae"]["mcc"] == pytest.approx(r["mcc"])
  # Trained on subjects 0 and 1 only; subject2 is embedded zero-shot.
  assert set(r["per_subject"]) == {"subject0", "subject1", "subject2"}
  assert json.loads((tmp_path / "summary.json").read_text())["steps"] == config.train.steps
  for task in ("decoding", "encoding"):            # above chance (0.1), CI included
    assert r[task]["10"]["top1_ci95"][0] > 0.1
    assert r["zero_shot"][task]["10"]["top1_ci95"][0] > 0.1
  # Regression floors: value measured at seed 0 on 2 CPU cores (8 fake devices; 1 device
  # gives the same), the untrained model's (1 step), and the margin below the measured
  # value. A floor above the untrained value also fails when training stops helping.
  # Zero-shot ratio: measured 0.961; a zero-shot embedding at chance (0.1) over the
  # within-subject 10-way top-1 (0.235) gives 0.43; margin 0.16 (30% of the distance).
  assert 0.80 < r["zero_shot_ratio"] < 2
  low, high = r["zero_shot_ratio_ci95"]
  assert low < r["zero_shot_ratio"] < high and high - low < 1
  # MCC of z_x^c: measured 0.700, untrained 0.577 (a random projection of responses
  # driven by 3 latents already correlates with them); margin 0.04.
  assert 0.66 < r["mcc"] <= 1
  assert 0.68 < r["mcc_zero_shot"] <= 1       # measured 0.722, untrained 0.590; margin 0.04
  assert 0.30 < r["mcc_image"] <= 1           # measured 0.361, untrained 0.133; margin 0.06
  # rf_corr: measured 0.635, untrained -0.128, chance 0; margin 0.135 (21%).
  assert 0.50 < r["rf_corr"] <= 1
  # responsive_auc: measured 0.966, chance 0.5; margin 0.066 (14%). An untrained encoder
  # scores 0.953 too (responsive neurons vary more), so this guards against a broken or
  # inverted attribution, not against a model that stopped learning.
  assert 0.90 < r["responsive_auc"] <= 1
  # Held-out ELBO per neuron and trial: measured -2.051, untrained -4.156; margin 0.35 (17%).
  assert -2.4 < r["held_out_elbo"] < 0
  assert sum(r["neuron_groups"]) == 60 + 50
  assert (tmp_path / "mivae_pixel_maps.png").exists()
  assert (tmp_path / "mivae_neuron_groups.png").exists()
  # Null controls (measured: pairs shuffled 10-way decoding 0.081, neurons shuffled
  # zero-shot 0.065 / 0.081, both inside chance's 99% band). Pairs shuffled: every subject
  # at chance. Neurons shuffled: only the held-out subject must be, and the training
  # subjects still identify above chance (measured 0.154, CI low 0.124): the control
  # removes what zero-shot needs, the neurons' identities, not the training signal.
  pairs, neurons = r["null_control"]["chance_check"], r["null_neurons"]["chance_check"]
  assert pairs["subjects"] == ["subject0", "subject1", "subject2"] and pairs["at_chance"]
  assert neurons["subjects"] == ["subject2"] and neurons["at_chance"]
  assert r["null_neurons"]["decoding"]["10"]["top1_ci95"][0] > 0.1
  assert (tmp_path / "null_neurons" / "checkpoints").is_dir()
  # `jaxvna eval` re-evaluates the checkpoints (the run's and its controls') to the same
  # numbers.
  again = train.evaluate_workdir(config, tmp_path)["results"]["mivae"]
  assert again["mcc"] == pytest.approx(r["mcc"], abs=1e-6)
  assert again["zero_shot_ratio"] == pytest.approx(r["zero_shot_ratio"], abs=1e-6)
  assert again["null_neurons"]["zero_shot"] == r["null_neurons"]["zero_shot"]


def test_null_controls_can_be_chosen_by_name(tmp_path, dataset):
  """`run_null_controls(only=...)` trains the named controls alone (what
  `benchmarks/null_spread.py --controls` uses); an unknown name is one clear error that
  lists the method's controls, before anything is written."""
  with pytest.raises(errors.UserError, match="null_shuffled.*null_control, null_neurons"):
    train.run_null_controls(tiny_config(steps=5), dataset, tmp_path, only=["null_shuffled"])
  assert not any(tmp_path.iterdir())
  out = train.run_null_controls(tiny_config(steps=5), dataset, tmp_path, only=["null_neurons"])
  assert list(out) == ["null_neurons"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["null_neurons"]


def test_neuron_null_control_shuffles_the_same_way_in_training_and_evaluation(dataset):
  config = tiny_config()
  config.mivae.shuffle_neurons = True
  trained_on = train.training_dataset(config, dataset)
  names = [rec.name for rec in trained_on.recordings]
  in_training = train.prepare(config, trained_on)
  in_evaluation = mivae_evaluation.neuron_table(config, dataset, names)
  k = in_training["features"].shape[1]
  np.testing.assert_array_equal(in_evaluation["features"][:2, :k], in_training["features"])
  config.mivae.shuffle_neurons = False
  true = mivae_evaluation.neuron_table(config, dataset, names)
  # Standardisation stays with each neuron's own responses; only identities move, within
  # the training pool and within the held-out pool.
  np.testing.assert_array_equal(in_evaluation["center"], true["center"])
  moved = ~np.all(in_evaluation["features"] == true["features"], axis=-1)
  mask = true["mask"]
  assert moved[:2][mask[:2]].mean() > 0.9 and moved[2][mask[2]].mean() > 0.9
  pooled = lambda t, rows: np.sort(t["features"][rows][t["mask"][rows]], axis=0)
  np.testing.assert_array_equal(pooled(in_evaluation, slice(0, 2)), pooled(true, slice(0, 2)))
  np.testing.assert_array_equal(pooled(in_evaluation, 2), pooled(true, 2))


def test_held_out_elbo_improves_with_four_times_the_data(tmp_path, dataset):
  elbos = {}
  for fraction in (0.25, 1.0):
    config = tiny_config(steps=300)
    config.mivae.elbo_weight = 1.0   # the generative model's fit is what is measured here
    config.data.train_fraction = fraction
    trained_on = train.training_dataset(config, dataset)
    model, params, _ = train.train(config, tmp_path / str(fraction), dataset=trained_on)
    table = train.prepare(config, trained_on)
    elbos[fraction] = mivae_evaluation.held_out_elbo(config, model, params, trained_on, table)
  assert elbos[1.0] > elbos[0.25]


def test_unknown_or_all_held_out_subjects_are_refused(dataset):
  config = tiny_config()
  config.mivae.holdout_subjects = ("subject9",)
  with pytest.raises(ValueError, match=r"\['subject9'\] are not recordings"):
    mivae_evaluation.split_subjects(config, dataset)
  config.mivae.holdout_subjects = ("subject0", "subject1", "subject2")
  with pytest.raises(ValueError, match="every subject is held out"):
    mivae_evaluation.split_subjects(config, dataset)


def test_held_out_subject_with_another_feature_dimension_is_refused(dataset):
  config = tiny_config(steps=1)
  trained_on = train.training_dataset(config, dataset)
  model = train.make_model(config, trained_on)
  # The check reads the parameters' shapes only: abstract ones (no initialisation run).
  params = jax.eval_shape(lambda: train.init_state(config, model, train.make_optimizer(config),
                                                   trained_on)).params
  table = neuron_features.neuron_table(dataset, ("tuning",), features=[
      np.ones((rec.num_neurons, 5), np.float32) for rec in dataset.recordings])
  with pytest.raises(DataError, match="dimension 5; the model was trained with 100"):
    mivae_evaluation.Encoders(model, params, table)


def test_the_zero_shot_ratio_interval_covers_the_image_sampling():
  rng = np.random.default_rng(0)

  def subject(signal):
    x = rng.normal(size=(60, 8))
    y = signal * x + rng.normal(size=(60, 8))
    return dict(mean_repr=y, image_repr=x, metric="cosine")
  good = {"a": subject(2.0), "b": subject(2.0), "c": subject(2.0)}
  low, high = mivae_evaluation.ratio_ci(good, ["c"], ["a", "b"], 10, replicates=500)
  assert low < 1 < high and high - low < 0.6
  unrelated = dict(good, c=subject(0.0))  # the held-out subject at chance
  low, high = mivae_evaluation.ratio_ci(unrelated, ["c"], ["a", "b"], 10, replicates=500)
  assert high < 0.5
  assert mivae_evaluation.ratio_ci(unrelated, ["c"], ["a", "b"], 10, replicates=500) == [low, high]


def _ranks_run(greater: dict[str, list[int]]) -> dict:
  """miVAE results whose sessions hold only query ranks (`greater` repeated 4 times: 40
  queries of 10 candidates; at N = 10 a query succeeds exactly when no candidate scores
  above it), the same for both tasks."""
  ranks = lambda g: {"greater": g * 4, "ties": [0] * 4 * len(g), "num_candidates": 10}
  return {"per_subject": {name: {"query_ranks": {"decoding": ranks(g), "encoding": ranks(g)}}
                          for name, g in greater.items()}}


def test_same_session_ratio_divides_by_the_same_sessions_trained_in():
  zero_shot = _ranks_run({"a": [0] * 5 + [1] * 5, "b": [0] * 8 + [2] * 2, "c": [0] * 10})
  trained_in = _ranks_run({"a": [0] * 10, "b": [0] * 4 + [3] * 6, "c": [5] * 10})
  out = mivae_evaluation.same_session_ratio(zero_shot, trained_in, ["a", "b"])
  assert out["sessions"]["a"] == {"zero_shot": 0.5, "trained_in": 1.0, "ratio": 0.5}
  assert out["sessions"]["b"]["ratio"] == pytest.approx(2.0)
  assert out["ratio"] == pytest.approx(0.65 / 0.7)  # means over sessions, then the ratio
  lo, hi = out["ratio_ci95"]
  assert lo < out["ratio"] < hi and hi - lo < 0.4
  table = mivae_evaluation.same_session_table(out).splitlines()
  assert table[2] == "| a | 0.500 | 1.000 | 0.500 |" and table[-1].startswith("| all | 0.650 |")
  del trained_in["per_subject"]["b"]["query_ranks"]
  with pytest.raises(ValueError, match="b.query_ranks: missing"):
    mivae_evaluation.same_session_ratio(zero_shot, trained_in, ["a", "b"])



class _OffsetEncoders:
  """An `Encoders` stand-in: fixed random embeddings, each modality shifted by `offset`
  (a vector common to all its items, like the mean that miVAE's KL term gives both)."""

  def __init__(self, offset):
    self.offset = offset

  def _embed(self, x, seed):
    rng = np.random.default_rng(seed + len(x))
    return rng.normal(size=(len(x), 16)) + self.offset[seed]

  def images(self, images):
    return self._embed(images, 0)

  def responses(self, responses, subject):
    return self._embed(responses, 1)


def test_representations_are_centred_so_a_shared_offset_cannot_score(dataset):
  from jaxvna.evaluation import discriminative
  rec, config = dataset.recordings[0], tiny_config()
  plain = mivae_evaluation.subject_representations(_OffsetEncoders(np.zeros((2, 16))), rec, 0,
                                                   "test")
  shifted = mivae_evaluation.subject_representations(
      _OffsetEncoders(np.full((2, 16), 3.0)), rec, 0, "test")
  for key in ("image_repr", "mean_repr", "trial_repr"):
    np.testing.assert_allclose(shifted[key].mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(shifted[key], plain[key], atol=1e-9)
  assert (discriminative.score_representations(shifted, config.eval)
          == discriminative.score_representations(plain, config.eval))
  # Uncentred, the same offset moves every score: the centring is what removes it.
  raw = lambda offset: discriminative.score_representations(dict(
      plain, image_repr=plain["image_repr"] + offset, mean_repr=plain["mean_repr"] + offset),
      config.eval)["decoding"]["2"]["top1"]
  assert raw(3.0) != raw(0.0)
