"""Tests of jaxvna.training.checkpoint: round trips, retention, per-shard checksums (and
the earlier whole-leaf format), damaged and unfinished checkpoints, a save killed by SIGKILL,
restoring onto another mesh, non-finite states, read-only opening, digests, workdir guard."""

import glob
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from jaxvna.errors import NonFiniteError
from jaxvna.training import checkpoint as ckpt_lib
from jaxvna.training.checkpoint import (CheckpointError, CheckpointFallbackWarning,
                                        Checkpointer, WorkdirConfigError, check_workdir,
                                        params_digest)

REPO = pathlib.Path(__file__).resolve().parents[2]

# When one array read of a damaged step fails, orbax abandons the step's other read
# coroutines; they are garbage-collected later (often during another test) and Python
# reports them as unraisable exceptions. They are expected here, not failures.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _mesh(n):
  return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Explicit,))


def _host_state(step):
  """A small state whose every value depends on `step` (f32, bf16, int32, uint32 leaves).

  The kernel is large enough (32 KiB) for orbax to keep it in a data file of its own.
  """
  rng = np.random.default_rng(step)
  return {
      "params": {"dense": {"kernel": rng.normal(size=(256, 32)).astype(np.float32),
                           "bias": rng.normal(size=(6,)).astype(jnp.bfloat16)}},
      "opt_count": np.int32(step),
      "rng": rng.integers(0, 2**32, size=(2,), dtype=np.uint32),
  }


def _put(host_state, mesh):
  """Puts the state on `mesh`: kernels split over "data", everything else replicated."""
  def put(path, x):
    spec = P("data", None) if jax.tree_util.keystr(path).endswith("['kernel']") else P()
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(put, host_state)


def _abstract(state_like, mesh):
  sharded = _put(jax.tree.map(np.asarray, state_like), mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      sharded)


def _assert_state_equal(restored, host_state):
  assert jax.tree.structure(restored) == jax.tree.structure(host_state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(host_state)):
    assert got.dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _save_steps(directory, steps, mesh, **kwargs):
  ckpt = Checkpointer(directory, **kwargs)
  for step in steps:
    assert ckpt.save(step, _put(_host_state(step), mesh), {"step": step, "data": [step, "x"]})
  ckpt.close()


# --- Round trip, retention, interval ---------------------------------------------------


def test_round_trip_restores_values_dtypes_step_and_meta(tmp_path):
  mesh = _mesh(8)
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.restore(_abstract(_host_state(0), mesh)) is None
    meta = {"step": 7, "config_hash": "abc", "iterator": {"pos": [1, 2]}}
    state = _put(_host_state(7), mesh)
    assert ckpt.save(7, state, meta)
    # An asynchronous save must hold its own copies: the trainer donates the state to
    # the next step and may change the meta dict.
    jax.tree.map(lambda x: x.delete(), state)
    meta["step"] = 999
    ckpt.wait()
    assert ckpt.latest_step() == 7
    step, state, restored_meta = ckpt.restore(_abstract(_host_state(0), mesh))
  assert step == 7
  assert restored_meta == {"step": 7, "config_hash": "abc", "iterator": {"pos": [1, 2]}}
  _assert_state_equal(state, _host_state(7))
  assert state["params"]["dense"]["kernel"].sharding == NamedSharding(mesh, P("data", None))


def test_keeps_only_the_newest_steps(tmp_path):
  _save_steps(tmp_path, [1, 2, 3, 4, 5], _mesh(8), max_to_keep=2, async_save=False)
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [4, 5]
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.all_steps() == [4, 5]
    step, state, meta = ckpt.restore(_abstract(_host_state(0), _mesh(8)))
  assert (step, meta["step"]) == (5, 5)
  _assert_state_equal(state, _host_state(5))


def test_save_interval_skips_steps_unless_forced(tmp_path, monkeypatch):
  state = _put(_host_state(0), _mesh(8))
  records = []
  start_copies = ckpt_lib._start_shard_copies
  monkeypatch.setattr(ckpt_lib, "_start_shard_copies",
                      lambda s: records.append(1) or start_copies(s))
  with Checkpointer(tmp_path, save_interval_steps=10) as ckpt:
    assert not ckpt.save(5, state, {})
    assert ckpt.save(10, state, {})
    assert ckpt.save(13, state, {}, force=True)
    assert not ckpt.save(12, state, {}, force=False)  # Not newer than the latest step.
    ckpt.wait()
    assert ckpt.all_steps() == [10, 13]
  assert len(records) == 2  # Skipped steps cost no host copy of the state.


