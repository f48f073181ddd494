"""results.csv: which rows a sweep's law uses (sweep.select), trunks excluded."""

import json

from jscale.sweep import analysis, results


def _run(workdir, run_id, *, width, lr, tokens, loss, status="done", trunk=None):
  folder = workdir / "runs" / run_id
  folder.mkdir(parents=True)
  config = {"model": {"family": "transformer", "width": width, "depth": 2},
            "train": {"learning_rate": lr, "seed": 0, "compute_dtype": "float32"},
            "compress": {"passes": [], "distill": {"teacher": ""}}}
  (folder / "config.json").write_text(json.dumps(config))
  result = {"status": status, "val_loss": loss, "tokens": tokens, "flops": width * tokens,
            "trunk": trunk, "params_non_embedding": 12 * width**2}
  (folder / "result.json").write_text(json.dumps(result))


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
