"""The sweep's law: which N it fits (sweep.law_params), the columns tested against its
residuals, the bootstrap by model size, the plan's tokens-per-parameter floor and second
seeds, and the annealing law checked on a sweep's trunks and branches."""

import csv
import io
import json

import numpy as np
import pytest
from conftest import tiny_config

from experiments.configs import smoke
from jscale import data as data_lib
from jscale.errors import BadInput
from jscale.sweep import SweepOptions, analysis, cooldowns, report, results, run_sweep
from jscale.sweep import plan as plan_lib
from jscale.sweep import spec as spec_lib
from jscale.sweep.spec import sweep_section
from jscale.train import config as config_lib
from jscale.train.optim import learning_rate_schedule

_WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96)
_TOKENS = (1e5, 4e5, 1.6e6)


def _law(n, d):
  return 1.2 + 30 / n**0.3 + 60 / d**0.3


def _write(path, rows):
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=results.COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(dict.fromkeys(results.COLUMNS, "") | r for r in rows)
  path.write_text(out.getvalue())
  return str(path)


def _rows(*, depth_effect=0.0, seed=0):
  """A sweep's table: N_total = N_non_embedding + 512 w (a byte vocabulary's embedding and
  head); the law holds in N_total, depth 4 is ``depth_effect`` worse, 0.3% noise."""
  rng = np.random.default_rng(seed)
  rows = []
  for w in _WIDTHS:
    for depth in (2, 4):
      non_embedding = 12 * depth * w**2
      total = non_embedding + 512 * w
      for i, d in enumerate(_TOKENS):
        loss = _law(total, d) * (1 + depth_effect * (depth == 4)) * np.exp(
            rng.normal(0, 3e-3))
        rows.append(dict(run_id=f"w{w}d{depth}t{i}", status="done", compress="none",
                         width=w, depth=depth, learning_rate=2.0**-6 * (1 + i % 2),
                         params_total=total, params_non_embedding=non_embedding,
                         params_nonzero_non_embedding=non_embedding, tokens=d,
                         flops=6 * total * d, val_loss=loss, selected=True))
  return rows


def test_law_params_choose_the_column_n_comes_from(tmp_path):
  path = _write(tmp_path / "results.csv", _rows())
  fits = {}
  for which, column in (("total", "params_total"), ("non_embedding", "params_non_embedding")):
    table = analysis.read_results(path, which)
    assert table.n_column == column
    fits[which] = analysis.fit_results(table, bootstrap=0).result
    np.testing.assert_array_equal(fits[which].columns["N"], table.rows[column])
    assert f"N = {column} (sweep.law_params={which})" in fits[which].notes
  # The truth holds in total N: fitted there it has no residual trend with depth.
  assert fits["total"].params["alpha"] == pytest.approx(0.3, abs=0.05)
  # The sweep's defaults are the recorded choices (BUILD_NOTES.md, "The default experiment").
  assert sweep_section().law_params == spec_lib.SweepSpec().law_params == "total"
  assert sweep_section().bootstrap_clusters == spec_lib.SweepSpec().bootstrap_clusters == "size"
  with pytest.raises(BadInput, match="law_params"):
    analysis.read_results(path, "embedding")


def test_pruned_rows_count_non_zero_parameters_of_the_chosen_n(tmp_path):
  row = dict(run_id="p", status="done", compress="prune", params_total=1000,
             params_non_embedding=600, params_nonzero_non_embedding=150, tokens=1e5,
             val_loss=3.0, sparsity=0.75)
  path = _write(tmp_path / "results.csv", [row])
  everything = np.ones(1, bool)
  assert analysis.read_results(path, "total").nonzero_n(everything)[0] == 1000 - 450
  assert analysis.read_results(path, "non_embedding").nonzero_n(everything)[0] == 150


def test_depth_and_learning_rate_are_tested_against_the_residuals(tmp_path):
  quiet, path = tmp_path / "quiet", tmp_path / "depth"
  for folder, effect in ((quiet, 0.0), (path, 0.03)):
    folder.mkdir()
    report.fit_sweep_results(_write(folder / "results.csv", _rows(depth_effect=effect)),
                             str(folder), bootstrap=0)
  for folder in (quiet, path):
    written = json.loads((folder / "fit.json").read_text())
    tested = {t["column"] for t in written["diagnostics"]["residual_tests"]}
    assert tested == {"depth", "learning_rate"}
    assert "residuals_correlate" in written["diagnostics"]["checks"]
  codes = {w.get("column") for w in json.loads((path / "fit.json").read_text())["warnings"]
           if w["code"] == "residuals_correlate"}
  assert codes == {"depth"}  # a 3% depth effect fires; the learning rate, which has none, not
  assert not [w for w in json.loads((quiet / "fit.json").read_text())["warnings"]
              if w["code"] == "residuals_correlate"]


def test_bootstrap_resamples_whole_sizes_when_asked(tmp_path):
  path = _write(tmp_path / "results.csv", _rows())
  table = analysis.read_results(path)
  by_size = analysis.fit_results(table, bootstrap=4, bootstrap_clusters="size").result
  by_point = analysis.fit_results(table, bootstrap=4, bootstrap_clusters="").result
  assert by_size.bootstrap["clusters"] == "N"
  assert by_size.bootstrap["n_clusters"] == len(_WIDTHS) * 2  # widths x depths
  assert "clusters" not in by_point.bootstrap
  assert by_size.bootstrap["params"]["alpha"] != by_point.bootstrap["params"]["alpha"]
  with pytest.raises(BadInput, match="bootstrap_clusters"):
    analysis.fit_results(table, bootstrap=4, bootstrap_clusters="seed")


