"""The stream of training examples: counter-based permutations and repeat picks, the same
in numpy and jax.numpy, exactly a permutation per epoch, uniform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvna.data import pipeline, stream


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 60, 1000, 12345])
def test_permute_is_a_permutation_equal_in_numpy_and_jax(size):
  key = stream.order_key(3, 0, 7)
  image = stream.permute(np.arange(size), size, key)
  np.testing.assert_array_equal(np.sort(image), np.arange(size))
  traced = jax.jit(lambda x: stream.permute(x, size, stream.order_key(3, 0, 7, xp=jnp),
                                            xp=jnp))(jnp.arange(size))
  np.testing.assert_array_equal(np.asarray(traced), image)
  other = stream.permute(np.arange(size), size, stream.order_key(3, 0, 8))
  assert size < 3 or not np.array_equal(image, other)  # each epoch its own order


def test_permute_takes_a_size_and_key_per_element_in_both():
  sizes = np.asarray([1, 5, 12, 30, 9600], np.uint32)
  keys = stream.order_key(1, np.arange(5), 2)
  x = np.asarray([0, 4, 11, 3, 9599], np.uint32)
  host = stream.permute(x, sizes, keys)
  assert (host < sizes).all()
  device = jax.jit(lambda x, s, k: stream.permute(x, s, k, xp=jnp))(x, sizes, keys)
  np.testing.assert_array_equal(np.asarray(device), host)


@pytest.mark.parametrize("size", [3, 10, 60])
def test_draws_are_uniform_over_keys(size):
  """Where one position lands, over 40,000 epochs: chi-square per degree of freedom near 1
  (measured 0.1-1.3 at eight rounds; 7-40 at four, which this bound of 2 rejects)."""
  keys = stream.order_key(1, 0, np.arange(40_000, dtype=np.uint32))
  for x in (0, size // 2):
    counts = np.bincount(stream.permute(np.full(40_000, x, np.uint32), size, keys),
                         minlength=size)
    expected = 40_000 / size
    assert ((counts - expected) ** 2 / expected).sum() / (size - 1) < 2.0, (x, counts)


def test_repeat_picks_are_uniform_and_equal_in_numpy_and_jax():
  rows = np.arange(30_000, dtype=np.uint32)
  picks = stream.repeat_pick(5, 11, rows, 3)
  counts = np.bincount(picks, minlength=3)
  assert counts.min() > 9_700 and counts.max() < 10_300  # 10,000 +- 3 sd
  traced = jax.jit(lambda r: stream.repeat_pick(5, 11, r, 3, xp=jnp))(rows)
  np.testing.assert_array_equal(np.asarray(traced), picks)
  assert not np.array_equal(stream.repeat_pick(5, 12, rows, 3), picks)


def test_size_records_visit_every_record_once_per_epoch_far_into_the_stream():
  n = 60
  for first_epoch in (0, 2**40):  # epochs beyond 2**32 wrap: they only seed shuffles
    index = stream.records(first_epoch * n + np.arange(3 * n), seed=4, weighting="size",
                           num_records=n)
    epochs = index.reshape(3, n)
    for epoch in epochs:
      np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1])


def test_equal_records_cycle_over_subjects_each_reshuffled_per_epoch():
  table, counts = pipeline.subject_members(np.repeat([0, 1, 2], [30, 12, 18]))
  members = [np.arange(0, 30), np.arange(30, 42), np.arange(42, 60)]
  index = stream.records(np.arange(360), seed=2, weighting="equal", num_records=60,
                         members=table, member_counts=counts)
  owner = np.searchsorted([30, 42, 60], index, side="right")
  np.testing.assert_array_equal(owner, np.arange(360) % 3)
  second = index[owner == 1]  # subject 1's 12 records, each once per its epoch
  for epoch in second.reshape(-1, 12):
    np.testing.assert_array_equal(np.sort(epoch), members[1])
  with pytest.raises(ValueError, match="subject_weighting"):
    stream.records(np.arange(3), seed=0, weighting="uniform", num_records=60)
