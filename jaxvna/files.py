"""Atomic writes, and the rule that jaxvna replaces only files and folders it wrote.

A file is written to a hidden temporary file in its destination folder (so on the same
filesystem), flushed, fsynced and renamed over the destination: readers, and a run
killed part-way, see the old file or the new one, never half of one. A folder is built
beside its destination and renamed into place the same way.

Whatever already lies at a destination is replaced only if the caller's `is_ours(path)`
recognises it as jaxvna's own output (a folder may also be empty); anything else raises
`RefusedPathError` and is left exactly as it was. Temporary names are
`.<name>.tmp-<random>` and `.<name>.old-<random>` beside the destination, removed on
success and on failure (a process killed outright may leave one; it is never read).

No JAX here: importing jaxvna stays light.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
from typing import IO, Any, Callable

from jaxvna.errors import RefusedPathError

PathLike = str | os.PathLike
IsOurs = Callable[[pathlib.Path], bool]  # whether what lies at a path is jaxvna's to replace
Explain = Callable[[pathlib.Path], str | None]  # what at a refused path is not jaxvna's


def _sibling(path: pathlib.Path, tag: str) -> pathlib.Path:
  """A fresh hidden name beside `path`: .<name>.<tag>-<random>."""
  return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")


def _fsync_dir(folder: pathlib.Path) -> None:
  """Makes a rename in `folder` durable; best effort (not every system opens folders)."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def describe(path: PathLike) -> str:
  """What lies at `path`, in words for an error message ("a file of 12 bytes", ...)."""
  path = pathlib.Path(path)
  if path.is_symlink():
    return f"a symbolic link to {os.readlink(path)}"
  if not path.exists():
    return "nothing"
  if path.is_dir():
    names = sorted(p.name for p in path.iterdir())
    if not names:
      return "an empty folder"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"a folder holding {len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"
  if path.is_file():
    return f"a file of {path.stat().st_size} bytes"
  return "a special file"


def check_replaceable(path: PathLike, *, is_ours: IsOurs, what: str, folder: bool = False,
                      explain: Explain | None = None) -> None:
  """Raises RefusedPathError unless jaxvna may replace whatever lies at `path`.

  Replaceable: nothing; for a `folder` destination, an empty folder; else something that
  `is_ours(path)` accepts (never a symbolic link: replacing it would drop the link).

  Args:
    path: the destination.
    is_ours: recognises jaxvna's own output at `path` (called only if something is there).
    what: what jaxvna writes there, for the message ("a saved jaxvna model").
    folder: whether the destination is a folder (then an empty folder may be replaced).
    explain: optionally says what at a refused `path` is not jaxvna's ("notes.txt"),
      added to the message after `describe(path)`.
  """
  path = pathlib.Path(path)
  if not path.is_symlink():
    if not path.exists():
      return
    if folder and path.is_dir() and not any(path.iterdir()):
      return
    if is_ours(path):
      return
  detail = explain(path) if explain is not None and not path.is_symlink() else None
  raise RefusedPathError(
      f"{path}: refusing to replace {describe(path)}{f' ({detail})' if detail else ''}: it "
      f"is not {what}, and jaxvna replaces only what it wrote; move it away or choose "
      "another path")


def atomic_write(path: PathLike, write: Callable[[IO], Any], mode: str = "wb", *,
                 is_ours: IsOurs | None = None,
                 what: str = "a file jaxvna wrote") -> pathlib.Path:
  """Writes a file atomically: `write(f)` on a temporary file beside `path`, then rename.

  Args:
    path: the file to write; its folder must exist.
    write: fills the open temporary file `f`.
    mode: "wb" (bytes) or "w" (UTF-8 text, newlines written as given).
    is_ours: if given, an existing `path` is replaced only when `is_ours(path)` accepts
      it (RefusedPathError otherwise); if None, an existing file is replaced (for files
      in a folder whose ownership is checked elsewhere, such as a run's workdir).
    what: what jaxvna writes there, for the refusal message.

  Returns:
    `path`, as a pathlib.Path. On any failure the temporary file is removed and `path`
    is as it was.
  """
  if mode not in ("wb", "w"):
    raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
  path = pathlib.Path(path)
  if not path.parent.is_dir():
    raise FileNotFoundError(f"{path.parent}: folder to write {path.name} into is missing")
  if path.is_dir() and not path.is_symlink():
    raise RefusedPathError(f"{path}: refusing to replace {describe(path)} with a file")
  if is_ours is not None:
    check_replaceable(path, is_ours=lambda p: p.is_file() and is_ours(p), what=what)
  while True:
    tmp = _sibling(path, "tmp")
    try:
      # 0o666 less the umask: the file gets the permissions of any newly created file.
      fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
      break
    except FileExistsError:
      continue
  try:
    # Text is written untranslated ("\n" stays "\n"), as csv and json expect.
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with os.fdopen(fd, mode, **text) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)
  return path


