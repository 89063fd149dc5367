"""One live run per workdir, and no workdir that holds files jaxvna did not write.

    with workdir_lock.hold(workdir, command="train"):
      ...  # this process alone writes in workdir

`hold` creates `workdir/.jaxvna-lock` with O_CREAT|O_EXCL (atomic on local and network
filesystems). The file is one JSON object naming its holder:

    {"host": ..., "pid": ..., "start_time": ..., "pid_ns": ..., "command": ...,
     "argv": [...], "since": ..., "token": ...}

`start_time` is the process's start in clock ticks since boot (/proc/<pid>/stat field 22)
and `pid_ns` its pid namespace, both null where /proc is absent; with `pid` they tell the
holder apart from a later process that was given the same pid. `token` makes each
acquisition's content unique. The file is removed on leaving `hold` (exception or not),
only if it still holds this acquisition's content.

A second run is refused at once with `WorkdirLockedError` and writes nothing. A lock is
taken over only when its holder is provably gone: same host and pid namespace, and its pid
is dead or now belongs to a process started at another time. A holder on another host is
never presumed gone (the message says which file to delete by hand). A lock file that is
not valid JSON (its writer killed between creating and writing it) counts as held for
`GRACE_S` seconds after its mtime, and as stale after.

Taking over survives a kill at any point and two runs racing for the same stale lock:
the stale file is renamed to `.jaxvna-lock.aside-<machine>-<pid>-<start>-<random>`, a name
that tells which process renamed it (atomic: of two racers, one rename fails); the renamed
file is checked to be the very file judged stale (else it is a lock just created by
another run, and is linked back), then removed, and the lock is created as usual. Renamed files left by a killed take-over block nobody
and are removed by the next acquisition once their renamer is provably gone.

`hold` is reentrant within a process (the outermost exit releases). Before taking the
lock it refuses (`RefusedPathError`) a workdir that exists and holds files jaxvna did not
write; a workdir that jaxvna claims (missing, empty, or an earlier run's) gets the marker
file `workdir/.jaxvna-workdir`, JSON naming the jaxvna version and command that created it.
In a multi-process run process 0 alone holds the lock, for all processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import shlex
import socket
import sys
import threading
import time
import uuid
import warnings
from typing import Iterator

from jaxvna.errors import RefusedPathError, UserError

LOCK_FILE = ".jaxvna-lock"
MARKER_FILE = ".jaxvna-workdir"
ASIDE_PREFIX = LOCK_FILE + ".aside-"
GRACE_S = 10.0  # how long an unreadable lock file counts as being written
_ATTEMPTS = 20  # each failed attempt means another run changed the lock meanwhile


class WorkdirLockedError(UserError):
  """Another live run (or one that cannot be proven ended) holds the workdir."""


@dataclasses.dataclass
class _Held:
  pid: int  # a forked child inherits this table but not the lock
  content: bytes
  count: int


_held: dict[str, _Held] = {}  # realpath of workdir -> this process's hold
_mutex = threading.RLock()  # one acquisition or release at a time within a process


# ----------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------

def _probe(pid: int) -> tuple[bool, int | None]:
  """(alive, start time in clock ticks or None where unknown) of process `pid` here."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      stat = f.read()
    # Fields after the command name, which may itself hold spaces and parentheses.
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):  # exited, not yet reaped
      return False, None
    return True, int(fields[19])
  except (OSError, ValueError, IndexError):
    pass
  # No /proc, or the pid is hidden from us (hidepid): ask the kernel if it exists.
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False, None
  except PermissionError:
    pass  # exists, owned by another user
  return True, None


def _pid_namespace() -> str | None:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def _me() -> dict:
  """This process as the lock file names it (without command, time and token)."""
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "start_time": _probe(os.getpid())[1], "pid_ns": _pid_namespace()}


def _same_machine(holder: dict, me: dict) -> bool:
  # Another pid namespace (container) on the same host sees other processes.
  return holder["host"] == me["host"] and holder.get("pid_ns") == me["pid_ns"]