def test_rejects_bad_meta_and_abstract_state_without_sharding(tmp_path):
  state = _put(_host_state(0), _mesh(8))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
      ckpt.save(1, state, {"array": np.zeros(2)})
    no_sharding = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    with pytest.raises(TypeError, match=r"\['opt_count'\].*sharding"):
      ckpt.restore(no_sharding)


# --- Damaged and unfinished checkpoints -------------------------------------------------


def _data_files(step_dir):
  """The step's array data files, largest (the kernel's chunks) last."""
  files = (glob.glob(os.path.join(step_dir, "state", "d", "*"))
           + glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*")))
  assert files, f"no array data files under {step_dir}"
  return sorted(files, key=os.path.getsize)


def _truncate_data(step_dir):
  path = _data_files(step_dir)[-1]
  os.truncate(path, os.path.getsize(path) // 2)


def _delete_data(step_dir):
  os.remove(_data_files(step_dir)[-1])


def _delete_index(step_dir):
  for path in glob.glob(os.path.join(step_dir, "state", "d", "*")):
    os.remove(path)


def _garble_meta(step_dir):
  pathlib.Path(step_dir, "meta", "metadata").write_bytes(b"\x00not json{")


def _garble_array_metadata(step_dir):
  pathlib.Path(step_dir, "state", "_METADATA").write_text("{garbage")


def _flip_bytes_inside_chunk(step_dir):
  # tensorstore reads such a chunk without complaint; only the sha256 record notices.
  _flip_bytes_inside_chunk_of(_data_files(step_dir)[-1])


def _flip_bytes_inside_chunk_of(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(8)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0x55 for b in chunk))


@pytest.mark.parametrize("damage,error", [
    (_truncate_data, "read"), (_delete_data, "read"), (_delete_index, ""),
    (_garble_meta, "JSONDecodeError"), (_garble_array_metadata, "JSONDecodeError"),
    (_flip_bytes_inside_chunk, r"CorruptCheckpointError: leaf \['params'\]\['dense'\]\['kernel'\]"),
])
def test_damaged_latest_falls_back_to_previous_step(tmp_path, damage, error):
  mesh = _mesh(8)
  _save_steps(tmp_path, [1, 2, 3], mesh)
  damage(str(tmp_path / "3"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.warns(CheckpointFallbackWarning,
                      match=rf"step 3 .*could not be restored \(.*{error}"):
      step, state, meta = ckpt.restore(_abstract(_host_state(0), mesh))
    assert (step, meta["step"]) == (2, 2)
    _assert_state_equal(state, _host_state(2))
    # The bad step was moved aside, so training can save step 3 again.
    assert not (tmp_path / "3").exists()
    assert len(glob.glob(str(tmp_path / f"3{ckpt_lib.CORRUPT_SUFFIX}*"))) == 1
    assert ckpt.latest_step() == 2
    assert ckpt.save(3, _put(_host_state(33), mesh), {"step": 3})
    ckpt.wait()
    step, state, _ = ckpt.restore(_abstract(_host_state(0), mesh))
  assert step == 3
  _assert_state_equal(state, _host_state(33))


def test_every_step_damaged_raises_listing_each(tmp_path):
  mesh = _mesh(8)
  _save_steps(tmp_path, [1, 2], mesh)
  # Damage that fails before any array read (a failed read leaves orbax coroutines that
  # Python reports, whenever they are collected, as "Exception ignored").
  _garble_array_metadata(str(tmp_path / "2"))
  _garble_meta(str(tmp_path / "1"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.warns(CheckpointFallbackWarning), \
        pytest.raises(CheckpointError, match=r"(?s)all 2 steps failed.*step 2: .*step 1: "):
      ckpt.restore(_abstract(_host_state(0), mesh))
  # Nothing is moved aside when nothing could be restored (the cause may be the caller's).
  assert (tmp_path / "1").is_dir() and (tmp_path / "2").is_dir()


def test_unfinished_save_folder_is_ignored_and_cleaned_up(tmp_path):
  mesh = _mesh(8)
  _save_steps(tmp_path, [1, 2], mesh)
  # What a save killed before its final rename leaves: a temporary folder with partial files.
  unfinished = tmp_path / "3.orbax-checkpoint-tmp-1700000000123456"
  (unfinished / "state").mkdir(parents=True)
  (unfinished / "state" / "_METADATA").write_text('{"tree_metadata": ')
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2
    step, state, _ = ckpt.restore(_abstract(_host_state(0), mesh))
  assert step == 2
  _assert_state_equal(state, _host_state(2))
  assert not unfinished.exists()


_SAVE_FOREVER = textwrap.dedent("""
    import sys
    import numpy as np, jax.numpy as jnp
    from jaxvna.training.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], max_to_keep=2)
    for step in range(1, 10_000):
      value = np.random.default_rng(step).normal(size=(2_000_000,)).astype(np.float32)
      ckpt.save(step, {"w": jnp.asarray(value), "step": jnp.int32(step)}, {"step": step})
    """)


def test_save_killed_by_sigkill_restores_a_complete_step(tmp_path):
  directory = tmp_path / "ckpt"
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  child = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(directory)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  # Kill once two steps are finished, preferably while a third is being written: the
  # child may take long to start on a loaded machine, so the wait for a save in flight
  # starts only once two steps are on disk.
  deadline = time.monotonic() + 180
  killed_mid_save = False
  try:
    while time.monotonic() < deadline and child.poll() is None:
      names = os.listdir(directory) if directory.is_dir() else []
      finished = [n for n in names if n.isdigit()]
      killed_mid_save = any(".orbax-checkpoint-tmp" in n for n in names)
      if len(finished) >= 2:
        if killed_mid_save:
          break
        deadline = min(deadline, time.monotonic() + 10)
      time.sleep(0.005)
  finally:
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate()
  assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
  steps_on_disk = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  assert len(steps_on_disk) >= 2, f"child saved too little before the kill: {steps_on_disk}"

  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=SingleDeviceSharding(
      jax.devices()[0])), "w": jax.ShapeDtypeStruct((2_000_000,), jnp.float32,
                                                    sharding=NamedSharding(_mesh(8), P("data")))}
  with Checkpointer(directory) as ckpt:
    step, state, meta = ckpt.restore(abstract)
  assert step == steps_on_disk[-1] and meta == {"step": step} and int(state["step"]) == step
  np.testing.assert_array_equal(
      np.asarray(state["w"]),
      np.random.default_rng(step).normal(size=(2_000_000,)).astype(np.float32))
  assert not glob.glob(str(directory / "*.orbax-checkpoint-tmp*"))
  print("killed while a save was in progress:", killed_mid_save)


# --- Another mesh ------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["mesh2", "single_device"])
def test_restores_state_saved_on_8_devices_onto_another_layout(tmp_path, target):
  _save_steps(tmp_path, [4], _mesh(8))
  if target == "mesh2":
    mesh = _mesh(2)
    abstract = _abstract(_host_state(0), mesh)
    want_kernel_sharding = NamedSharding(mesh, P("data", None))
  else:
    device = jax.devices()[0]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), np.asarray(x).dtype, sharding=SingleDeviceSharding(device)),
                            _host_state(0))
    want_kernel_sharding = SingleDeviceSharding(device)
  with Checkpointer(tmp_path) as ckpt:
    step, state, _ = ckpt.restore(abstract)
  assert step == 4
  _assert_state_equal(state, _host_state(4))
  kernel = state["params"]["dense"]["kernel"]
  assert kernel.sharding == want_kernel_sharding
  assert len(kernel.sharding.device_set) == (2 if target == "mesh2" else 1)