def write_bytes(path: PathLike, data: bytes, **kwargs) -> pathlib.Path:
  """`atomic_write` of `data`; kwargs (is_ours, what) as there."""
  return atomic_write(path, lambda f: f.write(data), "wb", **kwargs)


def write_text(path: PathLike, text: str, **kwargs) -> pathlib.Path:
  """`atomic_write` of UTF-8 `text`; kwargs (is_ours, what) as there."""
  return atomic_write(path, lambda f: f.write(text), "w", **kwargs)


def write_json(path: PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False,
               **kwargs) -> pathlib.Path:
  """`atomic_write` of `obj` as JSON (ending in a newline); kwargs (is_ours, what) as there.

  The object is serialised before anything is written: an unserialisable one raises
  TypeError and leaves `path` untouched.
  """
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
  return write_text(path, text, **kwargs)


def save_figure(fig, path: PathLike, **savefig_kwargs) -> pathlib.Path:
  """`fig.savefig` through `atomic_write`: a killed run never leaves half an image.

  The format is `savefig_kwargs["format"]`, else the suffix of `path` (".png", ".pdf",
  ...), else matplotlib's default; an existing file at `path` is replaced.
  """
  path = pathlib.Path(path)
  fmt = savefig_kwargs.pop("format", None) or path.suffix[1:].lower() or None
  return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs), "wb")


def move_dir_into_place(built: PathLike, path: PathLike, *, is_ours: IsOurs, what: str,
                        explain: Explain | None = None) -> pathlib.Path:
  """Renames the finished folder `built` to `path` (both on one filesystem, e.g. siblings).

  `path` may be missing or an empty folder (renamed over at once), or a folder that
  `is_ours` accepts: that one is renamed aside, `built` renamed into place (the old one
  is put back if this fails) and the old one deleted. Anything else raises
  RefusedPathError (`check_replaceable`, which takes `explain`); then `path` is left as
  it was and `built` is the caller's to remove.

  Returns:
    `path`, as a pathlib.Path.
  """
  built, path = pathlib.Path(built), pathlib.Path(path)
  check_replaceable(path, is_ours=is_ours, what=what, folder=True, explain=explain)
  if path.is_dir() and any(path.iterdir()):
    old = _sibling(path, "old")
    os.replace(path, old)
    try:
      os.replace(built, path)
    except BaseException:
      os.replace(old, path)
      raise
    shutil.rmtree(old, ignore_errors=True)
  else:
    try:
      os.replace(built, path)
    except OSError as e:
      if path.exists() or path.is_symlink():  # something was put there since the check
        raise RefusedPathError(f"{path}: refusing to replace {describe(path)}, which "
                               f"appeared while {what} was being written") from e
      raise
  _fsync_dir(path.parent)
  return path


def replace_dir(path: PathLike, build: Callable[[pathlib.Path], Any], *, is_ours: IsOurs,
                what: str, explain: Explain | None = None) -> pathlib.Path:
  """Writes the folder `path` atomically: `build(tmp)` fills a new folder beside it, which
  `move_dir_into_place` then renames to `path`.

  What lies at `path` is checked first (`check_replaceable`, which takes `explain`), so a
  refusal comes before any work; the parent folders are created if missing. On any
  failure the temporary folder is removed and `path` is as it was.

  Returns:
    `path`, as a pathlib.Path.
  """
  path = pathlib.Path(path)
  check_replaceable(path, is_ours=is_ours, what=what, folder=True, explain=explain)
  path.parent.mkdir(parents=True, exist_ok=True)
  while True:
    tmp = _sibling(path, "tmp")
    try:
      tmp.mkdir()  # not tempfile.mkdtemp: that one is private (0o700) once in place
      break
    except FileExistsError:
      continue
  try:
    build(tmp)
    move_dir_into_place(tmp, path, is_ours=is_ours, what=what, explain=explain)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path
