"""MIG-Vis end to end (`jaxvna visualize`): train the group VAE, the MI critic and the
diffusion model, edit held-out images toward low and high values of each latent group,
and measure what moved.

Stages, each trained (or resumed) by `train.train` in its own sub-workdir W/<method>,
with the train/optim settings of `config.stages.<method>`:
  group_vae        the group-wise disentangled VAE of the responses (`models.migvis`);
  critic           InfoNCE critics between images and the VAE's group means of their
                   trial-averaged responses;
  diffusion        the DDPM U-Net on the stimulus images (`models.diffusion`);
  direct_encoding  only with eval.migvis.readout="direct_encoding": the response model.

Read-out of an image (real or edited): a response model gives each subject's rates, the
VAE encoder their posterior means, averaged over subjects. The response model is
  readout="simulator"        the simulator's own noiseless rates (`SimulatorModel.rates`):
                             the true response of every simulated subject;
  readout="direct_encoding"  a direct-encoding model trained on the data (real data).

Coordinates. Each group g gets an axis u_g: the top principal axis of the critic's
targets (group means of the training images). An image's coordinate is
c_g(x) = u_g . (mu_g(x) - m_g) / sd_g, with m_g and sd_g the mean and sd of u_g . mu_g over
training images under the same read-out, so shifts are in units of the natural spread.
Guidance targets are m_g -/+ target_sd * sd_g u_g in the critic's target space ("low",
"high").

Editing: a held-out image is taken to step t0 = eval.migvis.t0 * T and run back with
DDIM, guided by the critic's pointwise MI with the target (`MICritic.pointwise_mi`) at
each scale s of eval.migvis.scales; s = 0 is the unguided round trip.
eval.migvis.guidance chooses the gradient: "target" follows the MI's gradient as it is;
"projected" first removes from it, per image and step, its projection on the gradients of
the critic's readings of the other groups (`MICritic.expected_values`,
`diffusion.project_out`), so that to first order a step moves the target group only.
eval.migvis.start chooses how the image reaches t0: "noise" (the forward process, one
noise draw shared by all edits of an image; the round trip re-synthesises fine detail) or
"inversion" (deterministic DDIM encoding; the round trip returns the image up to the
inversion error, so what an edit changes is what guidance changes).

visualize.json (shifts at the largest scale; `per_scale` for every scale):
  target_shift     mean over groups g, images and both directions of the signed change of
                   c_g toward the target (edited minus source);
  offtarget_shift  mean over g, the other groups h and the same edits of |change of c_h|;
  unguided_shift   mean over groups and images of |change of c_g| with s = 0;
  per_group        the three for each guided group;
  critic           the same shifts read by the critic (E[z_g | x] over a reference bank);
  critic_mi_bound  held-out InfoNCE bound of I(x; z_g) per group (nats, <= log N);
  disentanglement  (truth only) MIG, SAP, group SAP and MCC of the VAE means of held-out
                   trial-averaged responses against the true latents (mean over
                   subjects), and the (G, L) group R^2;
  true_factor_shift (simulator only) (G, L) mean |change| of each true latent factor when
                   guiding group g (latent sd units).
The signed target shift is set against absolute off-target and unguided changes, which
never average out: the comparison is conservative.
Figures: W/migvis_group{g}.png, rows the source images, columns the source, guidance
toward the low value (strongest first), the unguided round trip (s = 0), then guidance
toward the high value (weakest first).
"""

from __future__ import annotations

import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvna import errors, files
from jaxvna.data import Dataset
from jaxvna.evaluation import discriminative, disentanglement
from jaxvna.methods.migvis import diffusion
from jaxvna.methods.migvis import modules as migvis

STAGE_BLOCKS = {"group_vae": ("critic", "diffusion"), "critic": ("diffusion",),
                "diffusion": ("migvis", "critic"),
                "direct_encoding": ("migvis", "critic", "diffusion")}
READOUTS = ("simulator", "direct_encoding")
GUIDANCES = ("target", "projected")


