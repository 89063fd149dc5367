"""The NWB reader (jaxvna.data.nwb) on files written with pynwb itself, in the layouts of
the Allen Visual Coding Neuropixels natural-scenes sessions and of a plain DANDI ecephys
file: spike counts against counts binned by hand, repeats, padding, coordinates, images,
and one clear error per kind of bad file."""

import datetime
import json
import re
import subprocess
import sys

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")
from pynwb.base import ImageReferences, Images  # noqa: E402
from pynwb.epoch import TimeIntervals  # noqa: E402
from pynwb.image import GrayscaleImage, ImageSeries  # noqa: E402

from jaxvna.data import nwb, readers  # noqa: E402
from jaxvna.data.dataset import DataError  # noqa: E402

START = datetime.datetime(2019, 1, 19, tzinfo=datetime.timezone.utc)
WINDOW = (0.05, 0.25)


def raises(*parts):
  """pytest.raises(DataError) whose message contains every part, in order."""
  return pytest.raises(DataError, match=".*".join(re.escape(str(p)) for p in parts))


def _file(identifier="715093703"):
  return pynwb.NWBFile(session_description="test session", identifier=identifier,
                       session_start_time=START)


def _save(nwbfile, path):
  with pynwb.NWBHDF5IO(str(path), "w") as io:
    io.write(nwbfile)
  return path


def _hand_binned(spikes, onsets, index, window, ids):
  """(N, R, K) expected responses: spikes of each unit in [t + a, t + b), presentations
  of one image in time order as its repeats, NaN padding; counted with plain loops."""
  a, b = window
  per_image = {i: [] for i in ids}
  for p in sorted(range(len(onsets)), key=lambda p: onsets[p]):
    if index[p] in per_image:
      t = onsets[p]
      per_image[index[p]].append([sum(1 for s in unit if t + a <= s < t + b)
                                  for unit in spikes])
  repeats = max(len(v) for v in per_image.values())
  out = np.full((len(ids), repeats, len(spikes)), np.nan, np.float32)
  for n, i in enumerate(ids):
    for r, row in enumerate(per_image[i]):
      out[n, r] = row
  return out


# ---------------------------------------------------------------------------------------
# The Allen Visual Coding Neuropixels natural-scenes layout

# 12 presentations 250 ms apart (jittered by up to 2 ms): image 0 three times, 1 and 4
# twice, 2 once, blanks (-1); image 3 is in the stack but never shown.
ALLEN_FRAMES = [0.0, 1.0, -1.0, 4.0, 0.0, 2.0, 1.0, -1.0, 4.0, 0.0, -1.0, -1.0]
ALLEN_LOCATIONS = ["VISp", "VISp", "CA1", "VISl"]


def _allen_session(seed=0, frames=ALLEN_FRAMES):
  rng = np.random.default_rng(seed)
  onsets = 10.0 + 0.25 * np.arange(len(frames)) + rng.uniform(0, 0.002, len(frames))
  end = onsets[-1] + 0.5
  spikes = [np.sort(rng.uniform(9.0, end, 60)) for _ in ALLEN_LOCATIONS]
  # Spikes on the edges of the first window: its start counts, its end does not.
  spikes[0] = np.sort(np.concatenate([spikes[0], [onsets[0] + WINDOW[0],
                                                  onsets[0] + WINDOW[1]]]))
  stack = rng.integers(0, 256, (5, 12, 16), dtype=np.uint8)
  xyz = rng.normal(size=(len(ALLEN_LOCATIONS) + 2, 3)) * 1000
  return dict(onsets=onsets, frames=list(frames), spikes=spikes, stack=stack, xyz=xyz)