def _gone(holder: dict, me: dict) -> bool:
  """True when the process `holder` names has provably ended."""
  if not _same_machine(holder, me):
    return False
  alive, start = _probe(holder["pid"])
  if not alive:
    return True
  recorded = holder.get("start_time")
  return recorded is not None and start is not None and start != recorded


# ----------------------------------------------------------------------------
# The lock file
# ----------------------------------------------------------------------------

def _parse(content: bytes) -> dict | None:
  """The holder a lock file names, or None when the content is not a valid lock."""
  try:
    holder = json.loads(content)
  except ValueError:
    return None
  if (not isinstance(holder, dict) or not isinstance(holder.get("host"), str)
      or type(holder.get("pid")) is not int or holder["pid"] <= 0
      or type(holder.get("start_time")) not in (int, type(None))):
    return None
  return holder


def _read(path: str) -> tuple[bytes, os.stat_result] | None:
  """(content, stat) of one file, read through one descriptor; None when it is absent."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    with os.fdopen(fd, "rb") as f:
      return f.read(), os.fstat(f.fileno())
  except FileNotFoundError:
    return None


def _identity(content: bytes, stat: os.stat_result) -> tuple:
  # Content alone is not enough: an empty lock file just created equals an empty stale one.
  return content, stat.st_dev, stat.st_ino, stat.st_mtime_ns


def _one_line(text: str, limit: int = 200) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(holder: dict) -> str:
  argv, command = holder.get("argv"), holder.get("command")
  running = [_one_line(str(command), 60)] if command else []
  if isinstance(argv, list):
    running.append(f"`{_one_line(shlex.join(map(str, argv)))}`")
  return (f"pid {holder['pid']} on host {holder['host']}, running "
          f"{' '.join(running) or '?'} since {holder.get('since', '?')}")


def _refusal(workdir: str, lock: str, holder: dict | None, me: dict) -> WorkdirLockedError:
  if holder is None:
    return WorkdirLockedError(
        f"workdir {workdir} is locked by a run whose lock file {lock} is being written or "
        f"is damaged; retry in {GRACE_S:.0f} s, or choose another workdir")
  message = f"workdir {workdir} is in use by another jaxvna run: {_describe(holder)}"
  if not _same_machine(holder, me):
    where = ("another host" if holder["host"] != me["host"]
             else "another pid namespace (container)")
    return WorkdirLockedError(
        f"{message}; jaxvna cannot check a process on {where}: if that run has ended, "
        f"delete {lock} by hand, else choose another workdir")
  return WorkdirLockedError(f"{message}; wait for it to end or choose another workdir")


def _aside_name(me: dict) -> str:
  # The name tells a later acquisition whose take-over it was, to judge it abandoned.
  machine = hashlib.sha256(f"{me['host']}\0{me['pid_ns']}".encode()).hexdigest()[:12]
  return f"{ASIDE_PREFIX}{machine}-{me['pid']}-{me['start_time']}-{uuid.uuid4().hex[:8]}"


def _aside_abandoned(name: str, me: dict) -> bool:
  """True for a renamed stale lock whose take-over has provably ended."""
  try:
    machine, pid, start, _ = name[len(ASIDE_PREFIX):].split("-")
    pid = int(pid)
  except ValueError:
    return False
  mine = _aside_name(me)[len(ASIDE_PREFIX):].split("-")
  if machine != mine[0]:
    return False  # another host's take-over, perhaps in flight
  if pid == me["pid"]:
    return True  # _mutex: no take-over of this process is in flight
  alive, now = _probe(pid)
  return not alive or (start != "None" and now is not None and str(now) != start)


def _take_away(workdir: str, lock: str, judged: tuple, me: dict) -> None:
  """Removes the stale lock `judged` unless another run replaced it meanwhile."""
  aside = os.path.join(workdir, _aside_name(me))
  try:
    os.rename(lock, aside)
  except FileNotFoundError:
    return  # another run took it away first
  moved = _read(aside)
  if moved is not None and _identity(*moved) != judged:
    # A live lock, created after the judgement: put it back (link fails if a lock exists).
    with contextlib.suppress(FileExistsError, FileNotFoundError):
      os.link(aside, lock)
  with contextlib.suppress(FileNotFoundError):
    os.unlink(aside)


def _create(lock: str, content: bytes) -> bool:
  """Creates the lock file holding `content`; False when a lock file exists."""
  try:
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(content)
  return True


# ----------------------------------------------------------------------------
# Workdir ownership
# ----------------------------------------------------------------------------

def _own(name: str) -> bool:
  return name in (LOCK_FILE, MARKER_FILE) or name.startswith(ASIDE_PREFIX)


def _is_legacy(path: pathlib.Path) -> bool:
  """True for a workdir of a jaxvna run from before the marker file: one run's, or that of
  a command whose runs live in subfolders (`demo`: vna/, ...; `visualize`, `scaling`)."""
  if _is_legacy_run(path):
    return True
  try:
    return any(entry.is_dir() and _is_legacy_run(pathlib.Path(entry.path))
               for entry in os.scandir(path))
  except OSError:
    return False


def _is_legacy_run(path: pathlib.Path) -> bool:
  try:
    with open(path / "config.json") as f:
      config = json.load(f)
    if isinstance(config, dict) and "method" in config and "train" in config:
      return True
  except (OSError, ValueError):
    pass
  try:
    return any(entry.is_dir() and entry.name.split(".")[0].isdigit()
               for entry in os.scandir(path / "checkpoints"))
  except OSError:
    return False


def is_jaxvna_workdir(path: str | os.PathLike) -> bool:
  """True when `path` is a folder written by jaxvna (its marker, or an earlier run's
  config.json or checkpoint steps). Creates nothing."""
  path = pathlib.Path(path)
  return path.is_dir() and ((path / MARKER_FILE).exists() or _is_legacy(path))


def check_ownership(path: str | os.PathLike) -> None:
  """Refuses a `path` that exists and holds files jaxvna did not write. Creates nothing.

  Raises:
    RefusedPathError: `path` is not a folder, or a non-empty folder that is not a jaxvna
      workdir (the message names a few of its files).
    UserError: `path` cannot be read.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return
  if not path.is_dir():
    raise RefusedPathError(f"workdir {path} is not a folder; choose an empty or new folder")
  try:
    foreign = sorted(name for name in os.listdir(path) if not _own(name))
  except OSError as error:
    raise UserError(f"cannot read workdir {path} ({error})") from error
  if foreign and not is_jaxvna_workdir(path):
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                      else "")
    raise RefusedPathError(
        f"workdir {path} holds files jaxvna did not write ({shown}); jaxvna never "
        "overwrites or deletes those: choose an empty or new folder")


