"""The per-run metrics log and atomic files."""

import json

import pytest

from jscale.train import metrics


@pytest.mark.parametrize("local", [True, False])
def test_log_appends_truncates_and_reads_back(tmp_path, monkeypatch, local):
  monkeypatch.setattr(metrics, "_is_local", lambda path: local)  # False: object-store mode
  path = tmp_path / "metrics.jsonl"
  log = metrics.MetricsLog(path)
  for step in range(1, 6):
    log.append("train", step, {"loss": 1.0 / step})
  log.append("train", 6, {"loss": float("nan")})
  log.flush()
  assert [r["step"] for r in metrics.MetricsLog(path).records()] == [1, 2, 3, 4, 5, 6]
  assert json.loads(path.read_text().splitlines()[-1])["loss"] is None  # valid JSON, no NaN
  log.truncate_after(3)
  log.append("eval", 4, {"val_loss": 0.5})
  log.flush()
  assert [(r["kind"], r["step"]) for r in metrics.MetricsLog(path).records()] == [
      ("train", 1), ("train", 2), ("train", 3), ("eval", 4)]
  log.close()
  # Object stores get no TensorBoard events (tensorboardX writes local files only).
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == (1 if local else 0)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
  metrics.write_json_atomic(tmp_path / "a" / "result.json", {"x": 1})
  metrics.write_json_atomic(tmp_path / "a" / "result.json", {"x": 2})
  assert json.loads((tmp_path / "a" / "result.json").read_text()) == {"x": 2}
  assert [p.name for p in (tmp_path / "a").iterdir()] == ["result.json"]


def test_eta_format():
  assert metrics.format_eta(75) == "1m15s"
  assert metrics.format_eta(3 * 3600 + 60) == "3h01m"
  assert metrics.format_eta(float("nan")) == "?"


def test_an_append_cut_short_is_dropped_and_the_log_goes_on(tmp_path):
  path = tmp_path / "metrics.jsonl"
  log = metrics.MetricsLog(path)
  for step in (1, 2):
    log.append("train", step, {"loss": 1.0})
  with path.open("a") as f:
    f.write('{"kind": "train", "loss": 0.9, "st')  # the disk filled mid-record
  assert [r["step"] for r in metrics.MetricsLog(path).records()] == [1, 2]
  log.truncate_after(2)
  log.append("train", 3, {"loss": 0.8})
  assert [r["step"] for r in metrics.MetricsLog(path).records()] == [1, 2, 3]


def test_a_failed_write_names_its_file_and_leaves_the_old_one(tmp_path, monkeypatch):
  target = tmp_path / "result.json"
  metrics.write_json_atomic(target, {"x": 1})

  def full_disk(*args):
    raise OSError(28, "No space left on device")  # as os.write reports it: no file name

  monkeypatch.setattr(metrics.os, "fsync", full_disk)
  with pytest.raises(OSError) as e:
    metrics.write_json_atomic(target, {"x": 2})
  assert e.value.filename == str(target) and e.value.errno == 28
  assert json.loads(target.read_text()) == {"x": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left