def write_allen(path, session, *, templates=True, units=True, presentations=True,
                xyz=None):
  """An NWB file laid out like the Allen Neuropixels session files (one probe)."""
  f = _file()
  device = f.create_device("probeA")
  group = f.create_electrode_group("probeA", description="Neuropixels", location="VISp",
                                   device=device)
  f.add_electrode_column("probe_vertical_position", "length-wise position (microns)")
  channels = 850_000_000 + np.arange(len(session["xyz"]))
  electrode_xyz = session["xyz"] if xyz is None else xyz
  # Unit k peaks on channel k + 1 (channel 0 carries none), so the join is by id.
  locations = ["VISp"] + ALLEN_LOCATIONS + ["VISp"] * (len(channels) - 1 - len(ALLEN_LOCATIONS))
  for c, (x, y, z), location in zip(channels, electrode_xyz, locations):
    f.add_electrode(id=int(c), x=float(x), y=float(y), z=float(z), location=location,
                    group=group, probe_vertical_position=int(c % 1000) * 20)
  if units:
    f.add_unit_column("peak_channel_id", "channel of the largest waveform")
    f.add_unit_column("quality", "sorting quality")
    for k, times in enumerate(session["spikes"]):
      f.add_unit(id=950_000_000 + k, spike_times=times, peak_channel_id=int(channels[k + 1]),
                 quality="good")
  if presentations:
    table = TimeIntervals(name="natural_scenes_presentations",
                          description="Presentation times and stimuli details")
    table.add_column("frame", "Frame of movie stimulus")
    table.add_column("stimulus_name", "Name of stimulus")
    for t, frame in zip(session["onsets"], session["frames"]):
      table.add_interval(start_time=float(t), stop_time=float(t) + 0.25, frame=frame,
                         stimulus_name="natural_scenes")
    f.add_time_intervals(table)
  flashes = TimeIntervals(name="flashes_presentations", description="flashes")
  flashes.add_interval(start_time=1.0, stop_time=1.25)
  f.add_time_intervals(flashes)
  if templates == "external":  # the frames in a movie file beside the NWB file
    f.add_stimulus_template(ImageSeries(name="natural_scenes_image_stack",
                                        external_file=["scenes.avi"], starting_frame=[0],
                                        format="external", rate=1.0, num_samples=5))
  elif templates:
    f.add_stimulus_template(ImageSeries(name="natural_scenes_image_stack",
                                        data=session["stack"], unit="NA", format="raw",
                                        rate=1.0))
  return _save(f, path)


@pytest.fixture(scope="module")
def allen(tmp_path_factory):
  session = _allen_session()
  path = write_allen(tmp_path_factory.mktemp("allen") / "sub-699733573_ses-715093703.nwb",
                     session)
  return path, session


def test_allen_session_counts_match_hand_binned_spikes(allen):
  path, s = allen
  ds = nwb.read_nwb(path)
  assert ds.name == "nwb" and len(ds.recordings) == 1
  rec = ds.recordings[0]
  assert rec.name == "sub-699733573_ses-715093703" and rec.source == str(path)
  ids = [0, 1, 2, 4]  # sorted, blanks (-1) and the unshown image 3 left out
  np.testing.assert_array_equal(rec.stimulus_ids, ids)
  assert rec.stimulus_ids.dtype == np.int64
  expected = _hand_binned(s["spikes"], s["onsets"], s["frames"], WINDOW, ids)
  assert rec.responses.shape == (4, 3, 4) and rec.responses.dtype == np.float32
  np.testing.assert_array_equal(rec.responses, expected)  # NaN where padded
  np.testing.assert_array_equal(rec.num_repeats, [3, 2, 1, 2])
  assert np.nansum(rec.responses) > 0 and rec.responses[0, 0, 0] >= 1  # the edge spike
  np.testing.assert_array_equal(rec.images, s["stack"][ids][..., None])
  # Units peak on channels 1..4: their electrodes' x, y, z.
  np.testing.assert_allclose(rec.neuron_coords, s["xyz"][1:5], rtol=1e-6)
  np.testing.assert_array_equal(
      rec.split, readers.hashed_split([i.to_bytes(8, "little", signed=True) for i in ids],
                                      (0.8, 0.1, 0.1), 0))


def test_edges_of_the_window(allen):
  """[onset + start, onset + end): the spike placed at the start counts, at the end not."""
  path, s = allen
  rec = nwb.read_nwb(path)["sub-699733573_ses-715093703"]
  t = s["onsets"][0]
  unit = s["spikes"][0]
  inside = int(np.sum((unit > t + WINDOW[0]) & (unit < t + WINDOW[1])))
  assert rec.responses[0, 0, 0] == inside + 1


