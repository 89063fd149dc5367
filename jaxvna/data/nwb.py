"""Reader of NWB recordings (Neurodata Without Borders): DANDI, the Allen Brain Observatory.

One NWB file is one session and becomes one `Recording`. What is read:

  presentations  a TimeIntervals table (`intervals/<name>`, e.g. the Allen Visual Coding
                 Neuropixels `natural_scenes_presentations`, or `trials`) with a
                 `start_time` per presentation and a column giving the index of the
                 image shown (Allen: `frame`, -1 for the blank screen);
  images         the stack those indices point into: a stimulus template of the file
                 (`stimulus/templates/<name>`, an ImageSeries (n, H, W[, C]) or an
                 Images container) or a .npy/.npz file the user names;
  units          the units table: each unit's `spike_times`, and, where the file has
                 them, its location (CCF or x/y/z coordinates, on the unit or on its
                 peak channel / electrodes).

A response is the number of spikes a unit fires in a window [onset + start, onset + end)
after each presentation's onset (counts, not rates: the window is the same for every
presentation, so counts are rates times a constant, and Poisson objectives want counts).
Presentations of the same image become repeats of it, in the order shown.

`pynwb` is imported on use (`pip install "jaxvna[nwb]"`), so importing jaxvna stays light.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from jaxvna.data import readers
from jaxvna.data.dataset import DataError, Dataset, Recording
from jaxvna.errors import UserError

PathLike = str | os.PathLike

# The Allen Visual Coding natural-scenes names: the table read when `presentations` is
# None and the file has it, and the template preferred among several.
ALLEN_PRESENTATIONS = "natural_scenes_presentations"
ALLEN_TEMPLATE = "natural_scenes_image_stack"
# Unit locations looked for, in this order, first on the units table and then on the
# electrodes of each unit (its `peak_channel_id`, else its `electrodes`).
COORDINATE_COLUMNS = (
    ("anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
     "left_right_ccf_coordinate"),
    ("x", "y", "z"),
)
# Onsets closer than a window's length by less than this still count as touching, not
# overlapping: float noise in stored times must not turn adjacent windows into an error.
_TOUCH_TOLERANCE_S = 1e-9


class NWBDependencyError(UserError, ImportError):
  """pynwb, needed to read NWB files, is not installed."""


def read_nwb(paths: PathLike | Iterable[PathLike], *,
             presentations: str | None = None,
             image_column: str = "frame",
             window: Sequence[float] = (0.05, 0.25),
             blank: int | None = -1,
             images: PathLike | None = None,
             template: str | None = None,
             image_size: readers.ImageSize = None,
             locations: Sequence[str] | None = None,
             coordinates: bool = True,
             allow_overlap: bool = False,
             split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
             split_seed: int = 0) -> Dataset:
  """Reads NWB sessions (one .nwb file each) as spike counts per image presentation.

  Per file: the presentations table gives each presentation's onset (`start_time`) and
  image index (`image_column`); presentations whose index is `blank` are skipped. Each
  unit's spikes in [onset + window[0], onset + window[1]) are counted. The N distinct
  image indices shown become the N images (sorted by index; indices never shown are not
  read); presentations of one image become its repeats in the order shown, and images
  shown fewer times than the most-shown one are NaN-padded.

  Args:
    paths: one .nwb file or several (one Recording each, named by file name).
    presentations: name of the TimeIntervals table under `intervals/` (`trials` is one).
      None: `natural_scenes_presentations` if the file has it, else `trials`.
    image_column: the column of that table holding the image index (integers, or floats
      with integer values as the Allen files store them).
    window: (start, end) in seconds relative to each onset, end > start. Windows of
      successive presentations must not overlap (a spike would count twice) unless
      `allow_overlap`: the default (0.05, 0.25) fits the Allen natural scenes (one image
      every 250 ms; the 50 ms skip the response latency).
    blank: image index meaning "no image" (the Allen grey screen, -1); None: none.
    images: a .npy file (n, H, W[, C]) or a .npz file (its `images` array, or its only
      array) holding the image stack; used instead of the files' stimulus templates, for
      files that carry none (the Allen Neuropixels files on DANDI do not).
    template: name of the stack in `stimulus/templates`; None: the only one there, or
      `natural_scenes_image_stack` among several.
    image_size: resize to this (int = square, or (height, width)) with PIL Lanczos.
    locations: keep only units whose electrode (`peak_channel_id`, else `electrodes`) has
      one of these `location`s in the electrodes table (e.g. ("VISp",)); None: all units.
    coordinates: read unit locations into `neuron_coords` where the file has them (see
      COORDINATE_COLUMNS; a unit on several electrodes gets their mean); False: (K, 0).
    allow_overlap: accept overlapping windows (a spike may then count for two images).
    split_fractions: (train, validation, test) fractions of the images.
    split_seed: seed of the split assignment (`readers.hashed_split` of the image index,
      so an image is in the same split in every session).

  Returns:
    Dataset "nwb": per file, images (N, H, W, C) uint8, responses (N, R, K) float32 spike
    counts, neuron_coords (K, 3) or (K, 0), stimulus_ids = the image indices, `source` =
    the file. An index must mean the same image in every file (checked).

  Raises:
    DataError naming the file and table: no presentations table, no units or spike
    times, image index not an integer or out of the stack's range, no images,
    overlapping windows, non-finite unit locations.
    NWBDependencyError: pynwb is not installed.
  """
  readers.check_fractions(split_fractions)
  hw = readers.image_hw(image_size)
  start, end = _check_window(window)
  paths = readers.as_paths(paths)
  stack = None if images is None else _ImageStack.from_file(pathlib.Path(images))
  pynwb = _import_pynwb()

  seen: dict[int, tuple[bytes, str]] = {}  # image index -> (pixel digest, first file)
  recordings = []
  for path in paths:
    rec = _read_file(pynwb, path, presentations=presentations, image_column=image_column,
                     start=start, end=end, blank=blank, stack=stack, template=template,
                     hw=hw, locations=locations, coordinates=coordinates,
                     allow_overlap=allow_overlap, split_fractions=split_fractions,
                     split_seed=split_seed)
    for i, image in zip(rec.stimulus_ids.tolist(), rec.images):
      digest = hashlib.sha1(image.tobytes()).digest()
      first = seen.setdefault(i, (digest, str(path)))
      if first[0] != digest:
        raise DataError(f"{path}: image index {i} shows other pixels than in {first[1]}; "
                        "an index must mean the same image in every file of a dataset")
    recordings.append(rec)
  return Dataset("nwb", tuple(recordings))


# ---------------------------------------------------------------------------------------
# One file


def _import_pynwb():
  try:
    import pynwb  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise NWBDependencyError(f"reading NWB files needs pynwb ({e}); install it with "
                             "pip install \"jaxvna[nwb]\"") from e
  return pynwb


def _check_window(window: Sequence[float]) -> tuple[float, float]:
  try:
    start, end = (float(w) for w in window)
  except (TypeError, ValueError) as e:
    raise DataError(f"window: expected (start, end) in seconds, got {window!r}") from e
  if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
    raise DataError(f"window: expected finite (start, end) seconds with end > start, got "
                    f"{tuple(window)!r}")
  return start, end


def _read_file(pynwb, path: pathlib.Path, *, presentations, image_column, start, end, blank,
               stack, template, hw, locations, coordinates, allow_overlap, split_fractions,
               split_seed) -> Recording:
  if path.is_dir():
    raise DataError(f"{path}: is a folder; expected an .nwb (HDF5) file")
  if not path.is_file():
    raise DataError(f"{path}: file is missing")
  try:
    io = pynwb.NWBHDF5IO(str(path), "r")
  except Exception as e:  # h5py and hdmf raise many types for files that are not NWB.
    raise DataError(f"{path}: cannot open as an NWB (HDF5) file ({e})") from e
  with io:
    try:
      nwb = io.read()
    except Exception as e:  # hdmf's builders raise many types on malformed files.
      raise DataError(f"{path}: cannot read as an NWB file ({e})") from e
    name, table = _presentations_table(nwb, path, presentations)
    where = f"{path}: table 'intervals/{name}'"
    onsets, index = _presentations(table, where, image_column, blank)
    order = np.argsort(onsets, kind="stable")
    onsets, index = onsets[order], index[order]
    _check_overlap(onsets, start, end, where, allow_overlap)

    if stack is None:
      stack = _ImageStack.from_templates(nwb, path, template)
    ids = np.unique(index)
    if ids[-1] >= stack.size or ids[0] < 0:
      bad = int(ids[-1] if ids[-1] >= stack.size else ids[0])
      raise DataError(f"{where}: column '{image_column}': image index {bad} is out of range "
                      f"for the {stack.size} images of {stack.where} (0..{stack.size - 1})")
    image_array = stack.images(ids, hw)

    units = _Units(nwb, path)
    keep = units.at_locations(locations)
    counts = units.counts(keep, onsets + start, onsets + end)  # (P, K)
    coords = (units.coordinates(keep) if coordinates
              else np.zeros((keep.size, 0), np.float32))

  # In time order: repeat r is the r-th showing.
  _, responses, _ = readers.group_repeats(index, counts)
  split = readers.hashed_split([int(i).to_bytes(8, "little", signed=True) for i in ids],
                               split_fractions, split_seed)
  return Recording(name=path.stem, images=image_array, responses=responses,
                   neuron_coords=coords, split=split, stimulus_ids=ids.astype(np.int64),
                   source=str(path))


def _presentations_table(nwb, path: pathlib.Path, name: str | None):
  """(name, TimeIntervals) of the presentations; DataError naming what the file has."""
  tables = dict(nwb.intervals or {})
  if name is None:
    name = ALLEN_PRESENTATIONS if ALLEN_PRESENTATIONS in tables else "trials"
    wanted = f"'intervals/{ALLEN_PRESENTATIONS}' or 'intervals/trials'"
  else:
    wanted = f"'intervals/{name}'"
  if name not in tables:
    raise DataError(f"{path}: no presentations table {wanted}; the file's intervals tables "
                    f"are {sorted(tables)} (pass presentations=<name>)")
  return name, tables[name]


def _presentations(table, where: str, column: str, blank: int | None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(P,) float64 onsets and (P,) int64 image indices of the non-blank presentations."""
  if len(table) == 0:
    raise DataError(f"{where}: no presentations (the table is empty)")
  if column not in table.colnames:
    raise DataError(f"{where}: no column '{column}' of image indices; columns are "
                    f"{list(table.colnames)} (pass image_column=<name>)")
  raw = np.asarray(table[column].data[:])
  if raw.ndim != 1:
    raise DataError(f"{where}: column '{column}': expected one image index per "
                    f"presentation, got shape {raw.shape}")
  if raw.dtype.kind in "OUS":  # indices stored as text
    try:
      raw = raw.astype(np.float64)
    except (TypeError, ValueError) as e:
      raise DataError(f"{where}: column '{column}': expected image indices (integers), "
                      f"got text such as {raw[0]!r}") from e
  if raw.dtype.kind not in "iuf":
    raise DataError(f"{where}: column '{column}': expected image indices (integers), got "
                    f"dtype {raw.dtype}")
  if raw.dtype.kind == "f":
    bad = ~np.isfinite(raw) | (raw != np.round(raw))
    if bad.any():
      row = int(np.argmax(bad))
      raise DataError(f"{where}: column '{column}': expected integer image indices, got "
                      f"{raw[row].item()!r} in row {row} ({int(bad.sum())} such rows)")
  index = raw.astype(np.int64)
  onsets = np.asarray(table["start_time"].data[:], np.float64)
  if not np.isfinite(onsets).all():
    raise DataError(f"{where}: column 'start_time': {int((~np.isfinite(onsets)).sum())} "
                    "non-finite onsets")
  shown = index != blank if blank is not None else np.ones(index.shape, bool)
  if not shown.any():
    raise DataError(f"{where}: no presentations of an image: all {index.size} rows of "
                    f"column '{column}' are the blank index {blank}")
  return onsets[shown], index[shown]


