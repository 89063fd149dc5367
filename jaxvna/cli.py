"""The `jaxvna` command line: `jaxvna <command> --config=... [--config.a.b=value] [flags]`.

Commands:
  demo   train VNA and the baselines on the embedded simulator and compare them.
  data   print a summary of the configured dataset; with --prepare_dir, build its TFDS copy.
  features  compute a pretrained backbone's features (--backbone, --weights, --layer,
            --pool) of every image of the configured dataset and write the recordings
            with them to --out_dir (one .npz each, features.json; --prepare_dir: also
            their TFDS copy), for configs/vna_features.py.
  train  train the configured model, then evaluate it (workdir/results.json).
  eval   evaluate the latest checkpoint in --workdir.
  interpret  train DINA in --workdir if needed, then explain it: contribution maps, key
             neurons, ablation curves, frequency probe (workdir/interpret.json, figures).
  visualize  MIG-Vis: train (or resume) the group VAE, the MI critic and the diffusion
             model in --workdir, edit held-out images along each latent group
             (workdir/visualize.json, migvis_group*.png).
  scaling  train on nested fractions of the training images, fit error(n) = a * n^b + c
           with bootstrap CIs (workdir/scaling.json, scaling.csv, scaling.png).
  select  train every combination of config.select.grid, score each on the validation
          split, evaluate the best on the test split (workdir/results.json with the
          validation curve and the choice).
  new_subject  hold subjects out, train VNA and miVAE on the others, then score each
               held-out subject against the number of its images used (VNA: a new
               read-in on frozen towers; miVAE: zero-shot) (workdir/new_subject.json,
               new_subject.csv, new_subject.png).
  bench  time the configured training step against the CPU's matmul peak.
  dryrun  compile the training step for --devices fake CPU devices without running it;
          print per-device memory and FLOPs per step (default config vna_pod.py).
  compare A B  two runs' results.json (or workdirs) on the same held-out images: A's
               method minus B's in N-way top-1 per subject and task, with a paired
               bootstrap interval over the images (--methods=a[,b], --n_way, --out).
  reproduce <name>  re-run the command that wrote results/<name>.json (or a result file's
          path) and print how its numbers moved (--dry_run: print the command).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable



@dataclasses.dataclass(frozen=True)
class Command:
  """run(config, flags) does the work; default_config: the shipped config used without
  --config; holds_workdir: the command holds --workdir's lock for its whole length
  (`eval` takes it itself, after checking that the workdir holds a checkpoint, so that
  it creates nothing otherwise)."""
  run: Callable[[Any, Any], Any]
  default_config: str | None = None
  holds_workdir: bool = False


def _data(config, flags) -> None:
  from jaxvna.data import summarize
  if flags.prepare_dir:
    from jaxvna.data import tfds_builders
    path = tfds_builders.prepare(config.data.kind, flags.prepare_dir,
                                 reader_kwargs=dict(config.data.kwargs))
    print(f"prepared {config.data.kind} at {path}")
    dataset = tfds_builders.read_prepared(path)  # summarise what was written
  else:
    from jaxvna.training import train
    dataset = train.load_dataset(config)
  print(summarize(dataset))


def _features(config, flags) -> None:
  from jaxvna.commands import features
  from jaxvna.errors import ConfigError
  missing = [f"--{name}" for name in ("backbone", "weights", "layer", "out_dir")
             if not flags[name].value]
  if missing:
    raise ConfigError(f"{', '.join(missing)} required (e.g. --backbone=resnet50 "
                      "--weights=resnet50.pth --layer=layer3 --out_dir=v4_resnet50_layer3)")
  manifest = features.run(
      config, backbone=flags.backbone, weights=flags.weights, layer=flags.layer,
      pool=flags.pool, out_dir=flags.out_dir, input_size=flags.input_size or None,
      batch_size=flags.batch_size, prepare_dir=flags.prepare_dir)
  print(f"wrote {len(manifest['files'])} recordings with {manifest['feature_dim']} "
        f"features per image ({manifest['backbone']} {manifest['layer']}, pool "
        f"{manifest['pool']}) to {flags.out_dir}")
  if "prepared_dir" in manifest:
    print(f"prepared their TFDS copy at {manifest['prepared_dir']}")
  print(f"train on them: jaxvna train --config=configs/vna_features.py:{flags.out_dir} "
        "--workdir=W")


def _train(config, flags) -> None:
  from jaxvna.training import train
  _print_summary(config, train.train_and_evaluate(config, flags.workdir, force=flags.force))


def _eval(config, flags) -> None:
  from jaxvna.training import train
  _print_summary(config, train.evaluate_workdir(config, flags.workdir))


def _print_summary(config, out: dict) -> None:
  """The method's summary tables of a results.json content (`registry.Method.summary`)."""
  from jaxvna import registry
  from jaxvna.training import distributed
  summary = registry.get(config.method).summary
  results = out["results"].get(config.method)
  if summary is not None and results is not None and distributed.is_primary():
    print(summary(results))