def test_load_by_kind_with_options_matches_hand_binning(allen):
  path, s = allen
  window = (0.0, 0.2)
  ds = readers.load("nwb", paths=[str(path)], window=window, locations=("VISp",),
                    image_size=8, split_fractions=(0.5, 0.0, 0.5), split_seed=3)
  rec = ds.recordings[0]
  # Units 0 and 1 peak on the VISp channels; unit 2 is in CA1, unit 3 in VISl.
  expected = _hand_binned(s["spikes"][:2], s["onsets"], s["frames"], window, [0, 1, 2, 4])
  np.testing.assert_array_equal(rec.responses, expected)
  np.testing.assert_allclose(rec.neuron_coords, s["xyz"][1:3], rtol=1e-6)
  assert rec.images.shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(rec.images[3],
                                readers.resize_image(s["stack"][4][..., None], (8, 8)))
  assert set(rec.split.tolist()) <= {0, 2}
  none = nwb.read_nwb(path, coordinates=False)
  assert none.recordings[0].neuron_coords.shape == (4, 0)


def test_sessions_share_ids_and_splits_and_refuse_clashing_images(tmp_path):
  a, b = _allen_session(0), _allen_session(1)
  b["stack"] = a["stack"].copy()
  pa = write_allen(tmp_path / "ses-a.nwb", a)
  pb = write_allen(tmp_path / "ses-b.nwb", b)
  ds = nwb.read_nwb([pa, pb], split_fractions=(0.34, 0.33, 0.33), split_seed=5)
  assert [r.name for r in ds.recordings] == ["ses-a", "ses-b"]
  ra, rb = ds.recordings
  np.testing.assert_array_equal(ra.stimulus_ids, rb.stimulus_ids)
  np.testing.assert_array_equal(ra.split, rb.split)
  np.testing.assert_array_equal(
      rb.responses, _hand_binned(b["spikes"], b["onsets"], b["frames"], WINDOW, [0, 1, 2, 4]))
  b["stack"] = b["stack"][::-1].copy()  # index 0 now shows another image
  pc = write_allen(tmp_path / "ses-c.nwb", b)
  with raises(pc, "image index 0 shows other pixels than in", pa):
    nwb.read_nwb([pa, pc])


def test_images_container_templates_in_stated_or_name_order(tmp_path):
  s = _allen_session(frames=[0.0, 1.0, 2.0, 1.0])
  f = _file()
  table = TimeIntervals(name="natural_scenes_presentations", description="ns")
  table.add_column("frame", "Frame")
  for t, frame in zip(s["onsets"], s["frames"]):
    table.add_interval(start_time=float(t), stop_time=float(t) + 0.25, frame=frame)
  f.add_time_intervals(table)
  for times in s["spikes"]:
    f.add_unit(spike_times=times)
  pictures = [GrayscaleImage(name=f"scene{k}", data=s["stack"][k]) for k in range(3)]
  order = [pictures[2], pictures[0], pictures[1]]
  f.add_stimulus_template(Images(name="scenes", images=pictures, description="scenes",
                                 order_of_images=ImageReferences(name="order_of_images",
                                                                 data=order)))
  # No stated order: by name, numbers compared as numbers (img2 before img10).
  named = [GrayscaleImage(name=n, data=s["stack"][k])
           for n, k in (("img10", 0), ("img1", 1), ("img2", 2))]
  f.add_stimulus_template(Images(name="unordered", images=named, description="by name"))
  path = _save(f, tmp_path / "images.nwb")
  with raises(path, "'stimulus/templates' holds ['scenes', 'unordered']", "template="):
    nwb.read_nwb(path)
  rec = nwb.read_nwb(path, template="scenes").recordings[0]
  np.testing.assert_array_equal(rec.images[..., 0], s["stack"][[2, 0, 1]])
  assert rec.neuron_coords.shape == (4, 0)  # no electrodes, no coordinates
  np.testing.assert_array_equal(
      rec.responses, _hand_binned(s["spikes"], s["onsets"], s["frames"], WINDOW, [0, 1, 2]))
  rec = nwb.read_nwb(path, template="unordered").recordings[0]
  np.testing.assert_array_equal(rec.images[..., 0], s["stack"][[1, 2, 0]])
  with raises(path, "table 'units'", "locations=['VISp'] needs each unit's electrode"):
    nwb.read_nwb(path, template="scenes", locations="VISp")


