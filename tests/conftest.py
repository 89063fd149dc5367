"""Test set-up: 8 fake CPU devices, and the real-data folder (skip or fail when absent)."""

import os
import pathlib

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# One compilation cache for the session, in-process and for the command-line runs the
# tests start: tests build the same tiny programs again and again (never the user-wide
# cache; test_cli checks that one with its own folder). JAXVNA_TEST_COMPILATION_CACHE=0
# compiles everything afresh.
if os.environ.get("JAXVNA_TEST_COMPILATION_CACHE", "1") != "0":
  _CACHE = tempfile.mkdtemp(prefix="jaxvna-test-compilation-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAXVNA_COMPILATION_CACHE"] = _CACHE
  import jax  # noqa: E402
  jax.config.update("jax_compilation_cache_dir", _CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
else:
  os.environ.setdefault("JAXVNA_COMPILATION_CACHE", "")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _real_data_dir():
  env = os.environ.get("JAXVNA_DATA_DIR")
  return pathlib.Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data_dir():
  """The folder of real recordings; skips (or fails under JAXVNA_REQUIRE_REAL_DATA=1)."""
  path = _real_data_dir()
  if not path.is_dir():
    msg = (f"real data folder {path} is absent (set JAXVNA_DATA_DIR to a folder holding "
           "cowley_v4/ and allen_v1_natural_scenes/)")
    if os.environ.get("JAXVNA_REQUIRE_REAL_DATA") == "1":
      pytest.fail(msg + "; JAXVNA_REQUIRE_REAL_DATA=1 requires it")
    pytest.skip(msg)
  return path


@pytest.fixture
def objective_single_and_sharded():
  """f(config, model, params, batch, *, step=None, **objective_kwargs) ->
  ((loss, metrics, grads) of the objective on one device, (loss, grads) of the same
  objective with the batch split over the 8-device "data" mesh), at rng key 7; `step` is
  passed to the objective when given."""
  import jax

  from jaxvna.training import train

  def run(config, model, params, batch, *, step=None, **objective_kwargs):
    extra = () if step is None else (step,)
    value = lambda f, p, bt: jax.value_and_grad(f, has_aux=True)(p, bt, jax.random.key(7),
                                                                 *extra)
    single = train.make_objective(config, model, None, **objective_kwargs)
    (loss1, metrics1), grads1 = jax.jit(lambda p, bt: value(single, p, bt))(params, batch)
    mesh = train.make_mesh()
    assert mesh.size == 8
    sharded = train.make_objective(config, model, mesh, **objective_kwargs)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with jax.set_mesh(mesh):
      (loss8, _), grads8 = jax.jit(lambda p, bt: value(sharded, p, bt))(
          params, jax.device_put(batch, sharding))
    return (loss1, metrics1, grads1), (loss8, grads8)

  return run
