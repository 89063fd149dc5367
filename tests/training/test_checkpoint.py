"""Tests of jaxvna.training.checkpoint: round trips, retention, damaged and unfinished
checkpoints, a save killed by SIGKILL, restoring onto another mesh, digests, workdir guard."""

import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

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
  monkeypatch.setattr(ckpt_lib, "_integrity_record",
                      lambda s: records.append(1) or {"leaves": []})
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
  path = _data_files(step_dir)[-1]
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
  deadline = time.monotonic() + 12
  killed_mid_save = False
  try:
    # Kill once two steps are finished, preferably while a third is being written.
    while time.monotonic() < deadline and child.poll() is None:
      names = os.listdir(directory) if directory.is_dir() else []
      finished = [n for n in names if n.isdigit()]
      killed_mid_save = any(".orbax-checkpoint-tmp" in n for n in names)
      if len(finished) >= 2 and killed_mid_save:
        break
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