def stage_config(config, method: str):
  """The config of one training stage: `config` with method = `method`, the stage's
  settings from config.stages.<method> (steps, batch_size, lr and optionally
  response_mode) and only the blocks the stage reads, so a stage's stored config (and its
  resumption) changes only when its own model does."""
  stage = config.stages[method]
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.method = method
    c.train.steps = stage.steps
    c.train.batch_size = stage.batch_size
    c.train.checkpoint_every = stage.steps
    c.optim.lr = stage.lr
    if "response_mode" in stage:
      c.data.response_mode = stage.response_mode
    for key in STAGE_BLOCKS[method] + ("stages",):
      del c[key]
  return c


# ----------------------------------------------------------------------------- read-outs

class GroupEncoder:
  """Jitted posterior means of a trained GroupVAE: (N, K_s) responses of subject s ->
  (N, D)."""

  def __init__(self, model, params, k_max: int):
    self.k_max = k_max
    self._encode = jax.jit(lambda r, s: model.apply({"params": params}, r, s,
                                                    method=model.encode)[0])

  def __call__(self, responses: np.ndarray, subject: int) -> np.ndarray:
    padded = discriminative.padded(np.asarray(responses, np.float32), self.k_max)
    return discriminative.batched_apply(self._encode, padded,
                                   np.full((len(padded),), subject, np.int32))


def response_model(config, workdir, dataset: Dataset, simulator_model, force: bool):
  """images (N, H, W, C) uint8 -> [rates (N, K_s) of each subject], per
  eval.migvis.readout (module docstring)."""
  readout = config.eval.migvis.readout
  if readout == "simulator":
    if simulator_model is None:
      raise errors.ConfigError("eval.migvis.readout='simulator' needs data.kind='simulator'")
    return lambda images: [simulator_model.rates(s, images)
                           for s in range(len(dataset.recordings))]
  if readout != "direct_encoding":
    raise errors.ConfigError(f"eval.migvis.readout: unknown {readout!r}; expected one of {READOUTS}")
  from jaxvna.training import train
  model, params, _ = train.train(stage_config(config, "direct_encoding"),
                                 pathlib.Path(workdir) / "direct_encoding", dataset=dataset,
                                 force=force)
  predict = jax.jit(lambda x, s: model.apply({"params": params}, x, s, train=False))

  def rates(images):
    return [discriminative.batched_apply(predict, images, np.full((len(images),), s, np.int32))
            [:, :rec.num_neurons] for s, rec in enumerate(dataset.recordings)]
  return rates


class Coordinates:
  """c_g(x) = u_g . (mu_g(x) - m_g) / sd_g for every group g (module docstring)."""

  def __init__(self, axes: list[np.ndarray], reference: np.ndarray, groups):
    self.slices = migvis.group_slices(groups)
    self.axes = axes
    proj = np.stack([reference[:, s] @ u for s, u in zip(self.slices, axes)], axis=1)
    self.center, self.scale = proj.mean(0), proj.std(0) + 1e-8

  def __call__(self, latents: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, G)."""
    proj = np.stack([latents[:, s] @ u for s, u in zip(self.slices, self.axes)], axis=1)
    return (proj - self.center) / self.scale


def principal_axes(values: np.ndarray, groups) -> list[np.ndarray]:
  """The top principal axis (unit (d_g,)) of each group's columns of (N, D) values."""
  axes = []
  for s in migvis.group_slices(groups):
    x = values[:, s] - values[:, s].mean(0)
    axes.append(np.linalg.eigh(x.T @ x)[1][:, -1])
  return axes


# ----------------------------------------------------------------------------- editing

