"""Tests of the grain input pipeline: records, examples, determinism, state, sharding."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxvna.data import pipeline
from jaxvna.data.dataset import DataError, Dataset
from toy_recordings import K_MAX, R_MAX, make_dataset, make_recording, owner

@pytest.fixture(scope="module")
def dataset():
  return make_dataset()


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def take(iterator, n):
  return [jax.tree.map(np.asarray, next(iterator)) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------
# Records and examples
# ----------------------------------------------------------------------------

def test_dataset_source_records_follow_split_order_and_are_nan_padded(dataset):
  source = pipeline.DatasetSource(dataset, "train")
  expected = [(s, i) for s, rec in enumerate(dataset.recordings) for i in rec.indices("train")]
  assert len(source) == len(expected)
  np.testing.assert_array_equal(source.subjects, [s for s, _ in expected])
  assert source.record_shape == (R_MAX, K_MAX)
  for index in (0, 30, len(source) - 1):
    record = source[index]
    s, i = expected[index]
    rec = dataset.recordings[s]
    r, k = rec.responses.shape[1:]
    assert record["responses"].shape == (R_MAX, K_MAX) and record["responses"].dtype == np.float32
    np.testing.assert_array_equal(record["responses"][:r, :k], rec.responses[i])
    assert np.isnan(record["responses"][r:]).all() and np.isnan(record["responses"][:, k:]).all()
    np.testing.assert_array_equal(record["image"], rec.images[i])
    assert int(record["subject"]) == s and int(record["num_neurons"]) == k
    assert int(record["stimulus_id"]) == rec.stimulus_ids[i]
  with pytest.raises(IndexError):
    source[len(source)]


def test_mean_mode_averages_recorded_repeats_and_masks_padding(dataset):
  rec = dataset.recordings[0]  # 3 repeats, the first half of images has only 2
  source = pipeline.DatasetSource(dataset, "train")
  example = pipeline.to_example(source[0], "mean")
  np.testing.assert_allclose(example["response"][:4], rec.mean_responses[rec.indices("train")[0]],
                             rtol=1e-6)
  np.testing.assert_allclose(example["response"][:4], rec.responses[0, :2].mean(0), rtol=1e-6)
  assert example["response"].shape == (K_MAX,)
  np.testing.assert_array_equal(example["neuron_mask"], np.arange(K_MAX) < 4)
  assert (example["response"][4:] == 0).all()


def test_trial_mode_takes_the_picked_recorded_repeat(dataset):
  source = pipeline.DatasetSource(dataset, "train")
  record = source[0]  # image 0 of recording "a": repeats 0 and 1 recorded, 2 is NaN
  for pick, repeat in ((0, 0), (1, 1)):  # picks count recorded repeats only
    example = pipeline.to_example(record, "trial", pick)
    np.testing.assert_array_equal(example["response"][:4], record["responses"][repeat, :4])
    assert not np.isnan(example["response"]).any()
  with pytest.raises(ValueError, match="picks"):
    pipeline.to_example(record, "trial", 2)  # the unrecorded third repeat
  with pytest.raises(ValueError, match="response_mode"):
    pipeline.to_example(record, "median")


# ----------------------------------------------------------------------------
# Iterator: determinism, state, sharding
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("response_mode", pipeline.RESPONSE_MODES)
def test_vectorised_batches_equal_the_examples_of_each_record(dataset, response_mode):
  """`DatasetSource.take` + `to_examples` (one gather per recording) give, to the bit, the
  per-record records and examples."""
  source = pipeline.DatasetSource(dataset, "train")
  indices = np.random.default_rng(0).permutation(len(source))[:25]
  records = source.take(indices)
  for row, i in enumerate(indices):
    for k, v in source[int(i)].items():
      np.testing.assert_array_equal(records[k][row], v, err_msg=k)
  _, counts = pipeline.recorded_repeats(records["responses"])
  picks = np.arange(25) % counts
  batch = pipeline.to_examples(records, response_mode, picks)
  for row, i in enumerate(indices):
    single = pipeline.to_example(source[int(i)], response_mode, picks[row])
    for k, v in single.items():
      assert batch[k][row].dtype == v.dtype
      np.testing.assert_array_equal(batch[k][row], v, err_msg=k)


def test_batches_have_the_documented_layout_and_consistent_content(dataset, mesh):
  source = pipeline.DatasetSource(dataset, "train")
  batch = next(pipeline.make_train_iterator(source, global_batch_size=16, mesh=mesh, seed=3))
  assert batch["image"].shape == (16, 5, 4, 1) and batch["image"].dtype == np.uint8
  assert batch["response"].shape == (16, K_MAX) and batch["response"].dtype == np.float32
  assert batch["neuron_mask"].dtype == np.bool_ and batch["subject"].dtype == np.int32
  b = jax.tree.map(np.asarray, batch)
  for row in range(16):
    s, i = owner(dataset, int(b["stimulus_id"][row]))
    rec = dataset.recordings[s]
    assert b["subject"][row] == s and rec.split[i] == 0  # train split only
    np.testing.assert_array_equal(b["image"][row], rec.images[i])
    np.testing.assert_array_equal(b["neuron_mask"][row], np.arange(K_MAX) < rec.num_neurons)
    assert (b["response"][row, rec.num_neurons:] == 0).all()
    trials = rec.responses[i][~np.isnan(rec.responses[i, :, 0])]
    assert any(np.array_equal(b["response"][row, :rec.num_neurons], t) for t in trials)


def test_same_seed_same_batches_different_seed_different(dataset, mesh):
  source = pipeline.DatasetSource(dataset, "train")
  make = lambda seed: pipeline.make_train_iterator(source, global_batch_size=8, mesh=mesh,
                                                   seed=seed)
  first = take(make(0), 4)
  assert_batches_equal(first, take(make(0), 4))
  other = take(make(1), 4)
  assert not all(np.array_equal(x["stimulus_id"], y["stimulus_id"]) for x, y in zip(first, other))


def test_restored_state_continues_with_the_same_batches(dataset, mesh):
  source = pipeline.DatasetSource(dataset, "train")
  make = lambda **kw: pipeline.make_train_iterator(source, global_batch_size=8, mesh=mesh,
                                                   seed=5, **kw)
  it = make()
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # as the trainer stores it
  assert state["next_batch"] == 3
  expected = take(it, 5)  # crosses the end of the first epoch (60 records)
  restored = make()
  restored.set_state(state)
  assert_batches_equal(expected, take(restored, 5))
  with pytest.raises(ValueError, match="different pipeline"):
    make(response_mode="mean").set_state(state)


def test_worker_processes_give_the_same_batches_and_resume(dataset, mesh):
  """grain worker processes assemble the batches of the threads, in order, and an
  iterator with workers restored mid-stream continues exactly."""
  source = pipeline.DatasetSource(dataset, "train")
  make = lambda **kw: pipeline.make_train_iterator(source, global_batch_size=8, mesh=mesh,
                                                   seed=5, **kw)
  expected = take(make(), 9)
  workers = make(worker_processes=2)
  try:
    assert_batches_equal(expected[:4], take(workers, 4))
    state = json.loads(json.dumps(workers.get_state()))
  finally:
    workers.close()
  restored = make(worker_processes=2)
  try:
    restored.set_state(state)
    assert_batches_equal(expected[4:], take(restored, 5))
  finally:
    restored.close()


def test_batches_are_sharded_over_data_and_equal_the_unsharded_batch(dataset, mesh):
  source = pipeline.DatasetSource(dataset, "train")
  batch = next(pipeline.make_train_iterator(source, global_batch_size=16, mesh=mesh, seed=2))
  whole = pipeline.make_local_batches(source, global_batch_size=16, rows=slice(0, 16), seed=2)[0]
  for key, value in batch.items():
    assert value.sharding.spec == P("data"), key
    shards = value.addressable_shards
    assert len(shards) == 8 and all(sh.data.shape[0] == 2 for sh in shards)
    expected = whole[key].astype(np.int32) if key == "stimulus_id" else whole[key]
    np.testing.assert_array_equal(np.asarray(value), expected, err_msg=key)
    for sh in shards:
      np.testing.assert_array_equal(np.asarray(sh.data), expected[sh.index], err_msg=key)


def test_batch_size_must_divide_over_the_mesh(dataset, mesh):
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    pipeline.make_train_iterator(pipeline.DatasetSource(dataset, "train"), global_batch_size=12,
                                 mesh=mesh, seed=0)


class CountingSource:
  """A source that records which records were read."""

  def __init__(self, source):
    self.source, self.reads = source, []
    self.subjects, self.neuron_counts = source.subjects, source.neuron_counts

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads.append(index)
    return self.source[index]


def test_processes_read_disjoint_slices_whose_union_is_the_global_batch(dataset):
  source = pipeline.DatasetSource(dataset, "train")
  counting = CountingSource(source)
  make = lambda rows, src=source: pipeline.make_local_batches(
      src, global_batch_size=12, rows=rows, seed=4, subject_weighting="equal")
  whole = make(slice(0, 12))
  parts = [make(pipeline.process_rows(12, p, 2)) for p in range(2)]
  for b in range(3):
    halves = [part[b] for part in parts]
    assert not set(halves[0]["stimulus_id"]) & set(halves[1]["stimulus_id"])
    for key in whole[b]:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[b][key])
  # Process 1 reads only its own positions: as many records as its rows, no more.
  make(pipeline.process_rows(12, 1, 2), counting)[0]
  assert len(counting.reads) == 6
  with pytest.raises(ValueError, match="not a multiple of the 5 processes"):
    pipeline.process_rows(12, 0, 5)


def test_single_process_reads_every_row(mesh):
  from jax.sharding import NamedSharding
  assert pipeline.sharding_rows(NamedSharding(mesh, P("data")), 16) == slice(0, 16)


# ----------------------------------------------------------------------------
# Subject mixing and epochs
# ----------------------------------------------------------------------------

def test_size_weighting_visits_every_record_once_per_epoch(dataset):
  source = pipeline.DatasetSource(dataset, "train")  # 60 records
  batches = pipeline.make_local_batches(source, global_batch_size=8, rows=slice(0, 8), seed=0,
                                        num_epochs=2)
  assert len(batches) == 120 // 8
  ids = np.concatenate([batches[b]["stimulus_id"] for b in range(len(batches))])
  subjects = np.concatenate([batches[b]["subject"] for b in range(len(batches))])
  assert len(set(ids[:60])) == 60 and len(set(ids[60:])) == 60  # no repeats within an epoch
  train_ids = {int(i) for rec in dataset.recordings for i in rec.stimulus_ids[rec.indices("train")]}
  assert set(ids.tolist()) == train_ids
  assert set(subjects.tolist()) == {0, 1, 2}
  for sid, s in zip(ids, subjects):
    assert owner(dataset, int(sid))[0] == s
  assert not np.array_equal(ids[:60], ids[60:])  # each epoch is reshuffled


def test_equal_weighting_gives_every_subject_the_same_share(dataset):
  source = pipeline.DatasetSource(dataset, "train")  # 30, 12, 18 train records
  batches = pipeline.make_local_batches(source, global_batch_size=12, rows=slice(0, 12),
                                        seed=1, subject_weighting="equal", response_mode="mean")
  counts = np.zeros(3, int)
  for b in range(10):
    batch = batches[b]
    counts += np.bincount(batch["subject"], minlength=3)
    for row in range(12):
      s, _ = owner(dataset, int(batch["stimulus_id"][row]))
      assert batch["subject"][row] == s
      k = dataset.recordings[s].num_neurons
      assert batch["neuron_mask"][row].sum() == k and (batch["response"][row, k:] == 0).all()
  np.testing.assert_array_equal(counts, [40, 40, 40])
  with pytest.raises(ValueError, match="subject_weighting"):
    pipeline.make_local_batches(source, global_batch_size=12, rows=slice(0, 12), seed=1,
                                subject_weighting="uniform")


def test_bad_arguments_are_reported(dataset):
  source = pipeline.DatasetSource(dataset, "train")
  with pytest.raises(ValueError, match="seed"):
    pipeline.make_local_batches(source, global_batch_size=4, rows=slice(0, 4), seed=-1)
  with pytest.raises(ValueError, match="do not fill one batch"):
    pipeline.make_local_batches(source, global_batch_size=64, rows=slice(0, 64), seed=0,
                                num_epochs=1)
  rec = make_recording(np.random.default_rng(0), 0, "x", 8, 1, 2)
  train_only = Dataset("t", (rec.subset(rec.indices("train")),))
  with pytest.raises(DataError, match="split 'test' holds no images"):
    pipeline.DatasetSource(train_only, "test")


# ----------------------------------------------------------------------------
# Evaluation arrays
# ----------------------------------------------------------------------------

def test_eval_arrays_hold_each_recordings_held_out_images(dataset):
  arrays = pipeline.eval_arrays(dataset, "test")
  assert [a.name for a in arrays] == ["a", "b", "c"] and [a.subject for a in arrays] == [0, 1, 2]
  for a, rec in zip(arrays, dataset.recordings):
    idx = rec.indices("test")
    np.testing.assert_array_equal(a.images, rec.images[idx])
    np.testing.assert_array_equal(a.responses, rec.responses[idx])
    np.testing.assert_array_equal(a.stimulus_ids, rec.stimulus_ids[idx])
    np.testing.assert_allclose(a.mean_responses, rec.mean_responses[idx])
    assert a.responses.shape == (len(idx), *rec.responses.shape[1:])


# Run by each of two real JAX processes (4 CPU devices each, one 8-device mesh).
_TWO_PROCESS_CHILD = """
import json, os, sys
process_id, port, tests_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process_id)
from jax.experimental import multihost_utils
sys.path.insert(0, tests_dir)
from toy_recordings import make_dataset
from jaxvna.data import pipeline
source = pipeline.DatasetSource(make_dataset(), "train")
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
batch = next(pipeline.make_train_iterator(source, global_batch_size=16, mesh=mesh, seed=2))
whole = pipeline.make_local_batches(source, global_batch_size=16, rows=slice(0, 16), seed=2)[0]
whole["stimulus_id"] = whole["stimulus_id"].astype(np.int32)
equal = {k: bool(np.array_equal(np.asarray(multihost_utils.process_allgather(v, tiled=True)),
                                whole[k])) for k, v in batch.items()}
local = np.concatenate([np.asarray(s.data) for s in batch["stimulus_id"].addressable_shards])
rows = pipeline.sharding_rows(batch["stimulus_id"].sharding, 16)
print("RESULT " + json.dumps({"rows": [rows.start, rows.stop], "equal": equal,
                              "local_ids": local.tolist()}), flush=True)
"""


def test_two_real_processes_each_read_their_half_of_the_global_batch():
  import os
  import pathlib
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  tests_dir = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONPATH=os.pathsep.join([str(tests_dir.parent),
                                         os.environ.get("PYTHONPATH", "")]))
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_CHILD, str(i), str(port),
                             str(tests_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  results = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=120)
      lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
      assert proc.returncode == 0 and lines, out[-3000:]
      results.append(json.loads(lines[-1][len("RESULT "):]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  assert [r["rows"] for r in results] == [[0, 8], [8, 16]]
  for r in results:
    assert all(r["equal"].values()), r["equal"]
  assert len(results[0]["local_ids"]) == len(results[1]["local_ids"]) == 8
  assert not set(results[0]["local_ids"]) & set(results[1]["local_ids"])
