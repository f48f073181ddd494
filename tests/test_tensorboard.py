"""TensorBoard event files beside metrics.jsonl: same numbers, each step once after a
resume. The event files are read back with a TFRecord reader written here from the
format (length, masked CRC-32C, payload, masked CRC-32C; the CRC computed here, as
TensorBoard checks it) and tensorboardX's Event protobuf."""

import json
import struct

import pytest
from conftest import tiny_config
from helpers import quiet, stop_on_call
from tensorboardX.proto import event_pb2

from jscale.train import config as config_lib
from jscale.train import metrics, train, train_group
from jscale.train.sharding import data_parallel


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  """TFRecord's masking of a CRC: rotate right by 15 bits, add 0xa282ead8."""
  crc = _crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_check_value():
  assert _crc32c(b"123456789") == 0xE3069283  # the catalogued CRC-32C check value


def read_scalars(folder) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in every event file under ``folder``; fails on a
  torn record or a wrong checksum (TensorBoard would stop reading there)."""
  scalars = []
  for path in sorted(folder.rglob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
      payload = data[offset + 12:offset + 12 + length]
      (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
      assert (header_crc, payload_crc) == (_masked_crc(header), _masked_crc(payload)), path
      offset += 16 + length
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


def _records(folder, name="metrics.jsonl"):
  return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def assert_events_mirror_jsonl(folder) -> dict:
  """The run's event scalars are its JSONL numbers, each (tag, step) once; returns them."""
  scalars = read_scalars(folder / "tensorboard")
  by_key = {(tag, step): value for tag, step, value in scalars}
  assert len(by_key) == len(scalars)  # no (tag, step) twice
  expected = {}
  for r in _records(folder) + _records(folder, "throughput.jsonl"):
    for key, value in r.items():
      if key not in ("kind", "step") and value is not None:
        expected[(f"{r['kind']}/{key}", r["step"])] = value
  assert by_key.keys() == expected.keys()
  for key, value in expected.items():
    assert by_key[key] == pytest.approx(value, rel=1e-6), key  # stored as float32
  return by_key


def test_events_hold_the_jsonl_numbers(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(log_every=3), dataset)
  train(run, dataset, tmp_path, dp=data_parallel(1), progress=quiet)
  by_key = assert_events_mirror_jsonl(tmp_path)
  tags = {tag for tag, _ in by_key}
  assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/val_loss",
          "eval/val_bpb", "throughput/tok_per_second",
          "throughput/flops_per_second"} <= tags
  assert sorted(s for t, s in by_key if t == "train/loss") == list(range(1, 13))
  # Wall-clock numbers stay out of metrics.jsonl, which must be deterministic.
  assert all(r["kind"] in ("train", "eval") for r in _records(tmp_path))


def test_resumed_run_has_each_step_once_and_every_step(tmp_path, dataset):
  run = config_lib.resolve(tiny_config(log_every=3), dataset)
  dp = data_parallel(1)
  train(run, dataset, tmp_path / "straight", dp=dp, progress=quiet)
  first = train(run, dataset, tmp_path / "resumed", dp=dp, should_stop=stop_on_call(8),
                progress=quiet)
  assert first["status"] == "preempted"
  # Preempted at its step-8 checkpoint; the resumed process appends steps 9..12 (a kill
  # that leaves steps after the checkpoint in the files is the test below).
  train(run, dataset, tmp_path / "resumed", dp=dp, progress=quiet)
  straight = read_scalars(tmp_path / "straight" / "tensorboard")
  resumed = read_scalars(tmp_path / "resumed" / "tensorboard")
  def keys(scalars):
    return sorted((tag, step) for tag, step, _ in scalars)

  assert len(set(keys(resumed))) == len(resumed)
  def deterministic(scalars):
    return sorted((tag, step, value) for tag, step, value in scalars
                  if not tag.startswith("throughput/"))

  assert deterministic(resumed) == deterministic(straight)
  # Throughput is measured between log points after compilation: a resumed process has
  # none at its first log point (step 9 here), and every other one the straight run has.
  def timing(scalars):
    return {key for key in keys(scalars) if key[0].startswith("throughput/")}

  assert timing(resumed) == {key for key in timing(straight) if key[1] != 9}
  assert {step for _, step in timing(resumed)} == {3, 6, 12}


def test_each_run_of_a_batched_group_has_its_own_events(tmp_path, dataset):
  runs = [config_lib.resolve(tiny_config(seed=seed, learning_rate=lr, log_every=3), dataset)
          for seed, lr in ((0, 1e-2), (1, 1e-3))]
  dirs = [tmp_path / "a", tmp_path / "b"]
  train_group(runs, dataset, dirs, dp=data_parallel(1), progress=[quiet] * 2)
  losses = [[v for (tag, _), v in sorted(assert_events_mirror_jsonl(d).items())
             if tag == "train/loss"] for d in dirs]
  assert len(losses[0]) == len(losses[1]) == 12 and losses[0] != losses[1]


def test_steps_logged_after_the_last_checkpoint_are_in_the_events_once(tmp_path):
  path = tmp_path / "metrics.jsonl"
  killed = metrics.MetricsLog(path)
  killed.truncate_after(0)
  for step in range(1, 10):
    killed.append("train", step, {"loss": step + 0.25})
  killed.flush()  # then the process dies (no close) after its step-8 checkpoint
  assert [step for _, step, _ in read_scalars(tmp_path / "tensorboard")] == list(range(1, 10))
  # Event files are named by the second and host: within one second the next process
  # would overwrite this file, hiding duplicates, so give it an earlier second's name.
  (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  event_file.rename(event_file.with_name("events.out.tfevents.1000000000.killed"))
  resumed = metrics.MetricsLog(path)
  resumed.truncate_after(8)
  for step in range(9, 13):
    resumed.append("train", step, {"loss": step + 0.5})
  resumed.close()
  expected = [("train/loss", s, s + 0.25) for s in range(1, 9)] + [
      ("train/loss", s, s + 0.5) for s in range(9, 13)]  # exact in float32
  assert sorted(read_scalars(tmp_path / "tensorboard")) == expected


def test_a_process_that_appends_without_truncating_mirrors_the_whole_log(tmp_path):
  path = tmp_path / "metrics.jsonl"
  first = metrics.MetricsLog(path)
  first.truncate_after(0)
  first.append("train", 1, {"loss": 2.0, "learning_rate": 0.5})
  first.append("throughput", 1, {"tok_per_second": 1024.0})
  first.close()
  second = metrics.MetricsLog(path)
  second.append("eval", 1, {"val_loss": 1.5, "val_bpb": float("nan")})
  second.close()
  assert sorted(read_scalars(tmp_path / "tensorboard")) == [
      ("eval/val_loss", 1, 1.5), ("throughput/tok_per_second", 1, 1024.0),
      ("train/learning_rate", 1, 0.5), ("train/loss", 1, 2.0)]  # NaN: no point


def test_events_reach_disk_at_the_log_cadence_without_a_flush(tmp_path):
  log = metrics.MetricsLog(tmp_path / "metrics.jsonl")
  log.truncate_after(0)
  for step in (1, 2, 3):
    log.append("train", step, {"loss": float(step)})
  assert read_scalars(tmp_path / "tensorboard") == []  # not yet: no file write per step
  log.append("throughput", 3, {"tok_per_second": 8.0})  # a progress line: a live view
  assert sorted(read_scalars(tmp_path / "tensorboard")) == [
      ("throughput/tok_per_second", 3, 8.0), ("train/loss", 1, 1.0), ("train/loss", 2, 2.0),
      ("train/loss", 3, 3.0)]
