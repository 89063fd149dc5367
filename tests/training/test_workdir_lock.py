"""Tests of jaxvna.training.workdir_lock: one live run per workdir (refusal, take-over of a
dead holder's lock, a kill during take-over, racing take-overs, reentrancy) and the
refusal of folders that jaxvna did not write."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from jaxvna.errors import RefusedPathError
from jaxvna.training import workdir_lock
from jaxvna.training.workdir_lock import LOCK_FILE, MARKER_FILE, WorkdirLockedError

REPO = pathlib.Path(__file__).resolve().parents[2]
HAS_PROC = os.path.exists(f"/proc/{os.getpid()}/stat")

# Holds argv[1] until stdin closes; prints "held" once it does.
HOLDER = textwrap.dedent("""
    import sys
    from jaxvna.training import workdir_lock
    with workdir_lock.hold(sys.argv[1], command="holder"):
      print("held", flush=True)
      sys.stdin.read()
""")

# Waits for the file argv[2], then tries to hold argv[1]; os.rename first sleeps argv[3]
# seconds so that both racers judge the stale lock before either moves it.
RACER = textwrap.dedent("""
    import os, sys, time
    from jaxvna.training import workdir_lock
    rename = os.rename
    def slow_rename(src, dst):
      time.sleep(float(sys.argv[3]))
      rename(src, dst)
    os.rename = slow_rename
    while not os.path.exists(sys.argv[2]):
      time.sleep(0.001)
    try:
      with workdir_lock.hold(sys.argv[1]):
        print("won", flush=True)
        sys.stdin.read()
    except workdir_lock.WorkdirLockedError as error:
      print("refused", error, flush=True)
""")

# Takes over the stale lock of argv[1], and stops for good right after renaming it aside
# (creating the file argv[2] to say so).
PAUSED_TAKE_OVER = textwrap.dedent("""
    import os, sys, time
    from jaxvna.training import workdir_lock
    rename = os.rename
    def paused_rename(src, dst):
      rename(src, dst)
      if os.path.basename(dst).startswith(workdir_lock.ASIDE_PREFIX):
        open(sys.argv[2], "w").close()
        time.sleep(600)
    os.rename = paused_rename
    with workdir_lock.hold(sys.argv[1]):
      pass