# --- Per-shard checksums ---------------------------------------------------------------


def _records(step_dir):
  return {p.name: json.loads(p.read_text())
          for p in pathlib.Path(step_dir, ckpt_lib.CHECKSUMS_ITEM).glob("process_*.json")}


def test_checksums_are_written_per_process_and_name_shard_indices(tmp_path):
  _save_steps(tmp_path, [1], _mesh(8))
  records = _records(tmp_path / "1")
  assert list(records) == ["process_0.json"]
  record = records["process_0.json"]
  assert (record["format"], record["process_index"], record["process_count"]) == (
      ckpt_lib.CHECKSUMS_FORMAT, 0, 1)
  assert not (tmp_path / "1" / ckpt_lib.LEGACY_INTEGRITY_ITEM).exists()
  host = _host_state(1)
  by_path = {}
  for shard in record["shards"]:
    by_path.setdefault(shard["path"], []).append(shard)
  kernel = by_path["['params']['dense']['kernel']"]
  # Split over 8 devices: one record per distinct shard, named by its global bounds.
  assert sorted(tuple(map(tuple, s["index"])) for s in kernel) == [
      ((32 * i, 32 * (i + 1)), (0, 32)) for i in range(8)]
  for shard in kernel:
    (r0, r1), _ = shard["index"]
    assert (shard["dtype"], shard["shape"]) == ("float32", [256, 32])
    assert shard["sha256"] == ckpt_lib._sha256(host["params"]["dense"]["kernel"][r0:r1])
  # Replicated over 8 devices: one record (replica 0) of the whole array.
  bias = by_path["['params']['dense']['bias']"]
  assert [(s["dtype"], s["shape"], s["index"]) for s in bias] == [("bfloat16", [6], [[0, 6]])]
  assert bias[0]["sha256"] == ckpt_lib._sha256(host["params"]["dense"]["bias"])
  assert [(s["shape"], s["index"]) for s in by_path["['opt_count']"]] == [([], [])]
  assert len(record["shards"]) == 8 + 3


