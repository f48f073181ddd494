"""The numbers a run and a fit report are the numbers they claim to be.

Each expectation is derived independently of the code under test: parameter counts by
hand from the weight shapes, compute-optimal token counts by a scipy minimisation of
a known Chinchilla law under a FLOP rule that is NOT 6ND (C = 7.3 N D, so a hidden
C / (6N) shows up as a 7.3/6 = 1.22x error), and time bounds from a clock outside
the training loop.
"""

import csv
import json
import time

import jax
import numpy as np
import pytest
from conftest import tiny_config, train_config
from helpers import metrics_records, quiet
from scipy import optimize

from jscale import fit as fit_lib
from jscale.sweep import report
from jscale.sweep import results as results_lib
from jscale.train import config as config_lib
from jscale.train import loop, train, train_group
from jscale.train.restore import restore_params
from jscale.train.sharding import data_parallel

# A Chinchilla law and a FLOP rule other than 6ND (jscale's own rule is 1.25-2.9x 6ND).
LAW = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
FLOPS_PER_PARAM_TOKEN = 7.3
BUDGETS = np.geomspace(1e18, 1e21, 4)


# -- IsoFLOP (Approach 2) -------------------------------------------------------------


def _loss(n, d):
  return LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]


def _true_d_opt(c):
  """argmin over D of L(C / (7.3 D), D), by a bounded scalar search in log D."""
  found = optimize.minimize_scalar(
      lambda log_d: _loss(c / (FLOPS_PER_PARAM_TOKEN * np.exp(log_d)), np.exp(log_d)),
      bounds=(0.0, np.log(c)), method="bounded", options={"xatol": 1e-12})
  return float(np.exp(found.x))


def _isoflop_profiles():
  """Seven sizes per budget around the true optimum: (C, N, D, loss) columns."""
  c, d = [], []
  for budget in BUDGETS:
    grid = _true_d_opt(budget) * np.geomspace(0.5, 2.0, 7)
    c.extend([budget] * grid.size)
    d.extend(grid)
  c, d = np.asarray(c), np.asarray(d)
  n = c / (FLOPS_PER_PARAM_TOKEN * d)
  return {"C": c, "N": n, "D": d, "loss": _loss(n, d)}


def _assert_frontier(law: dict, truth) -> None:
  """The fitted power law gives the true optimum at every budget (parabola error < 1%)."""
  for budget in BUDGETS:
    assert law["coef"] * budget ** law["exponent"] == pytest.approx(truth(budget), rel=0.01)


def test_isoflop_d_opt_is_the_tokens_trained_not_c_over_6n():
  result = fit_lib.fit("isoflop", _isoflop_profiles(), bootstrap=0).to_json()
  _assert_frontier(result["d_opt"], _true_d_opt)
  _assert_frontier(result["n_opt"], lambda c: c / (FLOPS_PER_PARAM_TOKEN * _true_d_opt(c)))


def _write_results_csv(path, *, budgets: bool) -> None:
  """The IsoFLOP profiles as a jscale results.csv (FLOPs in ``flops``, maybe ``budget``)."""
  cols = _isoflop_profiles()
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=results_lib.COLUMNS)
    writer.writeheader()
    for i, (c, n, d, loss) in enumerate(zip(cols["C"], cols["N"], cols["D"], cols["loss"])):
      writer.writerow(dict.fromkeys(results_lib.COLUMNS, "") | {
          "run_id": f"r{i}", "status": "done", "compress": "none", "budget": c if budgets else "",
          "params_non_embedding": n, "tokens": d, "flops": c, "val_loss": loss})


def test_sweep_isoflop_section_uses_the_runs_tokens(tmp_path):
  _write_results_csv(tmp_path / "results.csv", budgets=True)
  report.fit_sweep_results(str(tmp_path / "results.csv"), str(tmp_path), bootstrap=0,
                           law_params="non_embedding")  # the table's only N column
  iso = json.loads((tmp_path / "fit.json").read_text())["isoflop"]
  _assert_frontier(iso["d_opt"], _true_d_opt)


def _cli(fork_server, tmp_path, *args):
  return fork_server.run("experiments.fit", [*args, "--bootstrap=0",
                                             f"--out={tmp_path / 'fit.json'}"], tmp_path)


def test_cli_isoflop_on_budget_tokens_loss(fork_server, tmp_path):
  """Llama 3's IsoFLOP data has no parameter column: D* is a parabola in log D."""
  cols = _isoflop_profiles()
  np.savetxt(tmp_path / "llama.csv", np.stack([cols["C"], cols["D"], cols["loss"]], 1),
             delimiter=",", header="budget,tokens,loss", comments="")
  proc = _cli(fork_server, tmp_path, f"--csv={tmp_path / 'llama.csv'}", "--law=isoflop",
              "--c_col=budget", "--d_col=tokens", "--loss_col=loss")
  assert proc.returncode == 0, proc.stderr
  _assert_frontier(json.loads((tmp_path / "fit.json").read_text())["d_opt"], _true_d_opt)


def test_cli_c_col_on_a_jscale_table_cannot_derive_d_from_6n(fork_server, tmp_path):
  """jscale's FLOPs are not 6ND: deriving the token count from them is refused."""
  _write_results_csv(tmp_path / "results.csv", budgets=False)
  proc = _cli(fork_server, tmp_path, f"--csv={tmp_path / 'results.csv'}", "--law=chinchilla",
              "--c_col=flops", "--n_col=params_non_embedding", "--loss_col=val_loss")
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
  assert "--d_col=tokens" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "fit.json").exists()


# -- what a pruned run records ------------------------------------------------------------


def _train(tmp_path, dataset, config, name="run"):
  result, run = train_config(config, dataset, tmp_path / name)
  return result, tmp_path / name, run