def _check_overlap(onsets: np.ndarray, start: float, end: float, where: str,
                   allow_overlap: bool):
  """Sorted onsets: DataError if a window reaches into the next presentation's window."""
  if allow_overlap or onsets.size < 2:
    return
  gaps = np.diff(onsets)
  short = gaps < (end - start) - _TOUCH_TOLERANCE_S
  if short.any():
    p = int(np.argmax(short))
    raise DataError(
        f"{where}: the windows of {int(short.sum())} presentations overlap the next one's "
        f"(window {end - start:.4g} s long; onsets {onsets[p]:.6g} s and {onsets[p + 1]:.6g} "
        f"s are {gaps[p]:.4g} s apart, the shortest gap is {gaps.min():.4g} s); shorten "
        "window or pass allow_overlap=True")


# ---------------------------------------------------------------------------------------
# Images


class _ImageStack:
  """An indexable stack of n images (a file's template or the user's .npy/.npz)."""

  def __init__(self, data: Any, where: str):
    self.data = data  # (n, H, W[, C]) array-like: numpy, h5py, or a list of 2-3-D arrays
    self.where = where
    shape = data.shape if hasattr(data, "shape") else None
    self.size = int(shape[0]) if shape is not None else len(data)
    if shape is not None and len(shape) not in (3, 4):
      raise DataError(f"{where}: expected an image stack (n, H, W) or (n, H, W, C), got "
                      f"shape {tuple(shape)}")
    if self.size == 0:
      raise DataError(f"{where}: the image stack is empty")

  @classmethod
  def from_file(cls, path: pathlib.Path) -> "_ImageStack":
    if not path.is_file():
      raise DataError(f"{path}: images file is missing")
    try:
      if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
          keys = list(archive.files)
          if "images" in keys or len(keys) == 1:
            return cls(archive["images" if "images" in keys else keys[0]], str(path))
        raise DataError(f"{path}: expected an 'images' array (or a single array), found "
                        f"{keys}")
      if path.suffix == ".npy":
        return cls(np.load(path, mmap_mode="r", allow_pickle=False), str(path))
    except (ValueError, OSError, EOFError) as e:
      raise DataError(f"{path}: cannot read the images ({e})") from e
    raise DataError(f"{path}: images file: expected a .npy or .npz file")

  @classmethod
  def from_templates(cls, nwb, path: pathlib.Path, name: str | None) -> "_ImageStack":
    templates = dict(nwb.stimulus_template or {})
    if name is None:
      if len(templates) == 1:
        name = next(iter(templates))
      elif ALLEN_TEMPLATE in templates:
        name = ALLEN_TEMPLATE
      elif not templates:
        raise DataError(f"{path}: no images: 'stimulus/templates' is empty; pass "
                        "images=<a .npy or .npz file of the image stack>")
      else:
        raise DataError(f"{path}: 'stimulus/templates' holds {sorted(templates)}; pass "
                        "template=<the name of the image stack>")
    if name not in templates:
      raise DataError(f"{path}: no template 'stimulus/templates/{name}'; the file has "
                      f"{sorted(templates)}")
    where = f"{path}: 'stimulus/templates/{name}'"
    obj = templates[name]
    if hasattr(obj, "images"):  # pynwb.base.Images: named Image objects
      order = getattr(obj, "order_of_images", None)
      members = (list(order.data) if order is not None
                 else [obj.images[k] for k in sorted(obj.images, key=readers.natural_key)])
      return cls([m.data for m in members], where)
    data = getattr(obj, "data", None)
    if data is None or getattr(data, "shape", (0,))[0] == 0:
      raise DataError(f"{where}: holds no image data (an external file?); pass "
                      "images=<a .npy or .npz file of the image stack>")
    return cls(data, where)

  def images(self, ids: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """(len(ids), H, W, C) uint8 of the sorted unique indices `ids`, resized to hw."""
    if isinstance(self.data, list):
      raw = [np.asarray(self.data[i]) for i in ids.tolist()]
      shapes = {r.shape for r in raw}
      if len(shapes) > 1 and hw is None:
        raise DataError(f"{self.where}: images of different shapes {sorted(shapes)}; pass "
                        "image_size to resize")
    else:
      raw = list(np.asarray(self.data[ids.tolist()]))  # increasing: h5py reads it in one go
    out = []
    for image in raw:
      image = image[..., None] if image.ndim == 2 else image
      if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise DataError(f"{self.where}: expected grey (H, W) or (H, W, 1|3) images, got "
                        f"shape {image.shape}")
      out.append(readers.resize_image(self._to_uint8(image), hw))
    return np.stack(out)

  def _to_uint8(self, image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
      return image
    if image.dtype.kind in "iu":
      if image.size and (image.min() < 0 or image.max() > 255):
        raise DataError(f"{self.where}: expected grey levels 0-255, got integers in "
                        f"[{image.min()}, {image.max()}]")
      return image.astype(np.uint8)
    if image.dtype.kind != "f":
      raise DataError(f"{self.where}: expected images of numbers, got dtype {image.dtype}")
    if image.size and 0.0 < float(np.max(image)) <= 1.0:
      raise DataError(f"{self.where}: float images lie in [0, 1]; expected grey levels "
                      "0-255")
    return readers.float_to_uint8(image.astype(np.float64), self.where, "images")


# ---------------------------------------------------------------------------------------
# Units


class _Units:
  """The units table of one file: spike times, electrodes, locations."""

  def __init__(self, nwb, path: pathlib.Path):
    self.nwb, self.path = nwb, path
    self.where = f"{path}: table 'units'"
    units = nwb.units
    if units is None:
      raise DataError(f"{path}: no units table ('units'); expected spike-sorted units with "
                      "spike_times")
    if len(units) == 0:
      raise DataError(f"{self.where}: no units (the table is empty)")
    if "spike_times" not in units.colnames:
      raise DataError(f"{self.where}: no column 'spike_times'; columns are "
                      f"{list(units.colnames)}")
    column = units["spike_times"]
    if not hasattr(column, "target"):  # a ragged column is a VectorIndex into the times
      raise DataError(f"{self.where}: column 'spike_times': expected a ragged column of "
                      "spike times per unit")
    self.table = units
    self.ends = np.asarray(column.data[:], np.int64)
    self.times = column.target.data

  def _electrode_rows(self) -> tuple[list[np.ndarray], str] | None:
    """Per unit, its rows of the electrodes table, and the column that said so."""
    electrodes = self.nwb.electrodes
    if electrodes is None:
      return None
    if "peak_channel_id" in self.table.colnames:
      ids = np.asarray(electrodes.id.data[:])
      row_of = {int(e): r for r, e in enumerate(ids)}
      peaks = np.asarray(self.table["peak_channel_id"].data[:])
      missing = [int(p) for p in peaks if int(p) not in row_of]
      if missing:
        raise DataError(f"{self.where}: column 'peak_channel_id': {len(missing)} units name "
                        f"channels that are not in the electrodes table (e.g. {missing[0]})")
      return [np.array([row_of[int(p)]]) for p in peaks], "peak_channel_id"
    if "electrodes" in self.table.colnames:
      region = self.table["electrodes"]
      if hasattr(region, "target"):  # VectorIndex: several electrodes per unit
        ends = np.asarray(region.data[:], np.int64)
        rows = np.asarray(region.target.data[:], np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        return [rows[a:b] for a, b in zip(starts, ends)], "electrodes"
      return [np.array([r]) for r in np.asarray(region.data[:], np.int64)], "electrodes"
    return None

  def at_locations(self, locations: Sequence[str] | None) -> np.ndarray:
    """Row indices of the units to read: all, or those at one of `locations`."""
    every = np.arange(len(self.table))
    if locations is None:
      return every
    locations = [locations] if isinstance(locations, str) else list(locations)
    found = self._electrode_rows()
    electrodes = self.nwb.electrodes
    if found is None or "location" not in electrodes.colnames:
      raise DataError(f"{self.where}: locations={locations!r} needs each unit's electrode "
                      "('peak_channel_id' or 'electrodes' column) and a 'location' column "
                      "of the electrodes table; the file lacks them")
    rows, _ = found
    names = np.asarray(electrodes["location"].data[:]).astype(str)
    keep = np.array([bool(set(names[r]) & set(locations)) for r in rows])
    if not keep.any():
      raise DataError(f"{self.where}: no unit at locations {locations}; the units' "
                      f"locations are {sorted(set(names[np.concatenate(rows)]))}")
    return every[keep]

  def counts(self, keep: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(P, K) float32 spike counts of units `keep` in [lo, hi) per presentation."""
    out = np.empty((lo.size, keep.size), np.float32)
    starts = np.concatenate([[0], self.ends[:-1]])
    for k, u in enumerate(keep):
      times = np.asarray(self.times[starts[u]:self.ends[u]], np.float64)
      if times.size and np.any(np.diff(times) < 0):
        times = np.sort(times)
      out[:, k] = np.searchsorted(times, hi) - np.searchsorted(times, lo)
    return out

  def coordinates(self, keep: np.ndarray) -> np.ndarray:
    """(K, 3) float32 unit locations from the first COORDINATE_COLUMNS found, else (K, 0)."""
    for names in COORDINATE_COLUMNS:
      if all(n in self.table.colnames for n in names):
        xyz = np.stack([np.asarray(self.table[n].data[:], np.float64) for n in names], 1)
        return self._finite(xyz[keep], self.where, names)
    found = self._electrode_rows()
    electrodes = self.nwb.electrodes
    if found is not None:
      rows, via = found
      for names in COORDINATE_COLUMNS:
        if all(n in electrodes.colnames for n in names):
          xyz = np.stack([np.asarray(electrodes[n].data[:], np.float64) for n in names], 1)
          per_unit = np.stack([xyz[rows[u]].mean(axis=0) if rows[u].size
                               else np.full(3, np.nan) for u in keep])
          where = (f"{self.path}: table 'general/extracellular_ephys/electrodes' "
                   f"(the units' {via})")
          return self._finite(per_unit, where, names)
    return np.zeros((keep.size, 0), np.float32)

  @staticmethod
  def _finite(xyz: np.ndarray, where: str, names: Sequence[str]) -> np.ndarray:
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
      raise DataError(f"{where}: columns {list(names)}: {int(bad.sum())} units have no "
                      "finite location; pass coordinates=False to read none")
    return xyz.astype(np.float32)