""")


def _spawn(script, *args):
  return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.fixture
def holder(tmp_path):
  """f(workdir) -> a subprocess that holds `workdir` (released when the test ends)."""
  running = []

  def start(workdir):
    process = _spawn(HOLDER, workdir)
    running.append(process)
    assert process.stdout.readline().strip() == "held"
    return process

  yield start
  for process in running:
    if process.poll() is None:
      process.stdin.close()
      process.wait(timeout=10)


def _snapshot(root):
  """{relative path: (bytes or None for a folder, mtime_ns)} of everything under root."""
  snapshot = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      content = None if name in dirs else pathlib.Path(path).read_bytes()
      snapshot[os.path.relpath(path, root)] = (content, os.stat(path).st_mtime_ns)
  return snapshot


def _lock(workdir):
  return json.loads((workdir / LOCK_FILE).read_text())


def _stale_lock(workdir, **fields):
  """Writes a lock file naming a process of this machine that has ended."""
  ended = subprocess.Popen([sys.executable, "-c", ""])
  ended.wait()
  me = workdir_lock._me()
  holder = {**me, "pid": ended.pid, "command": "old", "argv": ["old"],
            "since": "2000-01-01T00:00:00+00:00", "token": "old", **fields}
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / LOCK_FILE).write_text(json.dumps(holder))
  (workdir / MARKER_FILE).write_text("{}")


def test_hold_writes_the_lock_and_marker_and_release_removes_the_lock(tmp_path):
  workdir = tmp_path / "run"
  with workdir_lock.hold(workdir, command="train") as held:
    assert held == workdir
    lock = _lock(workdir)
    assert (lock["host"], lock["pid"], lock["command"]) == (
        socket.gethostname(), os.getpid(), "train")
    assert lock["argv"] == sys.argv and lock["since"]
    if HAS_PROC:
      assert lock["start_time"] == workdir_lock._probe(os.getpid())[1] is not None
    marker = json.loads((workdir / MARKER_FILE).read_text())
    assert marker["created_by"].startswith("jaxvna ") and marker["command"] == "train"
  assert sorted(os.listdir(workdir)) == [MARKER_FILE]


def test_second_run_is_refused_at_once_and_touches_nothing(tmp_path, holder):
  workdir = tmp_path / "run"
  process = holder(workdir)
  (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
  (workdir / "checkpoints").mkdir()
  before = _snapshot(workdir)
  start = time.monotonic()
  with pytest.raises(WorkdirLockedError) as error:
    with workdir_lock.hold(workdir, command="train"):
      pytest.fail("entered a workdir that another run holds")
  assert time.monotonic() - start < 1.0
  message = str(error.value)
  assert "\n" not in message
  for part in (str(workdir), f"pid {process.pid}", f"host {socket.gethostname()}",
               "holder", "since "):
    assert part in message
  assert _snapshot(workdir) == before


@pytest.mark.skipif(not HAS_PROC, reason="the start time of a process comes from /proc")
def test_lock_of_a_killed_run_is_taken_over(tmp_path, holder):
  workdir = tmp_path / "run"
  process = holder(workdir)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert _lock(workdir)["pid"] == process.pid  # left behind by the kill
  with workdir_lock.hold(workdir, command="resume"):
    lock = _lock(workdir)
    assert (lock["pid"], lock["command"]) == (os.getpid(), "resume")
  assert sorted(os.listdir(workdir)) == [MARKER_FILE]


@pytest.mark.skipif(not HAS_PROC, reason="the start time of a process comes from /proc")
def test_reused_pid_is_taken_over_and_a_live_one_is_not(tmp_path):
  workdir = tmp_path / "run"
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    start = workdir_lock._probe(other.pid)[1]
    _stale_lock(workdir, pid=other.pid, start_time=start)
    with pytest.raises(WorkdirLockedError, match=f"pid {other.pid} "):
      with workdir_lock.hold(workdir):
        pass
    # The same pid, but a process started at another time: the holder is gone.
    _stale_lock(workdir, pid=other.pid, start_time=start + 1)
    with workdir_lock.hold(workdir):
      assert _lock(workdir)["pid"] == os.getpid()
    assert other.poll() is None
  finally:
    other.kill()
    other.wait()


def test_lock_of_another_host_is_refused_with_how_to_remove_it(tmp_path):
  workdir = tmp_path / "run"
  _stale_lock(workdir, host="elsewhere.invalid", pid=4242, start_time=1)
  before = _snapshot(workdir)
  with pytest.raises(WorkdirLockedError) as error:
    with workdir_lock.hold(workdir):
      pass
  message = str(error.value)
  assert "pid 4242 on host elsewhere.invalid" in message
  assert f"delete {workdir / LOCK_FILE} by hand" in message
  assert _snapshot(workdir) == before


@pytest.mark.skipif(not HAS_PROC, reason="the start time of a process comes from /proc")
def test_kill_during_take_over_leaves_nothing_that_blocks_the_next_run(tmp_path):
  workdir, paused = tmp_path / "run", tmp_path / "paused"
  _stale_lock(workdir)
  process = _spawn(PAUSED_TAKE_OVER, workdir, paused)
  try:
    deadline = time.monotonic() + 30
    while not paused.exists():
      assert process.poll() is None and time.monotonic() < deadline
      time.sleep(0.01)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  names = os.listdir(workdir)
  assert LOCK_FILE not in names
  assert len([n for n in names if n.startswith(workdir_lock.ASIDE_PREFIX)]) == 1
  with workdir_lock.hold(workdir):
    assert sorted(os.listdir(workdir)) == sorted([LOCK_FILE, MARKER_FILE])
    assert _lock(workdir)["pid"] == os.getpid()
  assert sorted(os.listdir(workdir)) == [MARKER_FILE]


@pytest.mark.skipif(not HAS_PROC, reason="the start time of a process comes from /proc")
@pytest.mark.parametrize("stale", ["dead pid", "old garbled file"])
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05])
def test_two_runs_racing_for_a_stale_lock_one_wins(tmp_path, stale, delay):
  workdir, go = tmp_path / "run", tmp_path / "go"
  _stale_lock(workdir)
  if stale == "old garbled file":
    (workdir / LOCK_FILE).write_bytes(b"")
    old = time.time() - 2 * workdir_lock.GRACE_S
    os.utime(workdir / LOCK_FILE, (old, old))
  # One racer renames at once, the other later: the later one may move the winner's new
  # lock aside, which it must put back.
  racers = [_spawn(RACER, workdir, go, 0.0), _spawn(RACER, workdir, go, delay)]
  try:
    time.sleep(0.3)  # both imported and waiting
    go.touch()
    outcomes = [racer.stdout.readline().strip() for racer in racers]
    assert sorted(o.split()[0] for o in outcomes) == ["refused", "won"], outcomes
    winner = racers[[o.split()[0] for o in outcomes].index("won")]
    assert _lock(workdir)["pid"] == winner.pid
    assert sorted(os.listdir(workdir)) == sorted([LOCK_FILE, MARKER_FILE])
  finally:
    for racer in racers:
      racer.stdin.close()
      racer.wait(timeout=10)
  assert [r.returncode for r in racers] == [0, 0]
  assert sorted(os.listdir(workdir)) == [MARKER_FILE]


def test_folder_of_other_files_is_refused_and_untouched(tmp_path):
  folder = tmp_path / "photos"
  folder.mkdir()
  (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
  (folder / "notes").mkdir()
  (folder / "config.json").write_text('{"camera": "x"}')  # not a jaxvna config
  before = _snapshot(folder)
  assert not workdir_lock.is_jaxvna_workdir(folder)
  with pytest.raises(RefusedPathError) as error:
    with workdir_lock.hold(folder):
      pass
  message = str(error.value)
  assert "did not write" in message and "holiday.jpg" in message and "notes" in message
  assert "empty or new folder" in message
  assert _snapshot(folder) == before
  file = tmp_path / "a_file"
  file.write_text("x")
  with pytest.raises(RefusedPathError, match="not a folder"):
    with workdir_lock.hold(file):
      pass
  assert file.read_text() == "x"


def test_empty_and_missing_folders_are_claimed_with_the_marker(tmp_path):
  empty, missing = tmp_path / "empty", tmp_path / "a" / "b" / "run"
  empty.mkdir()
  for folder in (empty, missing):
    assert not workdir_lock.is_jaxvna_workdir(folder)
    workdir_lock.check_ownership(folder)  # creates nothing
    assert not (folder / MARKER_FILE).exists()
    with workdir_lock.hold(folder):
      pass
    assert sorted(os.listdir(folder)) == [MARKER_FILE]
    assert workdir_lock.is_jaxvna_workdir(folder)


@pytest.mark.parametrize("legacy", ["config", "checkpoints", "demo"])
def test_workdir_of_an_earlier_jaxvna_run_is_accepted_and_marked(tmp_path, legacy):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
  if legacy == "config":
    (workdir / "config.json").write_text(json.dumps({"method": "vna", "train": {}}))
  elif legacy == "checkpoints":
    (workdir / "checkpoints" / "100").mkdir(parents=True)
  else:  # `jaxvna demo`: results at the top, one run per method in subfolders
    (workdir / "vna" / "checkpoints" / "600").mkdir(parents=True)
  assert workdir_lock.is_jaxvna_workdir(workdir)
  with workdir_lock.hold(workdir):
    pass
  assert (workdir / MARKER_FILE).exists()
  assert (workdir / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_hold_is_reentrant_and_the_outermost_exit_releases(tmp_path):
  workdir = tmp_path / "run"
  with workdir_lock.hold(workdir, command="cli"):
    content = (workdir / LOCK_FILE).read_bytes()
    with workdir_lock.hold(workdir, command="train"):
      with workdir_lock.hold(workdir / ".", command="eval"):  # the same folder
        assert (workdir / LOCK_FILE).read_bytes() == content
    assert (workdir / LOCK_FILE).read_bytes() == content
  assert not (workdir / LOCK_FILE).exists()
  with workdir_lock.hold(workdir):  # released for good: a new hold is a fresh lock
    assert (workdir / LOCK_FILE).read_bytes() != content


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_neither_nests_into_nor_releases_its_parents_hold(tmp_path):
  workdir = tmp_path / "run"
  with workdir_lock.hold(workdir):
    content = (workdir / LOCK_FILE).read_bytes()
    child = os.fork()
    if child == 0:
      code = 1
      try:
        try:
          with workdir_lock.hold(workdir):
            pass
        except WorkdirLockedError as error:
          code = 0 if f"pid {os.getppid()} " in str(error) else 2
        # What leaving the parent's `with` block in the child does.
        workdir_lock._release(os.path.realpath(workdir))
      finally:
        os._exit(code)
    assert os.waitpid(child, 0)[1] == 0
    assert (workdir / LOCK_FILE).read_bytes() == content
  assert not (workdir / LOCK_FILE).exists()


def test_lock_is_released_on_exception(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(KeyError, match="inside"):
    with workdir_lock.hold(workdir):
      raise KeyError("inside")
  assert sorted(os.listdir(workdir)) == [MARKER_FILE]
  assert workdir_lock._held == {}


def test_a_lock_replaced_meanwhile_is_left_in_place(tmp_path):
  workdir = tmp_path / "run"
  with pytest.warns(RuntimeWarning, match="removed or replaced"):
    with workdir_lock.hold(workdir):
      (workdir / LOCK_FILE).write_text("another run's lock")
  assert (workdir / LOCK_FILE).read_text() == "another run's lock"


def test_garbled_lock_is_refused_while_fresh_and_taken_over_once_old(tmp_path):
  workdir = tmp_path / "run"
  _stale_lock(workdir)
  (workdir / LOCK_FILE).write_bytes(b'{"host": "vm", "pi')  # its writer killed mid-write
  with pytest.raises(WorkdirLockedError, match="being written or is damaged"):
    with workdir_lock.hold(workdir):
      pass
  assert (workdir / LOCK_FILE).read_bytes() == b'{"host": "vm", "pi'
  old = time.time() - 2 * workdir_lock.GRACE_S
  os.utime(workdir / LOCK_FILE, (old, old))
  with workdir_lock.hold(workdir):
    assert _lock(workdir)["pid"] == os.getpid()
  assert sorted(os.listdir(workdir)) == [MARKER_FILE]


# Tries to hold argv[1]; prints the UserError raised as [type, message, type of cause].
TRY_HOLD = textwrap.dedent("""
    import json, sys
    from jaxvna.errors import UserError
    from jaxvna.training import workdir_lock
    try:
      with workdir_lock.hold(sys.argv[1]):
        print("null")
    except UserError as error:
      print(json.dumps([type(error).__name__, str(error), type(error.__cause__).__name__]))