def test_save_hashes_in_the_background_and_never_gathers(tmp_path, monkeypatch):
  from jax.experimental import multihost_utils
  def refuse(*args, **kwargs):
    raise AssertionError("save must not gather arrays across processes")
  monkeypatch.setattr(multihost_utils, "process_allgather", refuse)
  threads = []
  sha256 = ckpt_lib._sha256
  monkeypatch.setattr(ckpt_lib, "_sha256",
                      lambda a: threads.append(threading.current_thread()) or sha256(a))
  mesh = _mesh(8)
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(1, _put(_host_state(1), mesh), {"step": 1})
    ckpt.wait()
    assert threads and threading.main_thread() not in threads
    step, state, _ = ckpt.restore(_abstract(_host_state(0), mesh))
  assert step == 1
  _assert_state_equal(state, _host_state(1))


def test_accelerator_path_copies_shards_to_pinned_host_memory(tmp_path, monkeypatch):
  # What accelerators do (CPU devices offer a "pinned_host" memory too): the copies are
  # arrays of their own, so the caller may delete or donate the state after `save`.
  monkeypatch.setattr(ckpt_lib, "_is_host_memory", lambda device: False)
  mesh = _mesh(8)
  state = _put(_host_state(5), mesh)
  pending = ckpt_lib._start_shard_copies(state)
  assert len(pending) == 8 + 3
  assert all(isinstance(p.data, jax.Array) and p.data.sharding.memory_kind == "pinned_host"
             for p in pending)
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(5, state, {"step": 5})
    jax.tree.map(lambda x: x.delete(), state)
    ckpt.wait()
    step, restored, _ = ckpt.restore(_abstract(_host_state(0), mesh))
  assert step == 5
  _assert_state_equal(restored, _host_state(5))


@pytest.mark.parametrize("target", ["mesh8", "mesh2", "replicated", "single_device"])
def test_flipped_byte_is_caught_whatever_the_restored_layout(tmp_path, target):
  _save_steps(tmp_path, [1, 2], _mesh(8))
  _flip_bytes_inside_chunk(str(tmp_path / "2"))
  if target == "replicated":
    mesh = _mesh(4)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), np.asarray(x).dtype, sharding=NamedSharding(mesh, P())), _host_state(0))
  elif target == "single_device":
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), np.asarray(x).dtype, sharding=SingleDeviceSharding(jax.devices()[5])),
                            _host_state(0))
  else:
    abstract = _abstract(_host_state(0), _mesh(8 if target == "mesh8" else 2))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.warns(CheckpointFallbackWarning,
                      match=r"step 2 .*CorruptCheckpointError: leaf \['params'\]\['dense'\]"
                            r"\['kernel'\] .*shard .*previous step"):
      step, state, _ = ckpt.restore(abstract)
  assert step == 1
  _assert_state_equal(state, _host_state(1))


