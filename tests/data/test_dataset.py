"""The common structure: validation names the source and field; helpers behave."""

import dataclasses

import numpy as np
import pytest

from jaxvna.data.dataset import (DataError, Dataset, Recording, fingerprint,
                                 shuffle_training_pairs, summarize)


def _recording(n=4, r=2, k=3, **changes):
  fields = dict(
      name="s0", images=np.zeros((n, 8, 8, 1), np.uint8),
      responses=np.ones((n, r, k), np.float32), neuron_coords=np.zeros((k, 2), np.float32),
      split=np.array([0, 0, 1, 2][:n], np.int8), stimulus_ids=np.arange(n, dtype=np.int64),
      source="file.npy")
  fields.update(changes)
  return Recording(**fields)


def test_valid_recording_and_derived_fields():
  responses = np.ones((4, 2, 3), np.float32)
  responses[1, 1] = np.nan  # image 1 has one recorded repeat
  responses[0, 0] = 3.0
  rec = _recording(responses=responses)
  np.testing.assert_array_equal(rec.num_repeats, [2, 1, 2, 2])
  np.testing.assert_allclose(rec.mean_responses[0], 2.0)
  np.testing.assert_array_equal(rec.indices("train"), [0, 1])
  sub = rec.subset(rec.indices("test"))
  assert sub.num_images == 1 and sub.stimulus_ids[0] == 3


@pytest.mark.parametrize("changes, field", [
    (dict(images=np.zeros((4, 8, 8, 1), np.float32)), "images"),
    (dict(responses=np.ones((3, 2, 3), np.float32)), "responses"),
    (dict(responses=np.full((4, 2, 3), np.inf, np.float32)), "responses"),
    (dict(neuron_coords=np.zeros((2, 2), np.float32)), "neuron_coords"),
    (dict(split=np.array([0, 0, 1, 5], np.int8)), "split"),
    (dict(stimulus_ids=np.array([0, 1, 1, 2])), "stimulus_ids"),
    (dict(responses=np.ones((4, 2, 0), np.float32), neuron_coords=np.zeros((0, 2), np.float32)),
     "responses"),
])
def test_bad_fields_are_named_with_the_source(changes, field):
  with pytest.raises(DataError, match=f"file.npy: field '{field}'"):
    _recording(**changes)


def test_nan_must_pad_whole_repeats():
  responses = np.ones((4, 2, 3), np.float32)
  responses[2, 0, 1] = np.nan
  with pytest.raises(DataError, match="NaN in some but not all neurons of image 2"):
    _recording(responses=responses)
  responses = np.ones((4, 2, 3), np.float32)
  responses[3] = np.nan
  with pytest.raises(DataError, match="image 3 has no recorded repeat"):
    _recording(responses=responses)


def test_dataset_checks_and_summary():
  a, b = _recording(), _recording(name="s1", k=5,
                                  neuron_coords=np.zeros((5, 2), np.float32),
                                  responses=np.ones((4, 2, 5), np.float32))
  ds = Dataset("toy", (a, b))
  assert ds.neuron_counts == (3, 5) and ds["s1"] is b
  assert ds.select(["s1"]).recordings == (b,)
  with pytest.raises(DataError, match="unknown recording 'x'"):
    ds["x"]
  with pytest.raises(DataError, match="duplicate recording names"):
    Dataset("toy", (a, a))
  with pytest.raises(DataError, match="different image shapes"):
    Dataset("toy", (a, _recording(name="s2", images=np.zeros((4, 9, 9, 1), np.uint8))))
  text = summarize(ds)
  assert text.splitlines()[0] == "dataset toy: 2 recordings, images 8x8x1"
  assert text.splitlines()[3].split()[:4] == ["s1", "5", "4", "2"]


def test_image_features_are_validated_and_follow_subsets():
  feats = np.arange(8, dtype=np.float32).reshape(4, 2)
  rec = _recording(image_features=feats)
  np.testing.assert_array_equal(rec.subset([3]).image_features, feats[[3]])
  with pytest.raises(DataError, match="field 'image_features': 3 rows for 4 images"):
    _recording(image_features=feats[:3])
  with pytest.raises(DataError, match="field 'image_features': non-finite"):
    _recording(image_features=np.full((4, 2), np.nan, np.float32))
  with pytest.raises(DataError, match="disagree on image_features"):
    Dataset("toy", (rec, _recording(name="s1")))


def _numbered(n=40, k=3):
  """A recording whose responses name their image: responses[i] == i."""
  split = np.zeros(n, np.int8)
  split[-10:] = 2  # the last 10 images are test
  responses = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 2, k)).copy()
  return _recording(n=n, images=np.arange(n, dtype=np.uint8)[:, None, None, None]
                    * np.ones((1, 8, 8, 1), np.uint8), responses=responses,
                    split=split, neuron_coords=np.zeros((k, 2), np.float32))


def test_shuffle_training_pairs_permutes_the_train_split_only():
  ds = Dataset("d", (_numbered(), dataclasses.replace(_numbered(), name="s1")))
  shuffled = shuffle_training_pairs(ds, seed=0)
  for before, after in zip(ds.recordings, shuffled.recordings):
    train, test = before.indices("train"), before.indices("test")
    moved = after.responses[train, 0, 0]
    assert sorted(moved) == sorted(before.responses[train, 0, 0])  # same responses
    assert np.mean(moved != train) > 0.8  # most of them paired with another image
    np.testing.assert_array_equal(after.responses[test], before.responses[test])
    np.testing.assert_array_equal(after.images, before.images)
  # Each subject its own permutation; the same seed, the same shuffle.
  assert not np.array_equal(shuffled.recordings[0].responses, shuffled.recordings[1].responses)
  np.testing.assert_array_equal(shuffle_training_pairs(ds, seed=0).recordings[0].responses,
                                shuffled.recordings[0].responses)


def test_fingerprint_follows_every_value_and_name():
  ds = Dataset("d", (_numbered(),))
  assert fingerprint(ds) == fingerprint(Dataset("d", (_numbered(),)))
  responses = ds.recordings[0].responses.copy()
  responses[0, 0, 0] += 1e-3
  changed = [Dataset("d", (dataclasses.replace(ds.recordings[0], **c),)) for c in (
      dict(responses=responses), dict(name="other"),
      dict(split=np.roll(ds.recordings[0].split, 1)))] + [Dataset("e", ds.recordings)]
  assert len({fingerprint(d) for d in [ds, *changed]}) == 5
