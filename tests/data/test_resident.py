"""Device-resident input: the batches drawn inside the step are the host pipeline's, to the
bit (epochs, subject weighting, repeats, masks, nested fractions), and depend only on the
seed and the step."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxvna.data import pipeline, resident
from toy_recordings import make_dataset, owner


@pytest.fixture(scope="module")
def dataset():
  return make_dataset()


def draws(data, steps, *, batch_size, seed=0, response_mode="trial", weighting="size",
          sharding=None, first_step=0, sharded_mesh=None):
  """Host copies of the batches of `steps` consecutive steps."""
  fn = jax.jit(functools.partial(resident.draw, seed=seed, batch_size=batch_size,
                                 response_mode=response_mode, weighting=weighting,
                                 sharding=sharding, sharded_mesh=sharded_mesh))
  out = []
  for step in range(first_step, first_step + steps):
    offsets = resident.stream_offsets(step, batch_size, data.num_members, weighting)
    out.append(jax.tree.map(np.asarray, fn(data, offsets, step)))
  return out


def stacked(batches, key):
  return np.concatenate([b[key] for b in batches])


def test_arrays_hold_the_split_with_recorded_repeats_first(dataset):
  data = resident.arrays(dataset, "train")
  source = pipeline.DatasetSource(dataset, "train")
  assert len(data.subjects) == len(source) == 60
  np.testing.assert_array_equal(data.subjects, source.subjects)
  for i in range(len(source)):
    record = source[i]
    np.testing.assert_array_equal(data.images[i], record["image"])
    np.testing.assert_array_equal(data.responses[i], record["responses"])
    recorded = np.flatnonzero(~np.isnan(record["responses"][:, 0]))
    assert data.num_repeats[i] == len(recorded)
    np.testing.assert_array_equal(data.repeats[i, :len(recorded)], recorded)
  mean = resident.arrays(dataset, "train", response_mode="mean")
  assert mean.responses.shape[1] == 1
  for i in range(len(source)):  # the host pipeline's mean example (0 beyond the neurons)
    np.testing.assert_allclose(mean.responses[i, 0],
                               pipeline.to_example(source[i], "mean")["response"], rtol=1e-6)
  assert resident.nbytes(data) > data.images.nbytes


def test_size_weighting_visits_every_record_once_per_epoch_reshuffled(dataset):
  data = resident.arrays(dataset, "train")  # 60 records, batches of 12: 5 steps an epoch
  batches = draws(data, 10, batch_size=12)
  ids = stacked(batches, "stimulus_id")
  train_ids = {int(i) for rec in dataset.recordings for i in rec.stimulus_ids[rec.indices("train")]}
  assert set(ids[:60].tolist()) == train_ids and set(ids[60:].tolist()) == train_ids
  assert not np.array_equal(ids[:60], ids[60:])
  # A batch that spans two epochs (B does not divide N) still never repeats a record
  # within an epoch.
  ids = stacked(draws(data, 10, batch_size=16), "stimulus_id")
  assert len(set(ids[:60].tolist())) == 60 and len(set(ids[60:120].tolist())) == 60


def test_examples_are_consistent_with_their_records(dataset):
  data = resident.arrays(dataset, "train")
  used = {}
  for batch in draws(data, 20, batch_size=12):
    for row in range(12):
      s, i = owner(dataset, int(batch["stimulus_id"][row]))
      rec = dataset.recordings[s]
      assert batch["subject"][row] == s
      np.testing.assert_array_equal(batch["image"][row], rec.images[i])
      k = rec.num_neurons
      np.testing.assert_array_equal(batch["neuron_mask"][row], np.arange(7) < k)
      assert (batch["response"][row, k:] == 0).all()
      # one of the image's recorded repeats, exactly
      matches = [r for r in range(rec.responses.shape[1])
                 if np.array_equal(batch["response"][row, :k], rec.responses[i, r])]
      assert matches, (s, i)
      used.setdefault((s, i), set()).update(matches)
  # every repeat of a 3-repeat image gets drawn somewhere
  assert any(len(v) == 3 for v in used.values())


def test_mean_mode_gives_the_repeat_mean(dataset):
  data = resident.arrays(dataset, "train", response_mode="mean")
  batch = draws(data, 1, batch_size=12, response_mode="mean")[0]
  for row in range(12):
    s, i = owner(dataset, int(batch["stimulus_id"][row]))
    rec = dataset.recordings[s]
    np.testing.assert_allclose(batch["response"][row, :rec.num_neurons],
                               np.nanmean(rec.responses[i], axis=0), rtol=1e-6)


def test_equal_weighting_gives_every_subject_the_same_share(dataset):
  data = resident.arrays(dataset, "train")  # 30, 12, 18 records
  batches = draws(data, 10, batch_size=12, weighting="equal")
  subjects = stacked(batches, "subject")
  np.testing.assert_array_equal(np.bincount(subjects, minlength=3), [40, 40, 40])
  ids = stacked(batches, "stimulus_id")
  # subject 1's 12 records: each once in each of its epochs
  ones = ids[subjects == 1]
  assert len(set(ones[:12].tolist())) == 12 and len(set(ones[12:24].tolist())) == 12


def test_nested_fraction_draws_only_the_kept_records(dataset):
  half = resident.arrays(dataset, "train", fraction=0.5, subset_seed=3)
  source = pipeline.DatasetSource(dataset, "train", fraction=0.5, subset_seed=3)
  kept = {int(source[i]["stimulus_id"]) for i in range(len(source))}
  ids = stacked(draws(half, 6, batch_size=10), "stimulus_id")
  assert set(ids.tolist()) == kept and len(kept) == len(source) == 30


@pytest.mark.parametrize("response_mode", pipeline.RESPONSE_MODES)
def test_batches_depend_only_on_seed_and_step_not_on_devices_or_placement(dataset,
                                                                         response_mode):
  """1 device vs 8, the split replicated vs split by rows (90 records: not a multiple of 8,
  so the last shards hold padding)."""
  data = resident.arrays(dataset, "train", response_mode=response_mode)
  assert len(data.subjects) % 8
  one = draws(data, 3, batch_size=16, first_step=7, response_mode=response_mode)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  for sharded in (False, True):
    placed = resident.place(data, mesh, sharded=sharded)
    if sharded:
      assert placed.images.addressable_shards[0].data.shape[0] == -(-len(data.subjects) // 8)
    with jax.set_mesh(mesh):
      eight = draws(placed, 3, batch_size=16, first_step=7, response_mode=response_mode,
                    sharding=NamedSharding(mesh, P("data")),
                    sharded_mesh=mesh if sharded else None)
    for a, b in zip(one, eight):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=(sharded, k))
  other_seed = draws(data, 1, batch_size=16, first_step=7, seed=1)[0]
  assert not np.array_equal(other_seed["stimulus_id"], one[0]["stimulus_id"])


@pytest.mark.parametrize("response_mode,weighting,fraction", [
    ("trial", "size", 1.0), ("mean", "size", 1.0), ("trial", "equal", 1.0),
    ("trial", "size", 0.5), ("mean", "equal", 0.5)])
def test_batches_equal_the_host_pipelines_to_the_bit(dataset, response_mode, weighting,
                                                     fraction):
  """Steps 0-9 and 1000-1002 (far into the stream), batches that span epochs (16 does not
  divide 60 or 30): the same records, repeats and masks as the host pipeline's batches."""
  data = resident.arrays(dataset, "train", fraction=fraction, subset_seed=3,
                         response_mode=response_mode)
  source = pipeline.DatasetSource(dataset, "train", fraction=fraction, subset_seed=3)
  host = pipeline.make_local_batches(source, global_batch_size=16, rows=slice(0, 16), seed=9,
                                     response_mode=response_mode, subject_weighting=weighting)
  for first, count in ((0, 10), (1000, 3)):
    device = draws(data, count, batch_size=16, seed=9, response_mode=response_mode,
                   weighting=weighting, first_step=first)
    for step, batch in enumerate(device, first):
      expected = host[step]
      assert sorted(batch) == sorted(expected)
      for k, v in expected.items():
        np.testing.assert_array_equal(batch[k], v.astype(batch[k].dtype), err_msg=(step, k))