def test_restoring_onto_a_finer_split_checks_every_shard_in_one_process(tmp_path):
  # Saved on 2 devices, restored on 8: no restored shard holds a saved one, but the
  # process holds the whole array.
  _save_steps(tmp_path, [1, 2], _mesh(2))
  _flip_bytes_inside_chunk(str(tmp_path / "2"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.warns(CheckpointFallbackWarning, match=r"step 2 .*CorruptCheckpointError"):
      step, state, _ = ckpt.restore(_abstract(_host_state(0), _mesh(8)))
  assert step == 1
  _assert_state_equal(state, _host_state(1))


@pytest.mark.parametrize("saved,restored,caught", [(8, 8, True), (8, 2, True), (8, 1, True),
                                                   (2, 8, False)])
def test_processes_sharing_an_array_check_the_records_inside_their_shards(
    tmp_path, monkeypatch, saved, restored, caught):
  # What each process of a multi-process restore checks: only its replica-0 shards, so a
  # recorded shard is checked when one restored shard holds it whole (same or coarser
  # split); a finer split is not checked (see the module docstring).
  monkeypatch.setattr(ckpt_lib, "_local_pieces", ckpt_lib._replica0_pieces)
  _save_steps(tmp_path, [1, 2], _mesh(saved))
  _flip_bytes_inside_chunk(str(tmp_path / "2"))
  with Checkpointer(tmp_path) as ckpt:
    if caught:
      with pytest.warns(CheckpointFallbackWarning, match=r"step 2 .*CorruptCheckpointError"):
        step, _, _ = ckpt.restore(_abstract(_host_state(0), _mesh(restored)))
      assert step == 1
    else:
      step, state, _ = ckpt.restore(_abstract(_host_state(0), _mesh(restored)))
      assert step == 2
      kernel = np.asarray(state["params"]["dense"]["kernel"])
      assert not np.array_equal(kernel, _host_state(2)["params"]["dense"]["kernel"])


def _edit_record(step_dir, edit):
  path = pathlib.Path(step_dir, ckpt_lib.CHECKSUMS_ITEM, "process_0.json")
  record = json.loads(path.read_text())
  edit(record)
  path.write_text(json.dumps(record))


def _drop_first_kernel_shard(record):
  record["shards"] = [s for s in record["shards"]
                      if not (s["path"].endswith("['kernel']") and s["index"][0][0] == 0)]


@pytest.mark.parametrize("damage,error", [
    (lambda d: os.remove(os.path.join(d, ckpt_lib.CHECKSUMS_ITEM, "process_0.json")),
     "checksum records are missing"),
    (lambda d: _edit_record(d, lambda r: r.update(process_count=2)),
     r"checksum records are incomplete \(files of processes \[0\] of a run of 2 "),
    (lambda d: _edit_record(d, _drop_first_kernel_shard),
     r"kernel'\]: the checksum records cover 7168 of its 8192 elements"),
    (lambda d: _edit_record(d, lambda r: r.update(shards=r["shards"][:1])),
     r"leaf \['params'\]\['dense'\]\['bias'\] has no integrity record"),
    (lambda d: shutil.rmtree(os.path.join(d, ckpt_lib.CHECKSUMS_ITEM)),
     "integrity record is missing"),
])
def test_incomplete_checksum_records_make_a_step_corrupt(tmp_path, damage, error):
  mesh = _mesh(8)
  _save_steps(tmp_path, [1, 2], mesh)
  damage(str(tmp_path / "2"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.warns(CheckpointFallbackWarning, match=rf"step 2 .*{error}"):
      step, _, _ = ckpt.restore(_abstract(_host_state(0), mesh))
  assert step == 1


def _save_legacy_steps(directory, steps, mesh):
  """Steps in the earlier format: an `integrity` JSON item of whole-leaf sha256 records,
  written through orbax as the earlier Checkpointer did."""
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False))
  for step in steps:
    host = _host_state(step)
    record = {"leaves": [
        {"path": jax.tree_util.keystr(path), "dtype": np.asarray(x).dtype.name,
         "shape": list(np.shape(x)), "sha256": hashlib.sha256(
             np.ascontiguousarray(x).reshape(-1).view(np.uint8)).hexdigest()}
        for path, x in jax.tree_util.tree_flatten_with_path(host)[0]]}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_put(host, mesh)),
        meta=ocp.args.JsonSave({"step": step}), integrity=ocp.args.JsonSave(record)))
  manager.wait_until_finished()
  manager.close()


