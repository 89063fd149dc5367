"""Neuron identity features: fingerprints on known cases, the padded table, bad input."""

import dataclasses

import numpy as np
import pytest

from jaxvna.data import DataError, Dataset, Recording

from jaxvna.methods.mivae import neuron_features


def recording(rng, k, n=40, name="s0", coords_dim=2, responses=None):
  images = rng.integers(0, 256, (n, 16, 16, 1)).astype(np.uint8)
  if responses is None:
    responses = rng.poisson(2.0, (n, 2, k)).astype(np.float32)
  return Recording(name=name, images=images, responses=responses,
                   neuron_coords=rng.normal(size=(k, coords_dim)).astype(np.float32),
                   split=np.zeros(n, np.int8), stimulus_ids=np.arange(n))


def test_fingerprint_of_a_neuron_driven_by_one_descriptor():
  rng = np.random.default_rng(0)
  rec = recording(rng, 3)
  desc = neuron_features.image_descriptors(rec.images)
  # Neuron 0's response is a monotone function of descriptor 7: its fingerprint peaks there.
  drive = (desc[:, 7] - desc[:, 7].min()) / np.ptp(desc[:, 7])
  responses = rec.responses.copy()
  responses[:, :, 0] = np.expm1(3 * drive)[:, None]
  fp = neuron_features.tuning_fingerprints(dataclasses.replace(rec, responses=responses))
  assert fp.shape == (3, desc.shape[1])
  assert np.argmax(fp[0]) == 7 and fp[0, 7] > 0.99
  assert np.all(np.abs(fp) <= 1 + 1e-5)


def test_table_pads_and_masks():
  rng = np.random.default_rng(1)
  ds = Dataset("d", (recording(rng, 5, name="a"), recording(rng, 3, name="b")))
  table = neuron_features.neuron_table(ds, ("tuning", "coords"))
  f = table["features"]
  assert f.shape == (2, 5, 100 + 2)
  assert table["mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
  assert np.all(f[1, 3:] == 0) and np.all(table["scale"][1, 3:] == 1)
  np.testing.assert_allclose(f[0, :, -2:], ds.recordings[0].neuron_coords)
  trials = np.log1p(ds.recordings[1].responses.reshape(-1, 3))
  np.testing.assert_allclose(table["center"][1, :3], trials.mean(0), rtol=1e-5)


def test_user_features_are_checked():
  rng = np.random.default_rng(2)
  ds = Dataset("d", (recording(rng, 5, name="a"), recording(rng, 3, name="b")))
  good = [np.ones((5, 4)), np.ones((3, 4))]
  assert neuron_features.neuron_table(ds, ("tuning",), features=good)["features"].shape == (2, 5, 4)
  with pytest.raises(DataError, match=r"recording b: neuron features have shape \(2, 4\)"):
    neuron_features.neuron_table(ds, ("tuning",), features=[np.ones((5, 4)), np.ones((2, 4))])
  with pytest.raises(DataError, match="differ in feature dimension"):
    neuron_features.neuron_table(ds, ("tuning",), features=[np.ones((5, 4)), np.ones((3, 6))])
  with pytest.raises(DataError, match="NaN"):
    neuron_features.neuron_table(ds, ("tuning",), features=[np.ones((5, 4)),
                                                          np.full((3, 4), np.nan)])
  with pytest.raises(DataError, match="2 arrays for 1"):
    neuron_features.neuron_table([ds.recordings[0]], ("tuning",), features=good)


def test_missing_coords_and_zero_neurons_are_clear_errors():
  rng = np.random.default_rng(3)
  with pytest.raises(DataError, match="recording a: field neuron_coords is empty"):
    neuron_features.neuron_table([recording(rng, 4, name="a", coords_dim=0)], ("coords",))
  with pytest.raises(DataError, match="z: field 'responses': zero neurons"):
    recording(rng, 0, name="z")
  with pytest.raises(ValueError, match="unknown 'rf'"):
    neuron_features.neuron_table([recording(rng, 4)], ("rf",))


def test_feature_dimension_check_names_the_mismatch():
  table = {"features": np.zeros((1, 3, 7))}
  neuron_features.check_feature_dim(table, 7, "held-out subject x")
  with pytest.raises(DataError, match="held-out subject x: neuron features have dimension 7; "
                                      "the model was trained with 9"):
    neuron_features.check_feature_dim(table, 9, "held-out subject x")


def test_shuffled_across_subjects_moves_rows_between_subjects_and_keeps_them():
  features = [np.arange(30, dtype=np.float32).reshape(10, 3),
              100 + np.arange(18, dtype=np.float32).reshape(6, 3)]
  out = neuron_features.shuffled_across_subjects(features, seed=0)
  assert [f.shape for f in out] == [(10, 3), (6, 3)]
  rows = lambda fs: sorted(map(tuple, np.concatenate(fs).tolist()))
  assert rows(out) == rows(features)                     # a permutation of the rows
  assert np.any(out[0] >= 100) and np.any(out[1] < 100)  # across subjects
  again = neuron_features.shuffled_across_subjects(features, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(out, again))
