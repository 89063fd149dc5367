"""Test set-up: 8 fake CPU devices, and the real-data folder (skip or fail when absent)."""

import os
import pathlib

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

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