@pytest.mark.parametrize("restore_mesh", [8, 1])
def test_checkpoint_of_the_earlier_format_restores_and_is_verified(tmp_path, restore_mesh):
  _save_legacy_steps(tmp_path, [1, 2], _mesh(8))
  assert (tmp_path / "2" / "integrity" / "metadata").is_file()
  with Checkpointer(tmp_path) as ckpt:
    step, state, meta = ckpt.restore(_abstract(_host_state(0), _mesh(restore_mesh)))
  assert (step, meta) == (2, {"step": 2})
  _assert_state_equal(state, _host_state(2))

  _flip_bytes_inside_chunk(str(tmp_path / "2"))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.warns(CheckpointFallbackWarning,
                      match=r"step 2 .*CorruptCheckpointError: leaf \['params'\]\['dense'\]"
                            r"\['kernel'\]"):
      step, state, _ = ckpt.restore(_abstract(_host_state(0), _mesh(restore_mesh)))
    assert step == 1
    _assert_state_equal(state, _host_state(1))
    # New steps in the same directory are written in the current format.
    assert ckpt.save(3, _put(_host_state(3), _mesh(8)), {"step": 3})
    ckpt.wait()
    assert list(_records(tmp_path / "3")) == ["process_0.json"]
    step, state, _ = ckpt.restore(_abstract(_host_state(0), _mesh(restore_mesh)))
  assert step == 3
  _assert_state_equal(state, _host_state(3))