# ---------------------------------------------------------------------------------------
# A plain DANDI ecephys file: trials, units on electrodes, images from a file


def write_dandi(path, *, image_index, onsets, spikes, unit_electrodes, xyz,
                ccf_on_units=None, index_dtype=np.int64):
  f = _file("dandi-session")
  device = f.create_device("shank")
  group = f.create_electrode_group("shank0", description="d", location="V1", device=device)
  for x, y, z in xyz:
    f.add_electrode(location="V1", group=group, x=float(x), y=float(y), z=float(z))
  f.add_trial_column("image_index", "index of the image shown")
  for t, i in zip(onsets, image_index):
    f.add_trial(start_time=float(t), stop_time=float(t) + 0.5,
                image_index=i if index_dtype is str else np.asarray(i, index_dtype).item())
  if ccf_on_units is not None:
    for name in nwb.COORDINATE_COLUMNS[0]:
      f.add_unit_column(name, "CCF coordinate")
  for k, (times, rows) in enumerate(zip(spikes, unit_electrodes)):
    extra = ({} if ccf_on_units is None
             else dict(zip(nwb.COORDINATE_COLUMNS[0], map(float, ccf_on_units[k]))))
    f.add_unit(spike_times=times, electrodes=list(rows), **extra)
  return _save(f, path)


@pytest.fixture(scope="module")
def dandi(tmp_path_factory):
  rng = np.random.default_rng(7)
  folder = tmp_path_factory.mktemp("dandi")
  # Trials 1 s apart, rows stored out of time order; image 1 is shown three times.
  image_index = [2, 1, 0, 1, 3, 1, 0]
  onsets = [5.0, 1.0, 2.0, 3.0, 6.0, 7.0, 4.0]
  spikes = [np.sort(rng.uniform(0.5, 8.0, n)) for n in (40, 25, 70)]
  xyz = rng.normal(size=(4, 3))
  path = write_dandi(folder / "sub-01_ses-01_ecephys.nwb", image_index=image_index,
                     onsets=onsets, spikes=spikes, unit_electrodes=[[0, 1], [2], [3]],
                     xyz=xyz)
  stack = rng.integers(0, 256, (4, 6, 10, 3), dtype=np.uint8)
  np.save(folder / "images.npy", stack)
  np.savez(folder / "images.npz", images=stack, other=np.zeros(2))
  return dict(path=path, folder=folder, image_index=image_index, onsets=onsets,
              spikes=spikes, xyz=xyz, stack=stack)


def test_dandi_trials_with_images_from_a_user_file(dandi):
  window = (0.0, 0.5)
  for images in ("images.npy", "images.npz"):
    ds = nwb.read_nwb(dandi["path"], presentations="trials", image_column="image_index",
                      window=window, blank=None, images=dandi["folder"] / images)
    rec = ds.recordings[0]
    np.testing.assert_array_equal(rec.stimulus_ids, [0, 1, 2, 3])
    np.testing.assert_array_equal(rec.images, dandi["stack"])
    expected = _hand_binned(dandi["spikes"], dandi["onsets"], dandi["image_index"], window,
                            [0, 1, 2, 3])
    assert rec.responses.shape == (4, 3, 3)
    np.testing.assert_array_equal(rec.responses, expected)
    # Unit 0 sits on electrodes 0 and 1: their mean position.
    xyz = dandi["xyz"]
    np.testing.assert_allclose(rec.neuron_coords,
                               [xyz[:2].mean(0), xyz[2], xyz[3]], rtol=1e-5, atol=1e-6)


