"""A bucket workdir (``gs://...``) gets its fit.json and plots through the same path layer
as its results: nothing in the report needs a local folder. The bucket is a local folder
behind ``etils.epath.testing.mock_epath``, which routes every ``epath`` call."""

import csv
import io
import json
import os

import numpy as np
import pytest
from etils import epath
from etils.epath import testing

from jscale.sweep import analysis, report, results

BUCKET = "gs://bucket/sweep"


@pytest.fixture
def bucket(tmp_path):
  """``gs://`` paths served from ``tmp_path``; yields the local mirror of BUCKET."""
  def local(path):
    return os.fspath(tmp_path / os.fspath(path).removeprefix("gs://"))

  def one(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def two(fn, path, destination, *args, **kwargs):
    return fn(local(path), local(destination), *args, **kwargs)

  routed = {name: one for name in ("exists", "isdir", "listdir", "makedirs", "mkdir", "open",
                                   "remove", "stat", "glob", "rmtree", "walk")}
  with testing.mock_epath(**routed, rename=two, replace=two):
    yield tmp_path / BUCKET.removeprefix("gs://")


def _write_results(folder):
  """A results.csv of 12 finished dense runs on a Chinchilla-shaped law (no run folders)."""
  rows = []
  for i, (n, d) in enumerate(zip(np.geomspace(1e4, 1e6, 12), np.geomspace(1e6, 1e8, 12)[::-1])):
    loss = 1.7 + 400 / n**0.34 + 410 / d**0.28
    row = dict.fromkeys(results.COLUMNS, "")
    row.update(run_id=f"r{i}", label=f"r{i}", status="done", params_non_embedding=n,
               params_total=n, params_nonzero_non_embedding=n, tokens=d, val_loss=loss,
               flops=6 * n * d, steps=100, compress="none", selected=True)
    rows.append(row)
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=results.COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  folder.mkdir(parents=True)
  (folder / "results.csv").write_text(out.getvalue())


def test_fit_json_and_plots_go_to_a_bucket(bucket):
  _write_results(bucket)
  workdir = epath.Path(BUCKET)
  fitted = analysis.fit_results(analysis.read_results(str(workdir / "results.csv")),
                                bootstrap=0)
  report.write_fit(fitted, workdir)
  report.draw_sweep_plots(workdir)
  assert json.loads((bucket / "fit.json").read_text())["law"] == "chinchilla"
  drawn = {p.name for p in (bucket / "plots").iterdir()}
  assert {"fit.png", "loss_vs_params.png"} <= drawn
  assert all((bucket / "plots" / name).read_bytes().startswith(b"\x89PNG") for name in drawn)
  assert not [p for p in bucket.rglob(".*")], "a temporary file was left behind"