_TWO_PROCESSES = textwrap.dedent("""
    import json, sys, warnings
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2,
                               process_id=int(sys.argv[3]))
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxvna.training.checkpoint import Checkpointer, CheckpointFallbackWarning
    directory, phase = sys.argv[1], sys.argv[4]
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    split, replicated = NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P())
    def host(step):
      # Random bits do not compress: zstd stores them as they are, so a flipped byte goes
      # unnoticed by orbax (a garbled compressed chunk fails to decode on the one process
      # that reads it, inside orbax's restore, before the barrier that closes it).
      rng = np.random.default_rng(step)
      return (rng.integers(0, 2**32, size=(256, 32), dtype=np.uint32),
              np.full(6, step, np.float32))
    if phase == "save":
      with Checkpointer(directory) as ckpt:
        for step in (1, 2):
          kernel, bias = host(step)
          ckpt.save(step, {
              "kernel": jax.make_array_from_callback(kernel.shape, split, lambda i: kernel[i]),
              "bias": jax.make_array_from_callback(bias.shape, replicated, lambda i: bias[i])},
              {"step": step})
    else:
      abstract = {"kernel": jax.ShapeDtypeStruct((256, 32), np.uint32, sharding=split),
                  "bias": jax.ShapeDtypeStruct((6,), np.float32, sharding=replicated)}
      with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", CheckpointFallbackWarning)
        with Checkpointer(directory) as ckpt:
          step, restored, _ = ckpt.restore(abstract)
      kernel, bias = host(step)
      print("RESULT " + json.dumps({
          "step": step, "warnings": [str(w.message) for w in warned
                                     if w.category is CheckpointFallbackWarning],
          "values_ok": all(np.array_equal(np.asarray(s.data), kernel[s.index])
                           for s in restored["kernel"].addressable_shards)
                       and np.array_equal(np.asarray(restored["bias"]), bias)}), flush=True)
    """)


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(directory, phase, logs):
  """Runs _TWO_PROCESSES as 2 processes x 2 CPU devices; returns their outputs."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  address = f"127.0.0.1:{_free_port()}"
  paths = [logs / f"{phase}-process{i}.log" for i in range(2)]
  children = []
  try:
    for i, path in enumerate(paths):
      with open(path, "w") as out:  # A file, not a pipe: a full pipe would block a child.
        children.append(subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESSES, str(directory), address, str(i), phase],
            env=env, stdout=out, stderr=subprocess.STDOUT))
    for child in children:
      child.wait(timeout=180)  # A process waiting on a collective its peer left: a failure.
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()
        child.wait()
  texts = [path.read_text() for path in paths]
  for child, text in zip(children, texts):
    assert child.returncode == 0, text[-3000:]
  return texts


def test_two_processes_write_their_own_records_and_fall_back_together(tmp_path):
  directory = tmp_path / "ckpt"
  _run_two_processes(directory, "save", tmp_path)

  # Each process recorded its own replica-0 shards: process 0 the kernel's first half and
  # the replicated bias (its replica 0 is on process 0's first device), process 1 the rest.
  records = _records(directory / "2")
  assert sorted(records) == ["process_0.json", "process_1.json"]
  index = {name: sorted((s["path"], tuple(map(tuple, s["index"]))) for s in r["shards"])
           for name, r in records.items()}
  assert index["process_0.json"] == [("['bias']", ((0, 6),)),
                                     ("['kernel']", ((0, 64), (0, 32))),
                                     ("['kernel']", ((64, 128), (0, 32)))]
  assert index["process_1.json"] == [("['kernel']", ((128, 192), (0, 32))),
                                     ("['kernel']", ((192, 256), (0, 32)))]
  assert [(records[f"process_{i}.json"]["process_index"],
           records[f"process_{i}.json"]["process_count"]) for i in (0, 1)] == [(0, 2), (1, 2)]

  # Damage a chunk that process 1 wrote: only process 1 restores (and checks) it, and
  # both processes must fall back together.
  files = glob.glob(str(directory / "2" / "state" / "ocdbt.process_1" / "d" / "*"))
  _flip_bytes_inside_chunk_of(max(files, key=os.path.getsize))
  results = [json.loads(next(l for l in text.splitlines() if l.startswith("RESULT "))[7:])
             for text in _run_two_processes(directory, "restore", tmp_path)]
  assert [(r["step"], r["values_ok"]) for r in results] == [(1, True), (1, True)]
  assert re.search(r"step 2 .*leaf \['kernel'\] .*shard \[\[(128|192), ",
                   results[1]["warnings"][0]), results[1]["warnings"]
  assert "process 1 could not restore or verify this step" in results[0]["warnings"][0], \
      results[0]["warnings"]
  assert len(glob.glob(str(directory / f"2{ckpt_lib.CORRUPT_SUFFIX}*"))) == 1


# --- Non-finite states, messages, read-only opening ---------------------------------------


def _listing(directory):
  return sorted(str(p.relative_to(directory)) for p in pathlib.Path(directory).rglob("*"))


def test_non_finite_state_is_refused_and_nothing_is_written(tmp_path):
  mesh = _mesh(8)
  _save_steps(tmp_path, [1], mesh)
  host = _host_state(2)
  host["params"]["dense"]["kernel"][200, 3] = np.nan  # In the 7th device's shard.
  host["params"]["dense"]["bias"][1] = np.inf  # Replicated over 8 devices.
  with Checkpointer(tmp_path) as ckpt:
    before = _listing(tmp_path)
    with pytest.raises(NonFiniteError, match=r"2 leaves: \['params'\]\['dense'\]\['bias'\], "
                                              r"\['params'\]\['dense'\]\['kernel'\]$"):
      ckpt.save(2, _put(host, mesh), {"step": 2}, force=True)
    ckpt.wait()
    assert _listing(tmp_path) == before
    # Integer leaves are not checked; a finite state on another layout saves.
    assert ckpt.save(3, {"w": jnp.ones((3,)), "n": jnp.int32(-1)}, {"step": 3})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 3]


def test_only_step_failing_says_there_is_no_earlier_step(tmp_path):
  mesh = _mesh(8)
  _save_steps(tmp_path, [1], mesh, max_to_keep=1)
  _garble_meta(str(tmp_path / "1"))
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    with pytest.warns(CheckpointFallbackWarning) as warned, \
        pytest.raises(CheckpointError, match=r"(?s)could be restored \(its only step "
                                             r"failed\):\n  step 1: JSONDecodeError"):
      ckpt.restore(_abstract(_host_state(0), mesh))
  messages = [str(w.message) for w in warned]
  assert len(messages) == 1 and "there is no earlier step to fall back to" in messages[0]
  assert "previous step" not in messages[0]


def test_open_without_create_makes_nothing_and_leaves_unfinished_saves(tmp_path):
  missing = tmp_path / "run" / "checkpoints"
  with Checkpointer(missing, create=False) as ckpt:
    assert ckpt.restore(_abstract(_host_state(0), _mesh(8))) is None
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError, match="create=False"):
      ckpt.save(1, {"w": jnp.ones(2)}, {})
  assert list(tmp_path.iterdir()) == []

  _save_steps(tmp_path, [1], _mesh(8))
  unfinished = tmp_path / "2.orbax-checkpoint-tmp-1700000000123456"
  unfinished.mkdir()  # Perhaps a save that another process is writing now.
  with Checkpointer(tmp_path, create=False) as ckpt:
    step, state, _ = ckpt.restore(_abstract(_host_state(0), _mesh(8)))
  assert step == 1
  _assert_state_equal(state, _host_state(1))
  assert unfinished.is_dir()


# --- params_digest --------------------------------------------------------------------


def test_params_digest_ignores_sharding_and_sees_every_change():
  host = _host_state(1)
  digest = params_digest(host)
  assert len(digest) == 64
  assert params_digest(_put(host, _mesh(8))) == digest
  assert params_digest(_put(host, _mesh(2))) == digest
  assert params_digest(jax.device_put(host, jax.devices()[3])) == digest

  changed_value = jax.tree.map(np.copy, host)
  changed_value["params"]["dense"]["kernel"][3, 2] += 1e-6
  changed_dtype = dict(host, opt_count=np.int64(1))
  changed_shape = dict(host, rng=host["rng"].reshape(1, 2))
  renamed = dict(host, opt_step=host["opt_count"])
  del renamed["opt_count"]
  digests = {params_digest(t) for t in (changed_value, changed_dtype, changed_shape, renamed)}
  assert digest not in digests and len(digests) == 4


def test_params_digest_of_typed_prng_key_uses_its_data():
  key = jax.random.key(3)
  assert params_digest({"k": key}) == params_digest({"k": jax.random.key_data(key)})
  assert params_digest({"k": key}) != params_digest({"k": jax.random.key(4)})


# --- check_workdir ----------------------------------------------------------------------


def _config(**train):
  return {"model": {"name": "clip", "widths": (512, 256)},
          "train": {"lr": 1e-3, "steps": 100, "checkpoint_every": 10, **train},
          "eval": {"every": 50}}


def test_check_workdir_writes_then_accepts_same_or_resumable_changes(tmp_path):
  workdir = tmp_path / "run"
  check_workdir(workdir, _config())
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["model"]["widths"] == [512, 256] and stored["train"]["steps"] == 100
  check_workdir(workdir, _config())
  check_workdir(workdir, dict(_config(steps=300, checkpoint_every=5), eval={"every": 7}))
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 300
  assert [p.name for p in workdir.iterdir()] == ["config.json"]  # No temporary file left.


def test_check_workdir_rejects_another_config_naming_the_keys(tmp_path):
  check_workdir(tmp_path, _config())
  other = _config(lr=1e-2, steps=500, warmup=10)
  with pytest.raises(WorkdirConfigError) as info:
    check_workdir(tmp_path, other)
  message = str(info.value)
  assert "train.lr: stored 0.001, now 0.01" in message
  assert "train.warmup: stored '<absent>', now 10" in message
  assert "train.steps" not in message and "force" in message
  assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 1e-3
  check_workdir(tmp_path, other, force=True)
  assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 1e-2


def test_check_workdir_custom_resumable_patterns_and_unreadable_file(tmp_path):
  check_workdir(tmp_path, _config())
  changed = dict(_config(), model={"name": "clip", "widths": (64,)})
  with pytest.raises(WorkdirConfigError, match="model.widths"):
    check_workdir(tmp_path, changed)
  check_workdir(tmp_path, changed, resumable_keys=("*.widths",))
  with pytest.raises(WorkdirConfigError, match="train.steps"):
    check_workdir(tmp_path, _config(steps=1), resumable_keys=())
  (tmp_path / "config.json").write_text("{half")
  with pytest.raises(WorkdirConfigError, match="unreadable"):
    check_workdir(tmp_path, _config())