class Editor:
  """Jitted edits of model-space images: `start` takes them to step t0 (forward noise or
  DDIM inversion, eval.migvis.start), `unguided` and `guided` run DDIM back from there."""

  def __init__(self, unet, unet_params, critic, critic_params, config):
    d, ev = config.diffusion, config.eval.migvis
    if ev.guidance not in GUIDANCES:
      raise errors.ConfigError(f"eval.migvis.guidance: unknown {ev.guidance!r}; expected one of "
                       f"{GUIDANCES}")
    if ev.start not in diffusion.STARTS:
      raise errors.ConfigError(f"eval.migvis.start: unknown {ev.start!r}; expected one of "
                       f"{diffusion.STARTS}")
    alpha_bar = diffusion.noise_schedule(d.schedule, d.num_timesteps)
    t0 = int(round(ev.t0 * (d.num_timesteps - 1)))
    steps = diffusion.ddim_timesteps(d.num_timesteps, ev.ddim_steps, t0)
    eps_fn = lambda x, t: unet.apply({"params": unet_params}, x, t)
    use_noise = ev.start == "noise"

    pixels01 = lambda x0: (x0 + 1.0) / 2.0  # the critic reads float images in [0, 1]

    def guided(x_t, targets, reference, group_weights, keep_columns, scale):
      score = lambda x0: critic.apply({"params": critic_params}, pixels01(x0), targets,
                                      reference, method=critic.pointwise_mi) @ group_weights
      keep = None
      if ev.guidance == "projected":
        keep = lambda x0: critic.apply({"params": critic_params}, pixels01(x0), reference,
                                       method=critic.expected_values) * keep_columns
      return diffusion.ddim_sample(eps_fn, x_t, steps, alpha_bar, score_fn=score, scale=scale,
                                   keep_fn=keep)

    self.start = jax.jit(lambda images, noise: diffusion.start_point(
        eps_fn, images, alpha_bar, t0=t0, num_steps=ev.ddim_steps,
        noise=noise if use_noise else None))
    self.guided = jax.jit(guided)
    self.unguided = jax.jit(lambda x_t: diffusion.ddim_sample(eps_fn, x_t, steps, alpha_bar))


def guidance_targets(values: np.ndarray, axes, groups, target_sd: float) -> dict:
  """{"low", "high"}: (D,) group values m_g -/+ target_sd * sd_g * u_g for every group,
  m_g the mean and sd_g the sd along axis u_g of the (N, D) `values`."""
  spread = Coordinates(axes, values, groups).scale
  targets = {}
  for direction, sign in (("low", -1.0), ("high", 1.0)):
    targets[direction] = values.mean(0)
    for g, s in enumerate(migvis.group_slices(groups)):
      targets[direction][s] += sign * target_sd * spread[g] * axes[g]
  return targets


def edit_all(editor: Editor, sources: np.ndarray, targets: dict, reference: np.ndarray,
             config) -> tuple[np.ndarray, dict]:
  """Every edit of the (N, H, W, C) uint8 sources, all from one start point per source.

  Returns:
    (unguided (N, H, W, C) uint8, {(group, "low"|"high", scale): (N, H, W, C) uint8}).
  """
  ev, groups = config.eval.migvis, tuple(config.migvis.groups)
  x = diffusion.to_model_space(jnp.asarray(sources))
  x_t = editor.start(x, jax.random.normal(jax.random.key(ev.seed), x.shape, jnp.float32))
  unguided = _quantize(editor.unguided(x_t))
  x_t = jnp.concatenate([x_t, x_t])  # low-target copies, then high-target copies
  n = len(sources)
  edited = {}
  tgt = jnp.asarray(np.stack([targets["low"]] * n + [targets["high"]] * n), jnp.float32)
  for g in range(len(groups)):
    weights = jnp.asarray(np.eye(len(groups), dtype=np.float32)[g])  # guide group g only
    keep_columns = jnp.asarray(1.0 - migvis.group_onehot(groups)[:, g])  # hold the others
    for scale in ev.scales:
      out = _quantize(editor.guided(x_t, tgt, jnp.asarray(reference), weights, keep_columns,
                                    jnp.float32(scale)))
      edited[(g, "low", scale)], edited[(g, "high", scale)] = out[:n], out[n:]
  return unguided, edited


def _quantize(x) -> np.ndarray:
  return np.round(np.asarray(diffusion.to_pixels(x))).astype(np.uint8)