# ----------------------------------------------------------------------------
# Acquire and release
# ----------------------------------------------------------------------------

def _acquire(workdir: pathlib.Path, command: str | None) -> str:
  """Takes (or nests into) the lock of `workdir`; returns the key of this process's hold."""
  with _mutex:
    if workdir.is_dir():
      held = _held.get(os.path.realpath(workdir))
      if held is not None and held.pid == os.getpid():
        held.count += 1
        return os.path.realpath(workdir)
    check_ownership(workdir)
    try:
      workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise UserError(f"cannot create workdir {workdir} ({error})") from error
    key, lock = os.path.realpath(workdir), str(workdir / LOCK_FILE)
    me = _me()
    now = datetime.datetime.now().astimezone()
    content = json.dumps({**me, "command": command, "argv": sys.argv,
                          "since": now.isoformat(timespec="seconds"),
                          "token": uuid.uuid4().hex}).encode()
    acquired = False
    try:
      for _ in range(_ATTEMPTS):
        if _create(lock, content):
          break
        found = _read(lock)
        if found is None:
          continue  # released meanwhile
        holder = _parse(found[0])
        if holder is None:
          stale = time.time() - found[1].st_mtime > GRACE_S
        elif (holder["pid"], holder["host"]) == (me["pid"], me["host"]):
          stale = _same_machine(holder, me)  # written by this process, held no more
        else:
          stale = _gone(holder, me)
        if not stale:
          raise _refusal(str(workdir), lock, holder, me)
        _take_away(str(workdir), lock, _identity(*found), me)
      else:
        raise WorkdirLockedError(f"workdir {workdir}: could not take its lock in "
                                 f"{_ATTEMPTS} attempts; other runs keep changing it")
      _held[key] = _Held(pid=os.getpid(), content=content, count=1)
      acquired = True
      for name in os.listdir(workdir):
        if name.startswith(ASIDE_PREFIX) and _aside_abandoned(name, me):
          with contextlib.suppress(FileNotFoundError):
            os.unlink(workdir / name)
      if not (workdir / MARKER_FILE).exists():
        from jaxvna import __version__
        with contextlib.suppress(FileExistsError), open(workdir / MARKER_FILE, "x") as f:
          json.dump({"created_by": f"jaxvna {__version__}", "command": command,
                     "since": now.isoformat(timespec="seconds")}, f)
    except BaseException as error:
      if acquired:
        _release(key)
      if isinstance(error, OSError):
        raise UserError(f"cannot write in workdir {workdir} ({error}); jaxvna needs a "
                        "writable workdir") from error
      raise
    return key


