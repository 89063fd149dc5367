"""`jaxvna.files`: atomic writes that leave no temporary behind, and refusals that leave
what the user had exactly as it was."""

import json
import os

import pytest

from jaxvna import files
from jaxvna.errors import RefusedPathError, UserError

OURS = b"written by jaxvna"


def is_ours(path):
  return path.read_bytes() == OURS


def snapshot(folder):
  """{relative path: bytes (None for a folder)} of everything under `folder`."""
  return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
          for p in sorted(folder.rglob("*"))}


def test_atomic_write_replaces_a_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "a.bin"
  assert files.write_bytes(path, b"one") == path
  files.write_bytes(str(path), b"two")
  assert path.read_bytes() == b"two"
  files.write_text(tmp_path / "t.csv", "x,y\r\n1,2\n")  # newlines written as given
  assert (tmp_path / "t.csv").read_bytes() == b"x,y\r\n1,2\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "t.csv"]


def test_new_files_get_the_usual_permissions(tmp_path):
  previous = os.umask(0o022)
  try:
    files.write_bytes(tmp_path / "a.bin", b"x")
  finally:
    os.umask(previous)
  assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
  path = tmp_path / "a.bin"
  path.write_bytes(b"old contents")

  def half(f):
    f.write(b"half of the new")
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError, match="killed"):
    files.atomic_write(path, half)
  assert snapshot(tmp_path) == {"a.bin": b"old contents"}
  with pytest.raises(TypeError):
    files.write_json(path, {"x": object()})  # serialised before anything is written
  assert snapshot(tmp_path) == {"a.bin": b"old contents"}


def test_write_json_is_indented_and_ends_in_a_newline(tmp_path):
  files.write_json(tmp_path / "x.json", {"b": [1, 2], "a": "é"})
  text = (tmp_path / "x.json").read_text(encoding="utf-8")
  assert text == json.dumps({"b": [1, 2], "a": "é"}, indent=1) + "\n"
  files.write_json(tmp_path / "y.json", {"b": 1, "a": 2}, indent=2, sort_keys=True)
  assert (tmp_path / "y.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_is_ours_refuses_a_file_jaxvna_did_not_write(tmp_path):
  path = tmp_path / "thesis.tex"
  path.write_bytes(b"\\documentclass{article}")
  with pytest.raises(RefusedPathError, match="thesis.tex: refusing to replace a file of 23 "
                                             "bytes: it is not a jaxvna archive") as info:
    files.write_bytes(path, OURS, is_ours=is_ours, what="a jaxvna archive")
  assert isinstance(info.value, UserError) and isinstance(info.value, FileExistsError)
  assert snapshot(tmp_path) == {"thesis.tex": b"\\documentclass{article}"}
  path.write_bytes(OURS)  # its own file is replaced; a missing one written
  files.write_bytes(path, b"new", is_ours=lambda p: p.read_bytes() == OURS)
  files.write_bytes(tmp_path / "new.bin", b"x", is_ours=lambda p: False)
  assert snapshot(tmp_path) == {"new.bin": b"x", "thesis.tex": b"new"}


def test_a_file_is_never_written_over_a_folder_or_into_a_missing_one(tmp_path):
  (tmp_path / "out.png").mkdir()
  (tmp_path / "out.png" / "keep.txt").write_bytes(b"keep")
  with pytest.raises(RefusedPathError, match=r"out.png: refusing to replace a folder holding "
                                             r"1 entry \(keep.txt\)"):
    files.write_bytes(tmp_path / "out.png", b"x")
  with pytest.raises(FileNotFoundError, match="no_such: folder to write x.bin into is missing"):
    files.write_bytes(tmp_path / "no_such" / "x.bin", b"x")
  assert snapshot(tmp_path) == {"out.png": None, "out.png/keep.txt": b"keep"}


def test_save_figure_writes_the_format_of_the_suffix_atomically(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(2, 2))
  ax.plot([0, 1], [1, 0])
  files.save_figure(fig, tmp_path / "a.png", dpi=50)
  files.save_figure(fig, tmp_path / "a.pdf")
  assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
  before = snapshot(tmp_path)
  # A figure that fails half-way through drawing leaves the previous image.
  ax.text(0.5, 0.5, r"$\unknowncommand$")
  with pytest.raises(ValueError):
    files.save_figure(fig, tmp_path / "a.png", dpi=50)
  plt.close(fig)
  assert snapshot(tmp_path) == before


def model_folder(path, body=b"weights"):
  path.mkdir()
  (path / "ours.json").write_bytes(OURS)
  (path / "w.bin").write_bytes(body)
  return path


def is_our_folder(path):
  return path.is_dir() and (path / "ours.json").is_file() and is_ours(path / "ours.json")


def build(body):
  def fill(tmp):
    (tmp / "ours.json").write_bytes(OURS)
    (tmp / "w.bin").write_bytes(body)
  return fill


def test_replace_dir_writes_missing_empty_and_its_own_folders(tmp_path):
  kw = dict(is_ours=is_our_folder, what="a test model")
  files.replace_dir(tmp_path / "deep" / "new", build(b"1"), **kw)  # parents are made
  (tmp_path / "empty").mkdir()
  previous = os.umask(0o022)
  try:
    files.replace_dir(tmp_path / "empty", build(b"2"), **kw)
  finally:
    os.umask(previous)
  assert (tmp_path / "empty").stat().st_mode & 0o777 == 0o755  # not a private temp folder's
  model_folder(tmp_path / "old", b"old weights")
  files.replace_dir(tmp_path / "old", build(b"3"), **kw)
  assert snapshot(tmp_path) == {
      "deep": None, "deep/new": None, "deep/new/ours.json": OURS, "deep/new/w.bin": b"1",
      "empty": None, "empty/ours.json": OURS, "empty/w.bin": b"2",
      "old": None, "old/ours.json": OURS, "old/w.bin": b"3"}  # no .tmp-* or .old-* left


def test_replace_dir_refuses_what_is_not_ours_before_building(tmp_path):
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "paper.tex").write_bytes(b"tex")
  (tmp_path / "notes" / "data.npy").write_bytes(b"npy")
  (tmp_path / "a_file").write_bytes(b"mine")
  (tmp_path / "link").symlink_to(model_folder(tmp_path / "target"))
  before = snapshot(tmp_path)
  calls = []
  for name, found in (("notes", r"a folder holding 2 entries \(data.npy, paper.tex\)"),
                      ("a_file", "a file of 4 bytes"), ("link", "a symbolic link to")):
    with pytest.raises(RefusedPathError, match=rf"{name}: refusing to replace {found}"):
      files.replace_dir(tmp_path / name, lambda tmp: calls.append(tmp), is_ours=is_our_folder,
                        what="a test model")
  assert not calls and snapshot(tmp_path) == before


def test_failed_build_or_rename_keeps_the_old_folder(tmp_path, monkeypatch):
  model_folder(tmp_path / "m", b"old weights")
  before = snapshot(tmp_path)

  def half(tmp):
    (tmp / "ours.json").write_bytes(OURS)
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError, match="killed"):
    files.replace_dir(tmp_path / "m", half, is_ours=is_our_folder, what="a test model")
  assert snapshot(tmp_path) == before
  replace = os.replace

  def failing(src, dst):
    if ".tmp-" in str(src):
      raise OSError("rename failed")
    return replace(src, dst)

  monkeypatch.setattr(os, "replace", failing)
  with pytest.raises(OSError, match="rename failed"):
    files.replace_dir(tmp_path / "m", build(b"new"), is_ours=is_our_folder, what="a test model")
  assert snapshot(tmp_path) == before  # the old folder was put back