def test_expected_size_is_known_before_the_arrays_are_built(dataset):
  for response_mode in pipeline.RESPONSE_MODES:
    data = resident.arrays(dataset, "train", response_mode=response_mode)
    for shards in (1, 8):
      expected = resident.expected_nbytes(dataset, "train", response_mode=response_mode,
                                          shards=shards)
      # exact per record; the small per-subject tables within 4 bytes a record
      assert abs(expected - resident.nbytes(data, shards)) <= 4 * len(data.subjects) + 64
    # Only the images and responses are split, each device holding ceil(n / 8) rows.
    n, per_row = len(data.subjects), (data.images[0].nbytes + data.responses[0].nbytes)
    assert resident.nbytes(data) - resident.nbytes(data, 8) == (n - -(-n // 8)) * per_row
  half = resident.expected_nbytes(dataset, "train", fraction=0.5)
  assert half < resident.expected_nbytes(dataset, "train") * 0.55


def test_stream_offsets_are_exact_far_beyond_int32():
  data = resident.arrays(make_dataset(), "train")
  step, b = 10**12, 12
  wrapped = lambda e, o: (e % 2**32, o)  # epochs only seed shuffles
  np.testing.assert_array_equal(resident.stream_offsets(step, b, data.num_members, "size"),
                                wrapped(*divmod(step * b, 60)))
  equal = resident.stream_offsets(step, b, data.num_members, "equal")
  q = step * b // 3
  np.testing.assert_array_equal(equal, [step * b % 3, *wrapped(*divmod(q, 30)),
                                        *wrapped(*divmod(q, 12)), *wrapped(*divmod(q, 18))])
  with pytest.raises(ValueError, match="subject_weighting"):
    resident.stream_offsets(0, b, data.num_members, "uniform")