""")


def test_read_only_workdir_gives_a_user_error(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    prefix = []
    if os.access(workdir, os.W_OK):
      # Root ignores permission bits unless it gives up CAP_DAC_OVERRIDE: the attempt runs
      # without it.
      drop = "-dac_override,-dac_read_search"
      prefix = [shutil.which("setpriv") or "setpriv", f"--inh-caps={drop}",
                f"--bounding-set={drop}"]
      try:
        subprocess.run(prefix + ["true"], check=True, capture_output=True)
      except (OSError, subprocess.CalledProcessError):
        pytest.skip("running as root, whom permission bits do not bind, and setpriv cannot "
                    "drop CAP_DAC_OVERRIDE here")
    result = subprocess.run(prefix + [sys.executable, "-c", TRY_HOLD, str(workdir)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
  finally:
    workdir.chmod(0o755)
  assert result.returncode == 0, result.stderr  # no traceback
  kind, message, cause = json.loads(result.stdout)
  assert (kind, cause) == ("UserError", "PermissionError")
  assert str(workdir) in message and "writable" in message and "\n" not in message
  assert os.listdir(workdir) == []


MULTI_PROCESS = textwrap.dedent("""
    import json, os, sys
    from jaxvna.training import distributed, workdir_lock
    free, held, address, index = sys.argv[1:5]
    distributed.initialize(distributed.Settings(
        coordinator_address=address, num_processes=2, process_id=int(index),
        local_device_count=1))
    with workdir_lock.hold(free, command="multi"):
      print("held by", json.load(open(os.path.join(free, ".jaxvna-lock")))["pid"],
            flush=True)
    try:
      with workdir_lock.hold(held):
        print("entered", flush=True)
    except Exception as error:
      print("refused", type(error).__name__, flush=True)
    # Process 0 released the first lock before it joined the second hold's broadcast.
    print("released", not os.path.exists(os.path.join(free, ".jaxvna-lock")), flush=True)
""")


def test_multi_process_run_holds_the_lock_through_process_0(tmp_path, holder):
  free, held = tmp_path / "free", tmp_path / "held"
  holder(held)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
  processes = [subprocess.Popen(
      [sys.executable, "-c", MULTI_PROCESS, str(free), str(held), address, str(i)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=120)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  lines = [[line for line in out.splitlines()
            if line.split(" ")[0] in ("held", "released", "entered", "refused")]
           for out in outputs]
  assert [p.returncode for p in processes] == [0, 0], outputs
  # Both processes entered the free workdir, whose lock names process 0; both were refused
  # the held one, process 0 with the holder's details, process 1 on its word.
  assert lines[0] == [f"held by {processes[0].pid}", "refused WorkdirLockedError",
                      "released True"], outputs[0]
  assert lines[1] == [f"held by {processes[0].pid}", "refused UserError",
                      "released True"], outputs[1]