def _shifts(source: np.ndarray, edited: dict, unguided: np.ndarray, scales) -> dict:
  """Shift statistics from coordinates: source (N, G); edited[(g, direction, scale)]
  (N, G); unguided (N, G)."""
  num_groups = source.shape[1]
  unguided_change = np.abs(unguided - source)
  per_scale = []
  for scale in scales:
    target, offtarget = [], []
    for g in range(num_groups):
      change = {d: edited[(g, d, scale)] - source for d in ("low", "high")}
      toward = np.concatenate([change["high"][:, g], -change["low"][:, g]])
      others = np.concatenate([np.abs(c[:, [h for h in range(num_groups) if h != g]])
                               for c in change.values()])
      target.append(float(toward.mean()))
      offtarget.append(float(others.mean()) if others.size else 0.0)
    per_scale.append({"scale": float(scale), "target_shift": float(np.mean(target)),
                      "offtarget_shift": float(np.mean(offtarget)),
                      "per_group": [{"target_shift": t, "offtarget_shift": o,
                                     "unguided_shift": float(unguided_change[:, g].mean())}
                                    for g, (t, o) in enumerate(zip(target, offtarget))]})
  top = per_scale[-1]
  return {"target_shift": top["target_shift"], "offtarget_shift": top["offtarget_shift"],
          "unguided_shift": float(unguided_change.mean()), "per_group": top["per_group"],
          "per_scale": [{k: v for k, v in s.items() if k != "per_group"} for s in per_scale]}


def plot_grid(sources: np.ndarray, edited: dict, unguided: np.ndarray, group: int, scales,
              path, *, title: str = "") -> None:
  """PNG grid of one group's edits (module docstring for the layout)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  columns = ([("source", sources)]
             + [(f"low s={s:g}", edited[(group, "low", s)]) for s in reversed(scales)]
             + [("s=0", unguided)]
             + [(f"high s={s:g}", edited[(group, "high", s)]) for s in scales])
  rows = len(sources)
  fig, axes = plt.subplots(rows, len(columns), figsize=(1.2 * len(columns), 1.2 * rows + 0.6),
                           squeeze=False)
  for j, (name, images) in enumerate(columns):
    for i in range(rows):
      ax = axes[i, j]
      ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(name, fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------- scores

def disentanglement_scores(config, encoder: GroupEncoder, dataset: Dataset) -> dict:
  """MIG, SAP, group SAP and MCC against truth["latents"], mean over subjects."""
  ev, groups = config.eval.migvis, tuple(config.migvis.groups)
  reports = []
  for s, rec in enumerate(dataset.recordings):
    idx = rec.indices(ev.split)
    codes = encoder(rec.subset(idx).mean_responses, s)
    reports.append(disentanglement.report(codes, rec.truth["latents"][idx], groups,
                                          num_bins=ev.mig_bins))
  out = {k: float(np.mean([r[k] for r in reports])) for k in ("mig", "sap", "group_sap", "mcc")}
  out["group_r2"] = np.mean([r["group_r2"] for r in reports], axis=0).tolist()
  return out


def critic_mi_bounds(config, critic, critic_params, encoder: GroupEncoder,
                     dataset: Dataset) -> list[float]:
  """Held-out InfoNCE bound of I(x; z_g) per group, mean over recordings."""
  from jaxvna import losses
  ev = config.eval.migvis
  apply = jax.jit(lambda x, v: critic.apply({"params": critic_params}, x, v, train=False))
  bounds = []
  for s, rec in enumerate(dataset.recordings):
    held_out = rec.subset(rec.indices(ev.split))
    img, val, temperature = apply(held_out.images, encoder(held_out.mean_responses, s))
    bounds.append([math.log(len(held_out.images))
                   - float(losses.clip_loss(img[:, g], val[:, g], temperature[g]))
                   for g in range(img.shape[1])])
  return np.mean(bounds, axis=0).tolist()


# ----------------------------------------------------------------------------- the run

def load_data(config):
  """(dataset, SimulatorModel or None): the simulator's model comes with its data."""
  from jaxvna.training import train
  if config.data.kind == "simulator" and not train.prepared_source(config):
    from jaxvna.data import simulator
    return simulator.simulate_with_model(**config.data.kwargs)
  return train.load_dataset(config), None


