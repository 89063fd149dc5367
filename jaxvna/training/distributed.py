"""Multi-process runs: joining the processes of one job before JAX computes anything.

A multi-process run is N copies of the same command, one per host (or per accelerator
group), that together own every device of the job: `jax.devices()` lists all of them,
`jax.local_devices()` this process's. The trainer then builds one mesh over all devices,
each process reads only the rows of each batch that its devices hold, and checkpoints
are written and restored by all processes together.

Settings come from arguments (the CLI's flags) or, where an argument is None, from
the environment:

  JAXVNA_COORDINATOR_ADDRESS  "host:port" of process 0
  JAXVNA_NUM_PROCESSES        N
  JAXVNA_PROCESS_ID           this process's index in [0, N)
  JAXVNA_DISTRIBUTED=1        join a cluster whose settings JAX detects itself (Cloud
                              TPU pods, SLURM, Open MPI, ...); values given explicitly
                              still take precedence
  JAXVNA_LOCAL_DEVICE_COUNT   CPU devices per process (testing on one machine)

With none of them a run is a single process.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

ENV_PREFIX = "JAXVNA_"


@dataclasses.dataclass(frozen=True)
class Settings:
  """How this process joins a run (None: not given)."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False  # let JAX detect the cluster's settings
  local_device_count: int | None = None

  @property
  def multi_process(self) -> bool:
    """True when this process must join others through `jax.distributed.initialize`."""
    return (self.auto or (self.num_processes or 1) > 1 or self.coordinator_address is not None
            or (self.process_id or 0) > 0)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(ENV_PREFIX + name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{ENV_PREFIX}{name}={value!r} is not an integer") from None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, *, auto: bool = False,
            local_device_count: int | None = None,
            environ: Mapping[str, str] | None = None) -> Settings:
  """The settings of this process: arguments first, then the environment; validated.

  Args:
    coordinator_address: "host:port" where process 0 serves the others (the same
      string in every process).
    num_processes: how many processes the run has.
    process_id: this process's index in [0, num_processes).
    auto: let `jax.distributed.initialize` detect what is not given (Cloud TPU, SLURM,
      Open MPI); without it, a multi-process run needs all three values above.
    local_device_count: CPU devices per process (None: JAX's default).
    environ: the environment to read (default `os.environ`).

  Returns:
    The `Settings`; `multi_process` is False when nothing asks for several processes.

  Raises:
    ValueError: inconsistent settings (a process id outside [0, num_processes), several
      processes without a coordinator address, a coordinator without a process count or
      id, counts below 1).
  """
  environ = os.environ if environ is None else environ
  if coordinator_address is None:
    coordinator_address = environ.get(ENV_PREFIX + "COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int(environ, "NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int(environ, "PROCESS_ID")
  if local_device_count is None:
    local_device_count = _env_int(environ, "LOCAL_DEVICE_COUNT")
  auto = auto or environ.get(ENV_PREFIX + "DISTRIBUTED", "").lower() in ("1", "true", "yes")
  settings = Settings(coordinator_address, num_processes, process_id, auto, local_device_count)

  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if local_device_count is not None and local_device_count < 1:
    raise ValueError(f"local_device_count must be >= 1, got {local_device_count}")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} is outside [0, num_processes={num_processes})"
                     " (process ids are 0, 1, ..., num_processes - 1)")
  if process_id is not None and process_id < 0:
    raise ValueError(f"process_id must be >= 0, got {process_id}")
  if settings.multi_process and not auto:
    # Without cluster detection, every process must be told all three.
    missing = [name for name, value in (("coordinator_address", coordinator_address),
                                        ("num_processes", num_processes),
                                        ("process_id", process_id)) if value is None]
    if missing:
      raise ValueError(
          f"a multi-process run needs {', '.join(missing)} (flags --{' --'.join(missing)} or "
          f"environment {', '.join(ENV_PREFIX + m.upper() for m in missing)}); on a cluster "
          "that JAX can detect (Cloud TPU, SLURM, Open MPI) pass --distributed instead")
  return settings


def initialize(settings: Settings) -> None:
  """Applies `settings`: CPU device count, CPU collectives, `jax.distributed.initialize`.

  Must run before JAX initialises its backends (before any computation, `jax.devices()`
  included). A single-process run only sets the CPU device count, if given.
  """
  import jax
  if settings.local_device_count is not None:
    jax.config.update("jax_num_cpu_devices", settings.local_device_count)
  if not settings.multi_process:
    return
  # Collectives between processes on CPU go through gloo over TCP; accelerators use their
  # own interconnect and ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                             num_processes=settings.num_processes,
                             process_id=settings.process_id)


def is_primary() -> bool:
  """True in the process that writes the run's logs and results (process 0)."""
  import jax
  return jax.process_index() == 0
