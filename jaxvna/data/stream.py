"""The global stream of training examples: which record, and which of its recorded repeats,
sits at each position of a run's stream, as counter-based functions of (seed, position).

Both inputs compute it with the same uint32 arithmetic: the host pipeline with numpy,
vectorised over a batch (`pipeline.make_train_iterator`), and device-resident input with
jax.numpy inside the jitted step (`resident.draw`). So the two draw the same batches, to
the bit, and neither depends on the number of devices, processes or threads, nor on what
came before: resuming needs only the step.

  "size" weighting   position p is offset o = p mod N of epoch e = p div N; the record
                     is `permute(o, N, order_key(seed, 0, e))`: every record once per
                     epoch, reshuffled every epoch.
  "equal" weighting  position p goes to the (p mod S)-th of the S subjects that have
                     records, as that subject's draw q = p div S; q is offset o of the
                     subject's epoch e, and the record is the subject's
                     `permute(o, count, order_key(seed, s + 1, e))`-th.
  repeats            global row r of step t picks recorded repeat
                     `repeat_pick(seed, t, r, num_recorded)`, uniform over them.

Epochs and steps enter only as hash inputs, so they are taken modulo 2**32.
"""

from __future__ import annotations

import numpy as np

# Feistel rounds: four make a pseudo-random permutation of a large domain (Luby-Rackoff),
# but a split of a few records needs more for uniform draws (chi-square per degree of
# freedom about 1 at eight, up to 40 at four: tests/data/test_stream.py).
_ROUNDS = 8
_ORDER, _REPEAT = 0x2545F491, 0x6A09E667  # salts that keep the two hash families apart


def hash32(x, xp=np):
  """A 32-bit integer hash ("lowbias32": two multiply-xorshift rounds), elementwise on
  uint32 arrays of numpy (`xp=np`) or jax.numpy; wraps modulo 2**32 like C."""
  x = xp.asarray(x, xp.uint32)
  with np.errstate(over="ignore"):  # numpy warns when a 0-d product wraps; it is meant to
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * xp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def mix(*words, xp=np):
  """One uint32 hash of several uint32 words (arrays broadcast together)."""
  h = xp.asarray(0x9E3779B9, xp.uint32)
  for w in words:
    h = hash32(h ^ xp.asarray(w, xp.uint32), xp)
  return h


def order_key(seed, subject, epoch, xp=np):
  """The key of one shuffle: subject 0 orders the whole split ("size"), subject s + 1
  the records of subject s ("equal")."""
  return mix(_ORDER, seed, subject, epoch, xp=xp)


def _bit_length(v, xp):
  """Bits needed for each uint32 of `v` (0 for 0)."""
  shifts = xp.arange(32, dtype=xp.uint32)
  return ((v[..., None] >> shifts) > 0).sum(-1).astype(xp.uint32)


def permute(x, size, key, xp=np):
  """The image of each `x` in [0, size) under the permutation of [0, size) fixed by `key`.

  A balanced Feistel network on 2h bits (4**h >= size, so at most about 4 * size values),
  cycle-walked back into [0, size): exactly a permutation, O(1) per element, no table.
  `x`, `size` (< 2**31) and `key` are uint32 arrays broadcast together.
  """
  x = xp.asarray(x, xp.uint32)
  size = xp.broadcast_to(xp.asarray(size, xp.uint32), x.shape)
  key = xp.broadcast_to(xp.asarray(key, xp.uint32), x.shape)
  half = xp.maximum((_bit_length(size - xp.uint32(1), xp) + 1) // 2, xp.uint32(1))
  mask = (xp.uint32(1) << half) - xp.uint32(1)

  round_keys = [mix(key, r, xp=xp) for r in range(_ROUNDS)]

  def feistel(v):
    left, right = v >> half, v & mask
    for round_key in round_keys:
      left, right = right, left ^ (hash32(round_key ^ right, xp) & mask)
    return (left << half) | right

  outside = lambda v: v >= size
  walk = lambda v: xp.where(outside(v), feistel(v), v)
  v = feistel(x)
  if xp is np:
    while outside(v).any():
      v = walk(v)
    return v
  import jax
  return jax.lax.while_loop(lambda v: outside(v).any(), walk, v)


def repeat_pick(seed, step, row, num_recorded, xp=np):
  """Which of its `num_recorded` recorded repeats (>= 1) global row `row` of step `step`
  takes, uniform up to a bias below num_recorded / 2**32."""
  return mix(_REPEAT, seed, step, row, xp=xp) % xp.asarray(num_recorded, xp.uint32)


def as_uint32(values) -> np.ndarray:
  """Non-negative integers (epochs, steps: any size) modulo 2**32, as uint32."""
  return (np.asarray(values, np.uint64) % np.uint64(2**32)).astype(np.uint32)


def records(positions, *, seed: int, weighting: str, num_records: int,
            members=None, member_counts=None) -> np.ndarray:
  """The record index at each of `positions` (int64, any size) of the stream, on the host.

  Args:
    positions: stream positions, >= 0.
    seed: the run's seed, in [0, 2**32).
    weighting: "size" or "equal".
    num_records: N, the split's records.
    members, member_counts: for "equal", the record indices of each subject that has
      records, as a padded (S', M) table, and their (S',) counts
      (`pipeline.subject_members`).

  Returns:
    int64 record indices, shaped like `positions`.
  """
  positions = np.asarray(positions, np.int64)
  if weighting == "size":
    epoch, offset = np.divmod(positions, num_records)
    return permute(offset, num_records, order_key(seed, 0, as_uint32(epoch))).astype(np.int64)
  if weighting != "equal":
    raise ValueError(f"subject_weighting: expected 'size' or 'equal', got {weighting!r}")
  counts = np.asarray(member_counts, np.int64)
  draw, slot = np.divmod(positions, len(counts))
  epoch, offset = np.divmod(draw, counts[slot])
  local = permute(offset, counts[slot], order_key(seed, slot + 1, as_uint32(epoch)))
  return np.asarray(members, np.int64)[slot, local.astype(np.int64)]