def test_trials_is_the_default_table_and_unit_columns_give_coordinates(tmp_path, dandi):
  ccf = np.arange(9.0).reshape(3, 3) * 100
  path = write_dandi(tmp_path / "ccf.nwb", image_index=[0, 1, 1], onsets=[1.0, 2.0, 3.0],
                     spikes=dandi["spikes"], unit_electrodes=[[0], [1], [2]],
                     xyz=dandi["xyz"], ccf_on_units=ccf, index_dtype=np.float64)
  rec = nwb.read_nwb(path, image_column="image_index", window=(0.1, 0.6),
                     images=dandi["folder"] / "images.npy").recordings[0]
  np.testing.assert_array_equal(rec.neuron_coords, ccf)  # the units' own CCF columns
  np.testing.assert_array_equal(
      rec.responses,
      _hand_binned(dandi["spikes"], [1.0, 2.0, 3.0], [0, 1, 1], (0.1, 0.6), [0, 1]))


def test_indices_stored_as_text(tmp_path, dandi):
  path = write_dandi(tmp_path / "text.nwb", image_index=["1", "0", "1"],
                     onsets=[1.0, 2.0, 3.0], spikes=dandi["spikes"],
                     unit_electrodes=[[0], [1], [2]], xyz=dandi["xyz"], index_dtype=str)
  rec = nwb.read_nwb(path, image_column="image_index", window=(0.0, 0.5),
                     images=dandi["folder"] / "images.npy").recordings[0]
  np.testing.assert_array_equal(
      rec.responses,
      _hand_binned(dandi["spikes"], [1.0, 2.0, 3.0], [1, 0, 1], (0.0, 0.5), [0, 1]))
  path = write_dandi(tmp_path / "words.nwb", image_index=["one"], onsets=[1.0],
                     spikes=dandi["spikes"], unit_electrodes=[[0], [1], [2]],
                     xyz=dandi["xyz"], index_dtype=str)
  with raises(path, "table 'intervals/trials'", "column 'image_index'",
              "expected image indices (integers), got text such as 'one'"):
    nwb.read_nwb(path, image_column="image_index", images=dandi["folder"] / "images.npy")


def test_user_image_files_of_other_dtypes_and_bad_ones(tmp_path, dandi):
  kw = dict(presentations="trials", image_column="image_index", window=(0.0, 0.5),
            blank=None)
  stack = dandi["stack"]
  for name, values in (("int.npy", stack.astype(np.int64)),
                       ("float.npy", stack.astype(np.float32) - 0.4)):
    np.save(tmp_path / name, values)
    rec = nwb.read_nwb(dandi["path"], images=tmp_path / name, **kw).recordings[0]
    np.testing.assert_array_equal(rec.images, stack)  # rounded, not truncated
  bad = (("unit.npy", stack / 255.0, "float images lie in [0, 1]"),
         ("wide.npy", stack.astype(np.int64) * 2, "expected grey levels 0-255"),
         ("flat.npy", stack[..., 0].reshape(4, -1), "expected an image stack (n, H, W)"),
         ("rgba.npy", np.concatenate([stack, stack[..., :1]], -1), "(H, W, 1|3) images"))
  for name, values, message in bad:
    np.save(tmp_path / name, values)
    with raises(tmp_path / name, message):
      nwb.read_nwb(dandi["path"], images=tmp_path / name, **kw)
  np.savez(tmp_path / "two.npz", a=stack, b=stack)
  with raises(tmp_path / "two.npz", "expected an 'images' array (or a single array)"):
    nwb.read_nwb(dandi["path"], images=tmp_path / "two.npz", **kw)
  (tmp_path / "scenes.png").write_bytes(b"png")
  with raises(tmp_path / "scenes.png", "expected a .npy or .npz file"):
    nwb.read_nwb(dandi["path"], images=tmp_path / "scenes.png", **kw)


# ---------------------------------------------------------------------------------------
# Bad files and arguments