@pytest.mark.parametrize("key,value", [("law_params", "all"), ("bootstrap_clusters", "N"),
                                       ("min_tokens_per_param", -1.0),
                                       ("max_tokens_per_param", float("inf")),
                                       ("seed_widths", (8.5,))])
def test_sweep_spec_refuses_bad_law_settings(key, value):
  s = sweep_section()
  s[key] = value
  with pytest.raises(BadInput, match=f"sweep.{key}"):
    spec_lib.sweep_spec(s)


def test_a_sweep_json_without_the_new_keys_reads_their_defaults(tmp_path):
  (tmp_path / "sweep.json").write_text(json.dumps({"comparable": {}, "config": {
      "sweep": {"widths": [8, 16], "select": "best_per_point"}}}))
  settings = results.read_sweep_spec(tmp_path)
  assert settings.widths == (8, 16) and settings.select == "best_per_point"
  assert settings.law_params == sweep_section().law_params
  assert settings.bootstrap_clusters == sweep_section().bootstrap_clusters


def test_the_plan_keeps_tokens_per_param_in_bounds_and_seeds_only_the_listed_widths():
  c = smoke.get_config()
  c.sweep.widths, c.sweep.seeds, c.sweep.seed_widths = (8, 24), (0, 1), (24,)
  c.sweep.tokens, c.sweep.min_steps = (256 * 20, 256 * 80), 1
  dataset = data_lib.load(config_lib.data_spec(c))
  runs = [r for r in plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
          if not r.is_trunk]
  assert sorted((r.spec.model.width, r.spec.train.seed, r.tokens) for r in runs) == [
      (8, 0, 5120), (8, 0, 20480), (24, 0, 5120), (24, 0, 20480), (24, 1, 5120),
      (24, 1, 20480)]
  total_24 = next(r for r in runs if r.spec.model.width == 24).spec.model.param_counts().total
  c.sweep.min_tokens_per_param = 5120 / total_24 * 1.01  # just over width 24's shorter run
  kept = [r for r in plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
          if not r.is_trunk]
  assert sorted((r.spec.model.width, r.tokens) for r in kept) == [
      (8, 5120), (8, 20480), (24, 20480), (24, 20480)]
  total_8 = next(r for r in runs if r.spec.model.width == 8).spec.model.param_counts().total
  c.sweep.min_tokens_per_param = 0.0
  c.sweep.max_tokens_per_param = 20480 / total_8 * 0.99  # just under width 8's longer run
  kept = [r for r in plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
          if not r.is_trunk]
  assert (8, 20480) not in [(r.spec.model.width, r.tokens) for r in kept] and len(kept) == 5


def _wsd_run_folder(folder, *, steps, evals, branch_step=None):
  c = tiny_config(steps=steps, schedule="wsd", cooldown_fraction=0.5, warmup_steps=2)
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(config_lib.record(c))
  (folder / "metrics.jsonl").write_text("".join(
      json.dumps({"kind": "eval", "step": s, "val_loss": 3.0 - 0.01 * s}) + "\n"
      for s in evals))
  return config_lib.resolve(c).train


def test_a_runs_curve_holds_the_rates_of_its_updates_and_its_own_evaluations(tmp_path):
  train = _wsd_run_folder(tmp_path / "b", steps=12, evals=(6, 9, 12))
  curve = cooldowns.run_curve(tmp_path / "b", after_step=6)  # a branch from step 6
  schedule = learning_rate_schedule(train)
  np.testing.assert_allclose(curve.lr_per_step, [float(schedule(k)) for k in range(12)])
  np.testing.assert_array_equal(curve.steps, [8, 11])  # after 9 and 12 updates
  np.testing.assert_allclose(curve.losses, [2.91, 2.88])


@pytest.mark.slow  # 8 runs, a fit and its plots: ~40 s quiet, ~90 s loaded
def test_a_wsd_sweep_checks_the_annealing_law_on_its_other_branches(tmp_path):
  c = tiny_config(schedule="wsd", cooldown_fraction=0.5, warmup_steps=2)
  c.train.eval_every, c.checkpoint.every = 5, 100
  c.sweep = sweep_section()
  c.sweep.widths, c.sweep.tokens = (8, 16), tuple(128.0 * s for s in (20, 40, 80))
  c.sweep.bootstrap = 0
  assert run_sweep(c, SweepOptions(workdir=str(tmp_path), num_devices=1)) == "done"
  written = json.loads((tmp_path / "fit.json").read_text())
  anneal = written["annealing"]
  rows = {r["run_id"]: r for r in results.read_rows(tmp_path)}
  assert len(anneal["sizes"]) == 2 and anneal["branches_predicted"] == 4
  for size in anneal["sizes"]:
    trunk = size["trunk"]
    branches = sorted((r for r in rows.values() if r["trunk"] == trunk),
                      key=lambda r: float(r["tokens"]))
    assert size["fitted_to"] == [trunk, branches[-1]["run_id"]]  # the longest branch
    assert [p["run_id"] for p in size["predictions"]] == [r["run_id"] for r in branches[:2]]
    for p in size["predictions"]:
      assert p["measured"] == float(rows[p["run_id"]]["val_loss"])
      assert p["rel_error"] == pytest.approx(p["predicted"] / p["measured"] - 1)
      assert np.isfinite(p["predicted"]) and p["predicted"] > 0
  assert anneal["max_abs_rel_error"] == max(abs(p["rel_error"]) for s in anneal["sizes"]
                                            for p in s["predictions"])
  assert (tmp_path / "plots" / "annealing.png").stat().st_size > 0