def visualize(config, workdir, *, force: bool = False) -> dict:
  """`jaxvna visualize`: trains (or resumes) the stages, edits, writes visualize.json and
  the grids (module docstring). Returns the visualize.json content."""
  from jaxvna.training import provenance, summaries, train
  started = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ev, groups = config.eval.migvis, tuple(config.migvis.groups)
  dataset, simulator_model = load_data(config)

  vae_data = (migvis.supervision_features(config, dataset)
              if config.migvis.supervision.weight > 0 else dataset)
  vae, vae_params, _ = train.train(stage_config(config, "group_vae"), workdir / "group_vae",
                                   dataset=vae_data, force=force)
  encoder = GroupEncoder(vae, vae_params, max(dataset.neuron_counts))
  group_means = [encoder(rec.mean_responses, s) for s, rec in enumerate(dataset.recordings)]
  critic, critic_params, _ = train.train(
      stage_config(config, "critic"), workdir / "critic",
      dataset=migvis.group_target_features(dataset, group_means), force=force)
  unet, unet_params, _ = train.train(stage_config(config, "diffusion"), workdir / "diffusion",
                                     dataset=dataset, force=force)
  rates_of = response_model(config, workdir, dataset, simulator_model, force)

  def read_out(images):  # (N, H, W, C) uint8 -> (N, D), mean over subjects
    return np.mean([encoder(r, s) for s, r in enumerate(rates_of(images))], axis=0)

  # Reference statistics from training images.
  rng = np.random.default_rng(ev.seed)
  train_images = np.concatenate([rec.images[rec.indices("train")] for rec in dataset.recordings])
  train_targets = np.concatenate([m[rec.indices("train")]
                                  for m, rec in zip(group_means, dataset.recordings)])
  pick = rng.choice(len(train_images), min(ev.reference_size, len(train_images)), replace=False)
  reference = train_targets[pick]
  axes = principal_axes(train_targets, groups)
  critic_read = jax.jit(lambda x: critic.apply({"params": critic_params}, x,
                                               jnp.asarray(reference),
                                               method=critic.expected_values))
  readings = {"response": read_out,
              "critic": lambda x: discriminative.batched_apply(critic_read, x, batch_size=256)}
  coords = {name: Coordinates(axes, read(train_images[pick]), groups)
            for name, read in readings.items()}
  targets = guidance_targets(train_targets, axes, groups, ev.target_sd)

  rec = dataset.recordings[ev.recording]
  held_out = rec.indices(ev.split)
  sources = rec.images[np.sort(rng.choice(held_out, min(ev.num_images, held_out.size),
                                          replace=False))]
  editor = Editor(unet, unet_params, critic, critic_params, config)
  unguided, edited = edit_all(editor, sources, targets, reference, config)
  n = len(sources)

  results = {"dataset": dataset.name, "readout": ev.readout, "groups": list(groups),
             "num_images": n, "t0": ev.t0, "scales": list(ev.scales)}
  for name, read in readings.items():
    c = coords[name]
    edited_coords = {k: c(read(v)) for k, v in edited.items()}
    shifts = _shifts(c(read(sources)), edited_coords, c(read(unguided)), ev.scales)
    if name == "response":
      results.update(shifts)
    else:
      results[name] = shifts
  results["critic_mi_bound"] = critic_mi_bounds(config, critic, critic_params, encoder, dataset)
  if all(r.truth is not None and "latents" in r.truth for r in dataset.recordings):
    results["disentanglement"] = disentanglement_scores(config, encoder, dataset)
  if simulator_model is not None:
    from jaxvna.data import simulator
    truth = lambda im: simulator.latent_factors(simulator_model.latent_network, im)
    top, base = ev.scales[-1], truth(sources)
    results["true_factor_shift"] = [np.mean([np.abs(truth(edited[(g, d, top)]) - base).mean(0)
                                             for d in ("low", "high")], axis=0).tolist()
                                    for g in range(len(groups))]
  results["target_met"] = bool(results["target_shift"] >= 2 * results["offtarget_shift"]
                               and results["target_shift"] >= 2 * results["unguided_shift"])
  figures = []
  k = min(ev.grid_images, n)
  for g in range(len(groups)):
    path = workdir / f"migvis_group{g}.png"
    plot_grid(sources[:k], {key: v[:k] for key, v in edited.items()}, unguided[:k], g,
              list(ev.scales), path,
              title=f"{dataset.name}: group {g} (target shift "
                    f"{results['per_group'][g]['target_shift']:.2f} sd)")
    figures.append(path.name)
  results["figures"] = figures
  results["provenance"] = provenance.record(config, dataset, started=started)
  files.write_json(workdir / "visualize.json", results)
  # TensorBoard, beside the stages' runs (W/<stage>): at the step of the diffusion model
  # that made the edits.
  summaries.write_outputs(workdir, config.stages.diffusion.steps,
                          results={"visualize": results},
                          figures=[workdir / f for f in figures])
  print(summary_table(results))
  print(f"\nresults: {workdir / 'visualize.json'}   figures: {', '.join(figures)}")
  return results


