"""results.csv: which rows a sweep's law uses (sweep.select), trunks excluded; and what
the sweep's plots draw of it."""

import json
import shutil

import pytest

from jscale.sweep import analysis, report, results


def _run(workdir, run_id, *, width, lr, tokens, loss, status="done", trunk=None, budget=None):
  folder = workdir / "runs" / run_id
  folder.mkdir(parents=True)
  config = {"model": {"family": "transformer", "width": width, "depth": 2},
            "train": {"learning_rate": lr, "seed": 0, "compute_dtype": "float32"},
            "compress": {"passes": [], "distill": {"teacher": ""}}}
  (folder / "config.json").write_text(json.dumps(config))
  n = 12 * width**2
  result = {"status": status, "val_loss": loss, "tokens": tokens, "flops": 6 * n * tokens,
            "steps": 10, "trunk": trunk, "budget": budget, "label": f"w{width}",
            "params_total": n + 512 * width, "params_non_embedding": n,
            "params_nonzero_non_embedding": n}
  (folder / "result.json").write_text(json.dumps(result))
  evals = [{"kind": "eval", "step": step, "val_loss": loss + 1 / step} for step in (5, 10)]
  (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))


def _selected(workdir, select):
  return {r["run_id"] for r in results.collect(workdir, select) if r["selected"]}


def test_best_per_point_keeps_the_best_rate_of_each_shape_and_length(tmp_path):
  for run_id, width, lr, tokens, loss in [("a", 16, 1e-3, 100, 3.0), ("b", 16, 3e-3, 100, 2.9),
                                          ("c", 16, 1e-3, 200, 2.5), ("d", 16, 3e-3, 200, 2.6),
                                          ("e", 32, 1e-3, 100, 2.8)]:
    _run(tmp_path, run_id, width=width, lr=lr, tokens=tokens, loss=loss)
  _run(tmp_path, "f", width=32, lr=3e-3, tokens=100, loss=float("nan"), status="diverged")
  _run(tmp_path, "t", width=32, lr=1e-3, tokens=80, loss=2.0)  # a trunk: lowest, never used
  _run(tmp_path, "g", width=32, lr=1e-3, tokens=200, loss=2.4, trunk="t")
  assert _selected(tmp_path, "best_per_point") == {"b", "c", "e", "g"}
  assert _selected(tmp_path, "all") == {"a", "b", "c", "d", "e", "g"}
  rows = {r["run_id"]: r for r in results.collect(tmp_path, "best_per_point")}
  assert rows["a"]["selected"] is False and rows["a"]["val_loss"] == 3.0  # kept, marked


def test_the_fit_reads_only_the_selected_rows(tmp_path):
  test_best_per_point_keeps_the_best_rate_of_each_shape_and_length(tmp_path)
  path = results.write_results_csv(tmp_path, "best_per_point")
  table = analysis.read_results(str(path))
  assert set(table.rows["run_id"]) == {"b", "c", "e", "g"}
  assert table.excluded == 4  # a, d (slower rates), f (diverged), t (a trunk)


# --- the plots: trunks are never drawn, loss_vs_params draws the law's points ----------

def _drawn_rows(workdir, monkeypatch) -> dict[str, set[str]]:
  """The run ids each plot of ``draw_sweep_plots`` is given."""
  drawn = {}

  def capture(name):
    def plot(*args):
      drawn[name] = {r["run_id"] for r in args[-2]}
    return plot

  monkeypatch.setattr(report, "plot_loss_vs_compute", capture("loss_vs_compute"))
  monkeypatch.setattr(report, "plot_loss_vs_params", capture("loss_vs_params"))
  monkeypatch.setattr(report, "plot_isoflop_profiles", capture("isoflop"))
  report.draw_sweep_plots(workdir)
  return drawn


def test_no_plot_draws_a_trunk_and_loss_vs_params_draws_only_selected_rows(tmp_path,
                                                                          monkeypatch):
  test_best_per_point_keeps_the_best_rate_of_each_shape_and_length(tmp_path)
  results.write_results_csv(tmp_path, "best_per_point")
  assert _drawn_rows(tmp_path, monkeypatch) == {
      "loss_vs_compute": {"a", "b", "c", "d", "e", "g"},  # finished, not the trunk t
      "loss_vs_params": {"b", "c", "e", "g"}}  # the law's points: no slower rate, no trunk


def test_isoflop_profiles_draw_the_budgeted_points_only(tmp_path, monkeypatch):
  for run_id, width, loss, budget in [("a", 16, 3.0, 1e5), ("b", 32, 2.8, 1e5),
                                      ("c", 64, 2.9, 1e5), ("d", 64, 2.7, None)]:
    _run(tmp_path, run_id, width=width, lr=1e-3, tokens=100, loss=loss, budget=budget)
  _run(tmp_path, "t", width=16, lr=1e-3, tokens=50, loss=2.0, budget=1e5)
  _run(tmp_path, "u", width=16, lr=1e-3, tokens=100, loss=2.9, budget=1e5, trunk="t")
  results.write_results_csv(tmp_path)
  assert _drawn_rows(tmp_path, monkeypatch)["isoflop"] == {"a", "b", "c", "u"}


@pytest.mark.slow
def test_fit_of_a_workdir_redraws_every_sweep_plot(tmp_path, fork_server):
  widths = (16, 24, 32, 48, 64, 96, 128, 192)
  for i, width in enumerate(widths):
    n = 12 * width**2
    _run(tmp_path, f"r{i}", width=width, lr=1e-3, tokens=1e6, loss=2.0 + 40 / n**0.3)
  _run(tmp_path, "t", width=16, lr=1e-3, tokens=5e5, loss=1.0)
  _run(tmp_path, "b", width=16, lr=1e-3, tokens=2e6, loss=2.0 + 40 / (12 * 16**2)**0.3 - 0.01,
       trunk="t")
  results.write_results_csv(tmp_path)
  (tmp_path / "sweep.json").write_text(json.dumps({"comparable": {}, "config": {}}))
  plots = tmp_path / "plots"
  plots.mkdir()
  names = ("fit.png", "loss_vs_compute.png", "loss_vs_params.png")
  for name in names:
    (plots / name).write_text("drawn before the fit")
  outcome = fork_server.run("experiments.fit", [f"--workdir={tmp_path}", "--bootstrap=0"],
                            tmp_path)
  assert outcome.returncode == 0, outcome.stderr[-3000:]
  for name in names:
    assert (plots / name).read_bytes().startswith(b"\x89PNG"), name
  assert json.loads((tmp_path / "fit.json").read_text())["n_points"] == len(widths) + 1


def test_a_results_table_without_its_run_folders_still_draws(tmp_path):
  test_best_per_point_keeps_the_best_rate_of_each_shape_and_length(tmp_path)
  results.write_results_csv(tmp_path, "best_per_point")
  shutil.rmtree(tmp_path / "runs")
  report.draw_sweep_plots(tmp_path)
  assert (tmp_path / "plots" / "loss_vs_params.png").exists()