def _block_kernels(params):
  """The dense (ndim >= 2) kernels of the transformer blocks: the non-embedding weights
  the default pruning selection prunes."""
  return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
          if path[0].key.startswith("block_") and path[-1].key == "kernel" and leaf.ndim >= 2]


def test_one_shot_pruning_counts_the_evaluated_nonzeros(tmp_path, dataset):
  c = tiny_config()
  c.compress.passes = ("prune",)
  c.compress.prune.sparsity, c.compress.prune.when = 0.75, "one_shot"
  result, folder, run = _train(tmp_path, dataset, c)
  trained, _ = restore_params(folder, run, data_parallel(1))  # pruned only for evaluation
  kernels = _block_kernels(trained)
  assert all(np.count_nonzero(np.asarray(k)) == k.size for k in kernels)
  pruned = sum(k.size - round(k.size * 0.25) for k in kernels)
  assert result["params_nonzero_non_embedding"] == (
      run.model.param_counts().non_embedding - pruned)


def test_n_m_pruning_records_its_realised_sparsity(tmp_path, dataset):
  c = tiny_config()
  c.compress.passes = ("prune",)
  c.compress.prune.structure, c.compress.prune.n, c.compress.prune.m = "n:m", 1, 4
  c.compress.prune.when = "one_shot"  # prune.sparsity keeps its default, 0.5
  result, _, run = _train(tmp_path, dataset, c)
  row = results_lib.row("run", c.to_dict(), result)
  assert row["sparsity"] == pytest.approx(1 - 1 / 4)  # 1 - n/m, whatever prune.sparsity says
  kernels = _block_kernels(restore_params(tmp_path / "run", run, data_parallel(1))[0])
  assert result["params_nonzero_non_embedding"] == (
      run.model.param_counts().non_embedding - sum(k.size * 3 // 4 for k in kernels))


# -- throughput --------------------------------------------------------------------------


class _SlowFinalEvaluation:
  """Wraps ``final_evaluation``: each call first sleeps longer than everything else the
  caller did so far, and records when it was entered and how long it took."""

  def __init__(self, original):
    self.original, self.start, self.calls = original, None, []

  def __call__(self, *args, **kwargs):
    entered = time.perf_counter()
    slept = sum(end - begin for begin, end in self.calls)
    time.sleep(entered - self.start - slept + 0.2)
    out = self.original(*args, **kwargs)
    self.calls.append((entered, time.perf_counter()))
    return out


def test_throughput_stops_at_the_last_training_step(tmp_path, dataset, monkeypatch):
  slow = _SlowFinalEvaluation(loop.final_evaluation)
  monkeypatch.setattr(loop, "final_evaluation", slow)
  run = config_lib.resolve(tiny_config(), dataset)
  slow.start = time.perf_counter()
  result = train(run, dataset, tmp_path, dp=data_parallel(1), progress=quiet)
  (entered, _), = slow.calls
  # Steps 2..12 (the first compiles) all ran between start and the final evaluation.
  tokens = (run.train.steps - 1) * run.train.global_batch * run.model.units_per_example
  assert result["tokens_per_second"] >= tokens / (entered - slow.start)
  assert result["flops_per_second"] / result["tokens_per_second"] == pytest.approx(
      result["flops"] / result["tokens"])


def test_batched_throughput_excludes_every_final_evaluation(tmp_path, dataset, monkeypatch):
  slow = _SlowFinalEvaluation(loop.final_evaluation)
  monkeypatch.setattr(loop, "final_evaluation", slow)
  runs = [config_lib.resolve(tiny_config(steps=s), dataset) for s in (6, 12)]
  slow.start = time.perf_counter()
  results = train_group(runs, dataset, [tmp_path / "short", tmp_path / "long"],
                        dp=data_parallel(1), progress=[quiet] * 2)
  assert len(slow.calls) == 2
  for run, result, (entered, _) in zip(runs, results, slow.calls):
    earlier = sum(end - begin for begin, end in slow.calls if end <= entered)
    tokens = (run.train.steps - 1) * run.train.global_batch * run.model.units_per_example
    assert result["tokens_per_second"] >= tokens / (entered - slow.start - earlier)


# -- a kill between the last checkpoint and result.json ----------------------------------


def _assert_logged_once_like(folder, reference):
  records = metrics_records(folder)
  keys = [(r["kind"], r["step"]) for r in records]
  assert len(keys) == len(set(keys)), keys
  assert records == metrics_records(reference)  # records hold no wall-clock fields


def test_rerun_after_the_final_checkpoint_logs_the_final_eval_once(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(), dataset)
  dp = data_parallel(1)
  straight = train(run, dataset, tmp_path / "straight", dp=dp, progress=quiet)
  train(run, dataset, tmp_path / "killed", dp=dp, progress=quiet)  # result.json never written
  again = train(run, dataset, tmp_path / "killed", dp=dp, progress=quiet)
  assert again["val_loss"] == straight["val_loss"]
  _assert_logged_once_like(tmp_path / "killed", tmp_path / "straight")


def test_batched_rerun_after_the_final_checkpoint_logs_the_final_eval_once(tmp_path, dataset):
  runs = [config_lib.resolve(tiny_config(steps=s), dataset) for s in (6, 12)]
  dp = data_parallel(1)

  def group(*names):
    return train_group(runs, dataset, [tmp_path / n for n in names], dp=dp,
                       progress=[quiet] * 2)

  straight = group("s0", "s1")
  group("k0", "k1")
  again = group("k0", "k1")
  for before, after, name in zip(straight, again, ("0", "1")):
    assert after["val_loss"] == before["val_loss"]
    _assert_logged_once_like(tmp_path / f"k{name}", tmp_path / f"s{name}")