def summary_table(results: dict) -> str:
  """Markdown table of visualize.json: the shifts at the largest guidance scale as the
  read-out and the critic see them, the target (target shift >= 2x both the off-target
  and the unguided shift), the critic's bounds and, on the simulator, disentanglement."""
  t, o, u = (results[k] for k in ("target_shift", "offtarget_shift", "unguided_shift"))
  critic = results["critic"]
  rows = ["| | measured |", "|---|---|",
          f"| `target_shift` (s = {results['scales'][-1]:g}) | {t:.3f} |",
          f"| `offtarget_shift` | {o:.3f} (ratio {t / o:.2f}x) |",
          f"| `unguided_shift` | {u:.3f} (ratio {t / u:.1f}x) |",
          f"| target: both ratios >= 2x | {'met' if results['target_met'] else 'NOT met'} |",
          f"| shifts read by the critic: target / off-target | "
          f"{critic['target_shift']:.2f} / {critic['offtarget_shift']:.2f} |",
          "| critic's held-out InfoNCE bound per group, nats | "
          + ", ".join(f"{b:.2f}" for b in results["critic_mi_bound"]) + " |"]
  if "disentanglement" in results:
    d = results["disentanglement"]
    rows.append(f"| VAE against the true factors: MIG / SAP / MCC | {d['mig']:.2f} / "
                f"{d['sap']:.2f} / {d['mcc']:.2f} |")
  if "provenance" in results:
    rows.append(f"| wall time of `jaxvna visualize` (training included when it trained) | "
                f"{results['provenance']['wall_time_s'] / 60:.1f} min |")
  return "\n".join(rows)


def settings_table(runs) -> str:
  """Markdown table comparing editing settings: one row per (test, validation) pair of
  visualize.json files of the same trained models, labelled by the `--config.*` flags its
  command changed (the split left out); target and off-target shifts and their ratio at
  the largest guidance scale, each cell "test / validation"."""
  from jaxvna.training import provenance

  rows = ["| editing (flags beside the shipped config) | target | off-target | ratio |",
          "|---|---|---|---|"]
  for test, validation in runs:
    flags = provenance.config_overrides(test["provenance"]["command"])
    pair = lambda value: " / ".join(f"{value(r):.2f}" for r in (test, validation))
    rows.append(f"| {f'`{flags}`' if flags else 'shipped'} | "
                f"{pair(lambda r: r['target_shift'])} | {pair(lambda r: r['offtarget_shift'])} | "
                f"{pair(lambda r: r['target_shift'] / r['offtarget_shift'])} |")
  return "\n".join(rows)