def test_no_presentations_table(tmp_path, allen):
  path = write_allen(tmp_path / "no_presentations.nwb", allen[1], presentations=False)
  with raises(path, "no presentations table", "'intervals/natural_scenes_presentations'",
              "'intervals/trials'", "flashes_presentations"):
    nwb.read_nwb(path)
  with raises(allen[0], "no presentations table 'intervals/gratings'"):
    nwb.read_nwb(allen[0], presentations="gratings")
  with raises(allen[0], "table 'intervals/natural_scenes_presentations'",
              "no column 'image'", "frame"):
    nwb.read_nwb(allen[0], image_column="image")


def test_no_units(tmp_path, allen):
  path = write_allen(tmp_path / "no_units.nwb", allen[1], units=False)
  with raises(path, "no units table ('units')"):
    nwb.read_nwb(path)


def test_image_index_out_of_range(tmp_path):
  s = _allen_session(frames=[0.0, 7.0, 1.0])
  path = write_allen(tmp_path / "out_of_range.nwb", s)
  with raises(path, "table 'intervals/natural_scenes_presentations'", "column 'frame'",
              "image index 7 is out of range for the 5 images of",
              "stimulus/templates/natural_scenes_image_stack"):
    nwb.read_nwb(path)


def test_non_integer_and_all_blank_indices(tmp_path):
  path = write_allen(tmp_path / "half.nwb", _allen_session(frames=[0.0, 1.5, 1.0]))
  with raises(path, "intervals/natural_scenes_presentations", "column 'frame'",
              "expected integer image indices, got 1.5 in row 1"):
    nwb.read_nwb(path)
  path = write_allen(tmp_path / "blank.nwb", _allen_session(frames=[-1.0, -1.0]))
  with raises(path, "intervals/natural_scenes_presentations", "blank index -1"):
    nwb.read_nwb(path)


def test_overlapping_windows_are_an_error_unless_allowed(allen):
  path, s = allen
  window = (0.0, 0.4)  # onsets are about 250 ms apart
  with raises(path, "table 'intervals/natural_scenes_presentations'", "overlap",
              "allow_overlap=True"):
    nwb.read_nwb(path, window=window)
  rec = nwb.read_nwb(path, window=window, allow_overlap=True).recordings[0]
  np.testing.assert_array_equal(
      rec.responses, _hand_binned(s["spikes"], s["onsets"], s["frames"], window,
                                  [0, 1, 2, 4]))


def test_no_images(tmp_path, allen):
  path = write_allen(tmp_path / "no_templates.nwb", allen[1], templates=False)
  with raises(path, "'stimulus/templates' is empty", "images="):
    nwb.read_nwb(path)
  path = write_allen(tmp_path / "external.nwb", allen[1], templates="external")
  with raises(path, "'stimulus/templates/natural_scenes_image_stack'",
              "holds no image data (an external file?)", "images="):
    nwb.read_nwb(path)
  with raises(allen[0], "no template 'stimulus/templates/movie'"):
    nwb.read_nwb(allen[0], template="movie")
  with raises(tmp_path / "missing.npy", "images file is missing"):
    nwb.read_nwb(allen[0], images=tmp_path / "missing.npy")


def test_non_finite_coordinates(tmp_path, allen):
  s = allen[1]
  xyz = s["xyz"].copy()
  xyz[2] = np.nan  # the peak channel of unit 1
  path = write_allen(tmp_path / "unregistered.nwb", s, xyz=xyz)
  with raises(path, "electrodes", "peak_channel_id", "1 units have no finite location",
              "coordinates=False"):
    nwb.read_nwb(path)
  assert nwb.read_nwb(path, coordinates=False).recordings[0].neuron_coords.shape == (4, 0)


def test_missing_and_unreadable_files_and_bad_arguments(tmp_path, allen):
  with raises(tmp_path / "absent.nwb", "file is missing"):
    nwb.read_nwb(tmp_path / "absent.nwb")
  text = tmp_path / "notes.nwb"
  text.write_text("not hdf5")
  with raises(text, "cannot open as an NWB"):
    nwb.read_nwb(text)
  with raises("window", "end > start"):
    nwb.read_nwb(allen[0], window=(0.2, 0.1))
  with raises("split_fractions"):
    nwb.read_nwb(allen[0], split_fractions=(0.5, 0.5, 0.5))
  with raises(allen[0], "table 'units'", "no unit at locations ['V2']", "CA1"):
    nwb.read_nwb(allen[0], locations=["V2"])


