"""The same (N, D) grid trained two ways, side by side in one process.

    python benchmarks/schedule_efficiency.py [--widths=24,32,48,64] [--tokens=...]

* cosine: every (size, token count) an independent run with a cosine schedule;
* wsd: one constant-rate trunk per size, each token count a branch that starts from the
  trunk's checkpoint at its cooldown start and cools down on its own.

Both grids go through ``jscale.sweep.run_sweep`` (the entry point's own path), each into
its own workdir; then L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla) is fitted to each
with bootstrap intervals, and each fit predicts one larger held-out model (twice the
largest width, the largest token count) trained the same way. Prints both fits, the
training FLOPs of each way, and ends with one key=value line.
"""

import os
import tempfile

import numpy as np
import smoke
from absl import app, flags

_WIDTHS = flags.DEFINE_list("widths", ["24", "32", "48", "64"], "Model widths of the grid.")
_TOKENS = flags.DEFINE_list("tokens", ["1.2e5", "1.6e5", "2e5", "2.4e5"],
                            "Training tokens of the grid.")
_DEPTH = flags.DEFINE_integer("depth", 2, "Layers of every model.")
_COOLDOWN = flags.DEFINE_float("cooldown_fraction", 0.2, "wsd: share of steps cooling down.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 100, "Bootstrap resamples of each fit.")


def _config(schedule: str, widths: tuple[int, ...], tokens: tuple[float, ...]):
  from jscale.sweep import sweep_section
  from jscale.train.config import base_config

  c = base_config()
  c.model.depth, c.model.num_heads = _DEPTH.value, 2
  c.data.name, c.data.seq_len = "shakespeare", 64
  c.train.global_batch, c.train.learning_rate, c.train.warmup_steps = 16, 3e-3, 20
  c.train.schedule, c.train.cooldown_fraction = schedule, _COOLDOWN.value
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 1000, 8, 1000
  c.checkpoint.every = 1000
  c.sweep = sweep_section()
  c.sweep.widths, c.sweep.tokens, c.sweep.bootstrap = widths, tokens, 0
  c.sweep.min_steps = 1
  return c


def _train(config, workdir: str):
  """Trains ``config``'s sweep into ``workdir``; returns (rows, training FLOPs spent)."""
  from jscale import data as data_lib
  from jscale.sweep import plan as plan_lib
  from jscale.sweep import results
  from jscale.sweep import spec as spec_lib
  from jscale.sweep.runner import SweepOptions, run_sweep
  from jscale.train.config import data_spec

  plan = plan_lib.plan_runs(config, spec_lib.sweep_spec(config.sweep),
                            data_lib.load(data_spec(config)))
  run_sweep(config, SweepOptions(workdir=workdir, fit=False, batch_runs="never"))
  rows = results.collect(workdir)
  trunks = {r["trunk"] for r in rows if r["trunk"]}
  points = [r for r in rows if r["run_id"] not in trunks and r["status"] == "done"]
  return points, sum(r.cost_flops for r in plan)


def _columns(rows) -> dict[str, np.ndarray]:
  return {"N": np.array([float(r["params_non_embedding"]) for r in rows]),
          "D": np.array([float(r["tokens"]) for r in rows]),
          "loss": np.array([float(r["val_loss"]) for r in rows])}


def _interval(result, name: str) -> str:
  q = result.bootstrap.get("params", {}).get(name, {})
  low, high = q.get("p2.5"), q.get("p97.5")
  return f"{result.params[name]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def main(argv):
  del argv
  smoke.shrink({"widths": ["8", "12", "16"], "tokens": ["3e4", "4e4", "5e4"], "bootstrap": 0})
  from jscale import fit as fit_lib

  widths = tuple(int(w) for w in _WIDTHS.value)
  tokens = tuple(float(t) for t in _TOKENS.value)
  heldout = (2 * widths[-1],)
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for schedule, name in (("cosine", "cosine"), ("wsd", "wsd")):
      rows, flops = _train(_config(schedule, widths, tokens), os.path.join(tmp, name))
      result = fit_lib.fit("chinchilla", _columns(rows), bootstrap=_BOOTSTRAP.value)
      held, _ = _train(_config(schedule, heldout, tokens[-1:]), os.path.join(tmp, f"{name}-x"))
      predicted = float(fit_lib.predict(result, _columns(held))[0])
      measured = float(held[0]["val_loss"])
      out[name] = {"flops": flops, "fit": result, "error": predicted / measured - 1}
      print(f"{name}: {len(rows)} runs, {flops:.3g} training FLOPs; "
            f"alpha {_interval(result, 'alpha')}, beta {_interval(result, 'beta')}, "
            f"E {result.params['E']:.3f}; held-out width {heldout[0]} at D={tokens[-1]:.3g}: "
            f"measured {measured:.4f}, predicted {predicted:.4f} "
            f"({100 * out[name]['error']:+.2f}%)", flush=True)
  cosine, wsd = out["cosine"], out["wsd"]
  print(f"compute_ratio={cosine['flops'] / wsd['flops']:.3f} "
        f"alpha_cosine={cosine['fit'].params['alpha']:.4f} "
        f"alpha_wsd={wsd['fit'].params['alpha']:.4f} "
        f"beta_cosine={cosine['fit'].params['beta']:.4f} "
        f"beta_wsd={wsd['fit'].params['beta']:.4f} "
        f"heldout_err_cosine={cosine['error']:.4f} heldout_err_wsd={wsd['error']:.4f}")


if __name__ == "__main__":
  from experiments import cli
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