def _release(key: str) -> None:
  """Leaves one hold; the outermost removes the lock file if it is still this hold's."""
  with _mutex:
    held = _held[key]
    if held.pid != os.getpid():
      return  # a forked child leaving its parent's hold: the lock stays the parent's
    held.count -= 1
    if held.count:
      return
    del _held[key]
    lock = os.path.join(key, LOCK_FILE)
    try:
      found = _read(lock)
      if found is not None and found[0] == held.content:
        os.unlink(lock)
      else:
        warnings.warn(f"the lock file {lock} was removed or replaced while this run held "
                      "it; left as it is", RuntimeWarning, stacklevel=3)
    except OSError as error:  # must not hide the exception that may be leaving `hold`
      warnings.warn(f"could not remove the lock file {lock}: {error}", RuntimeWarning,
                    stacklevel=3)


def _process_count() -> int:
  # jax.process_count() would start JAX's backends, after which processes can no longer
  # join a multi-process run: ask only once jax.distributed has been initialised.
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return 1
  return jax.process_count()


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, *, command: str | None = None) -> Iterator[pathlib.Path]:
  """Holds `workdir` for this run while in the block; yields it as a Path.

  Creates `workdir` (and its parents) if missing. Reentrant within a process. In a
  multi-process run (call it after `jax.distributed.initialize`), every process calls
  `hold` with the same workdir: process 0 takes the lock and all raise if it cannot.

  Args:
    workdir: the run's folder.
    command: what the run does, for the message of a run refused meanwhile (e.g. "train").

  Raises:
    WorkdirLockedError: another run holds `workdir` (the message names its host, pid,
      command and start).
    RefusedPathError: `workdir` holds files jaxvna did not write.
    UserError: `workdir` cannot be created, read or written.
  """
  workdir = pathlib.Path(workdir)
  if _process_count() == 1:
    key = _acquire(workdir, command)
    try:
      yield workdir
    finally:
      _release(key)
    return

  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  key, error = None, None
  if jax.process_index() == 0:
    try:
      key = _acquire(workdir, command)
    except Exception as e:  # the others must learn of any failure, or they would wait
      error = e
  verdict = multihost_utils.broadcast_one_to_all(
      np.int32(0 if error is None else 1 if isinstance(error, UserError) else 2))
  if error is not None:
    raise error
  if verdict:
    raise (UserError if verdict == 1 else RuntimeError)(
        f"workdir {workdir}: process 0 could not take its lock (see its error)")
  try:
    yield workdir
    # Process 0 must not release while another process still writes in the workdir.
    multihost_utils.sync_global_devices("jaxvna workdir_lock release")
  finally:
    if key is not None:
      _release(key)