def test_missing_pynwb_is_one_clear_error(monkeypatch, allen):
  monkeypatch.setitem(sys.modules, "pynwb", None)  # `import pynwb` raises ImportError
  with pytest.raises(nwb.NWBDependencyError, match=re.escape('pip install "jaxvna[nwb]"')):
    nwb.read_nwb(allen[0])


def test_importing_jaxvna_and_its_readers_does_not_import_pynwb():
  code = ("import sys, jaxvna, jaxvna.data.readers; "
          "print(sorted({'pynwb', 'hdmf', 'h5py'} & set(sys.modules)))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
  assert json.loads(out.stdout.replace("'", '"')) == []


# ---------------------------------------------------------------------------------------
# A tiny training config with data.kind="nwb"


def test_a_tiny_training_config_reads_an_nwb_session_and_traces_its_step(tmp_path):
  """Through the config (`train.load_dataset`), the pre-flight checks, the input pipeline
  and the traced training step; not compiled or run (tens of seconds on 2 cores): running
  a Dataset is the trainer's tests' business, the same whatever the reader."""
  import jax

  from jaxvna.configs import vna_sim
  from jaxvna.data import pipeline
  from jaxvna.training import preflight, train
  rng = np.random.default_rng(3)
  n_images, repeats, units = 40, 2, 16
  frames = np.tile(np.arange(n_images), repeats)
  rng.shuffle(frames)
  onsets = 1.0 + 0.25 * np.arange(frames.size)
  spikes = [np.sort(rng.uniform(0.5, onsets[-1] + 0.5, 300)) for _ in range(units)]
  session = dict(onsets=onsets, frames=frames.astype(float).tolist(), spikes=spikes,
                 stack=rng.integers(0, 256, (n_images, 8, 8), dtype=np.uint8),
                 xyz=rng.normal(size=(units + 2, 3)))
  path = write_allen(tmp_path / "session.nwb", session)

  c = vna_sim.get_config("vna,tiny")
  c.data.kind = "nwb"
  c.data.kwargs = dict(paths=(str(path),), window=WINDOW, split_fractions=(0.6, 0.0, 0.4),
                       split_seed=0)
  c.train.batch_size = 16
  c.eval.n_ways = (2, 10)
  preflight.check_config(c)
  dataset = train.load_dataset(c)
  rec = dataset.recordings[0]
  assert rec.responses.shape == (n_images, repeats, units) and rec.neuron_coords.shape == (16, 3)
  np.testing.assert_array_equal(
      rec.responses, _hand_binned(spikes, onsets, session["frames"], WINDOW,
                                  list(range(n_images))))
  preflight.check_training_data(c, dataset, device_count=8)
  preflight.check_evaluation_data(c, dataset)

  mesh = train.make_mesh()
  model = train.make_model(c, dataset)
  tx = train.make_optimizer(c)
  state = jax.eval_shape(lambda: train.init_state(c, model, tx, dataset))
  batch = next(pipeline.make_train_iterator(pipeline.DatasetSource(dataset, "train"),
                                            global_batch_size=16, mesh=mesh, seed=0))
  # A batch of 16 training images of the session, with their spike counts.
  ids = np.asarray(batch["stimulus_id"])
  assert len(set(ids.tolist())) == 16
  assert set(ids.tolist()) <= set(rec.stimulus_ids[rec.split == 0].tolist())
  np.testing.assert_array_equal(np.asarray(batch["image"]), rec.images[ids])
  for row, i in zip(np.asarray(batch["response"]), ids):  # one recorded repeat each
    assert any(np.array_equal(row, repeat) for repeat in rec.responses[i])
  with jax.set_mesh(mesh):
    new_state, metrics = jax.eval_shape(
        train.make_train_step(c, train.make_objective(c, model, mesh), tx), state, batch)
  assert metrics["loss"].shape == ()
  assert jax.tree.structure(new_state.params) == jax.tree.structure(state.params)