def _demo(config, flags) -> None:
  from jaxvna.commands import demo
  demo.run(config, flags.workdir, force=flags.force)


def _scaling(config, flags) -> None:
  from jaxvna.commands import scaling
  scaling.run(config, flags.workdir, force=flags.force)


def _new_subject(config, flags) -> None:
  from jaxvna.commands import new_subject
  new_subject.run(config, flags.workdir, force=flags.force)


def _select(config, flags) -> None:
  from jaxvna.commands import select
  select.run(config, flags.workdir, force=flags.force)


def _bench(config, flags) -> None:
  from jaxvna.commands import bench
  bench.run(config)


def _dryrun(config, flags) -> None:
  from jaxvna.commands import dryrun
  dryrun.use_fake_devices(flags.devices)  # before JAX starts its backends
  dryrun.run(config, flags.devices)


def _method_verb(verb: str) -> Callable[[Any, Any], Any]:
  """A verb that a method adds (`registry.Method.commands`), run for config.method."""
  def run(config, flags):
    from jaxvna import errors, registry
    method = registry.get(config.method)
    if verb not in method.commands:
      owners = registry.with_command(verb)
      raise errors.ConfigError(
          f"jaxvna {verb} explains {' and '.join(m.title for m in owners)} models; "
          f"config.method is {config.method!r} (use e.g. "
          f"{' or '.join(m.example_config for m in owners)})")
    method.commands[verb](config, flags.workdir, force=flags.force)
  return run


COMMANDS: dict[str, Command] = {
    "demo": Command(_demo, "vna_sim.py", holds_workdir=True),
    "data": Command(_data, "vna_sim.py"),
    "features": Command(_features, "vna_sim.py"),
    "train": Command(_train, holds_workdir=True),
    "eval": Command(_eval),
    "bench": Command(_bench, "bench_dina_mlp.py"),
    "interpret": Command(_method_verb("interpret"), "dina_sim.py", holds_workdir=True),
    "visualize": Command(_method_verb("visualize"), "migvis_sim.py", holds_workdir=True),
    "scaling": Command(_scaling, "scaling_sim.py", holds_workdir=True),
    "new_subject": Command(_new_subject, "mivae_sim.py", holds_workdir=True),
    "select": Command(_select, "vna_sim.py", holds_workdir=True),
    "dryrun": Command(_dryrun, "vna_pod.py"),
}


def _packaged_config(name: str) -> str:
  from jaxvna.configs import configs_dir
  return str(configs_dir() / name)


def _usage() -> str:
  return __doc__.strip() + "\n\nRun `jaxvna <command> --helpfull` for every flag."


def _define_flags(command: str):
  from absl import flags
  from ml_collections import config_flags
  default = COMMANDS[command].default_config
  config_flags.DEFINE_config_file(
      "config", _packaged_config(default) if default else None,
      "Path to a config file (a Python file with get_config()); `path:arg` passes arg.",
      lock_config=True)
  flags.DEFINE_string("workdir", "workdir" if command not in ("data", "features") else None,
                      "Folder for checkpoints, logs and results.")
  flags.DEFINE_bool("force", False, "Reuse a workdir that holds a run of another config.")
  flags.DEFINE_bool("verbose", False, "Show the traceback of errors in the data, config or "
                    "paths given (they are otherwise printed on one line).")
  flags.DEFINE_string("prepare_dir", None, "data, features: build the TFDS (ArrayRecord) "
                      "copy here.")
  flags.DEFINE_string("backbone", None, "features: resnet18 | resnet50 | vit | "
                      "package.module:factory (a function of --weights returning a Backbone).")
  flags.DEFINE_string("weights", None, "features: the backbone's parameter file (.pth / .npz; "
                      "'random' for a randomly initialised ResNet, to try the pipeline).")
  flags.DEFINE_string("layer", None, "features: the backbone stage (e.g. layer3, block8).")
  flags.DEFINE_string("pool", "mean", "features: mean | none | k (the mean of k x k blocks).")
  flags.DEFINE_string("out_dir", None, "features: folder for the .npz files and features.json.")
  flags.DEFINE_integer("input_size", 0, "features: side the images are resized to (0: the "
                       "backbone's own).")
  flags.DEFINE_integer("batch_size", 64, "features: images per step.")
  flags.DEFINE_integer("devices", 8, "dryrun: the number of (fake CPU) devices of the mesh.")
  flags.DEFINE_string("profile_steps", None,
                      "A:B: a jax.profiler trace of training steps A..B in workdir/profile "
                      "(sets config.train.profile_steps).")
  # Multi-process runs (jaxvna.training.distributed); unset flags fall back to JAXVNA_* env.
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-process: host:port of process 0, the same for every process.")
  flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes run.")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0..N-1.")
  flags.DEFINE_bool("distributed", False,
                    "Multi-process on a cluster JAX detects (Cloud TPU, SLURM, Open MPI).")
  flags.DEFINE_integer("local_device_count", None,
                       "CPU devices per process (to try sharded runs on one machine).")
  flags.DEFINE_string("compilation_cache", default_compilation_cache(),
                      "Folder of JAX's persistent compilation cache, so that a second run of "
                      "a config skips compiling; '' turns it off (default: "
                      "$JAXVNA_COMPILATION_CACHE, else the user cache folder).")
  return flags.FLAGS


def default_compilation_cache() -> str:
  """$JAXVNA_COMPILATION_CACHE if set (may be '' for none), else
  $XDG_CACHE_HOME/jaxvna/xla (~/.cache/jaxvna/xla)."""
  import os
  if "JAXVNA_COMPILATION_CACHE" in os.environ:
    return os.environ["JAXVNA_COMPILATION_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxvna", "xla")


def _main(command: str, flags_values) -> int:
  from absl import logging
  if not flags_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every step at INFO
  from jaxvna.training import distributed
  # Before any JAX computation: processes must join before the backends start.
  try:
    settings = distributed.resolve(
        flags_values.coordinator_address, flags_values.num_processes, flags_values.process_id,
        auto=flags_values.distributed, local_device_count=flags_values.local_device_count)
  except ValueError as error:
    raise SystemExit(f"jaxvna {command}: {error}") from None
  config = flags_values.config
  if config is None:
    raise SystemExit(f"jaxvna {command}: --config is required")
  if flags_values.profile_steps is not None:
    with config.unlocked():
      config.train.profile_steps = flags_values.profile_steps
  from jaxvna.training import preflight
  preflight.check_config(config)  # before any data is read or anything compiled
  if flags_values.compilation_cache:
    import jax
    jax.config.update("jax_compilation_cache_dir", flags_values.compilation_cache)
    # Every program, not only those that took over a second: what is cached must not
    # depend on how busy the machine was while compiling.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  distributed.initialize(settings)
  if COMMANDS[command].holds_workdir:
    from jaxvna.training import workdir_lock
    with workdir_lock.hold(flags_values.workdir, command=command):
      COMMANDS[command].run(config, flags_values)
  else:
    COMMANDS[command].run(config, flags_values)
  return 0


def run(argv=None):
  """Console-script entry point."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    return 0 if len(argv) >= 2 else 2
  command = argv[1]
  if command == "reproduce":
    return _reproduce(argv[2:])
  if command == "compare":
    return _compare(argv[2:])
  if command not in COMMANDS:
    print(f"jaxvna: unknown command {command!r}; expected one of {tuple(COMMANDS)}\n",
          file=sys.stderr)
    print(_usage(), file=sys.stderr)
    return 2
  from absl import app
  flags_values = _define_flags(command)
  app.run(lambda _: _main_reporting_user_errors(command, flags_values),
          argv=[f"jaxvna {command}"] + argv[2:])


def _reproduce(args: list[str]) -> int:
  """`jaxvna reproduce <name> [--dry_run]`: no config; the result file names its command."""
  from absl import app, flags
  flags.DEFINE_bool("dry_run", False, "Print the recorded command without running it.")

  def main(argv):
    from jaxvna.commands import reproduce
    from jaxvna.errors import UserError
    if len(argv) != 2:
      print("jaxvna reproduce: expected one result name (e.g. demo) or file", file=sys.stderr)
      return 2
    try:
      reproduce.run(argv[1], dry_run=flags.FLAGS.dry_run)
    except UserError as error:
      print(f"jaxvna reproduce: error: {error}", file=sys.stderr)
      return 2
    return 0
  app.run(main, argv=["jaxvna reproduce", *args])


def _compare(args: list[str]) -> int:
  """`jaxvna compare A B --methods=a[,b] [--n_way=10] [--out=F]`: no config; two result
  files."""
  from absl import app, flags
  flags.DEFINE_string("methods", None, "The results entry of A and of B, comma-separated "
                      "(e.g. vna,direct_encoding); one name: the same in both.")
  flags.DEFINE_string("n_way", "10", "N of the N-way top-1 compared (an integer or 'all').")
  flags.DEFINE_string("out", None, "Also write the comparison to this JSON file.")

  def main(argv):
    from jaxvna.commands import compare
    from jaxvna.errors import UserError
    if len(argv) != 3 or not flags.FLAGS.methods:
      print("jaxvna compare: expected two result files (or workdirs) and --methods, e.g. "
            "jaxvna compare W1 W2 --methods=vna,direct_encoding", file=sys.stderr)
      return 2
    try:
      compare.run(argv[1], argv[2], flags.FLAGS.methods, n_way=flags.FLAGS.n_way,
                  out=flags.FLAGS.out)
    except UserError as error:
      print(f"jaxvna compare: error: {error}", file=sys.stderr)
      return 2
    return 0
  app.run(main, argv=["jaxvna compare", *args])


def _main_reporting_user_errors(command: str, flags_values) -> int:
  """`_main`, with a mistake in what the user gave printed on one line (exit status 2)."""
  from jaxvna.errors import UserError
  try:
    return _main(command, flags_values)
  except UserError as error:
    if flags_values.verbose:
      raise
    print(f"jaxvna {command}: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(run())
