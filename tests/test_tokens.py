"""Token folders: the tokenize step (cleaning, split, determinism), --index layouts,
--verify, the token dataset's batches (a function of (seed, step) for any process count),
its start-up checks, prefetching, and what training records about the data.

Most cases use a word-level Hugging Face tokenizer written here (no fetched files); the
tiktoken encodings are checked against tiktoken's own loader on the pinned files.
"""

import hashlib
import json
import math
import os
import shutil
import threading

import numpy as np
import pytest
import tiktoken
import tokenizers
from conftest import missing_requirement, tiny_config

from jscale import data as data_lib
from jscale.data import cache as cache_lib
from jscale.data import corpora, order, token_build, token_files, tokens
from jscale.data import tokenize_corpus as corpus_lib
from jscale.data import tokenizer as tokenizer_lib
from jscale.data.prefetch import Prefetched
from jscale.errors import BadInput
from jscale.train import config as config_lib
from jscale.train import train
from jscale.train.evaluation import eval_record
from jscale.train.sharding import data_parallel

WORDS = [f"w{i}" for i in range(40)]
EOS = "<|endoftext|>"


def _hf_tokenizer(folder, markers: int, extra: int = 0) -> str:
  """A word-level tokenizer.json: [UNK], EOS, WORDS, markers m0.., then ``extra`` fillers."""
  vocab = {"[UNK]": 0, EOS: 1}
  for word in WORDS + [f"m{i}" for i in range(markers)] + [f"x{i}" for i in range(extra)]:
    vocab[word] = len(vocab)
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  path = os.path.join(folder, "tokenizer.json")
  tok.save(path)
  return f"hf:{path}"


def _document(i: int, rng) -> str:
  """Document i: its marker word m<i> first, then random words."""
  return " ".join([f"m{i}"] + list(rng.choice(WORDS, size=int(rng.integers(20, 200)))))


def _jsonl(folder, texts, per_file=50) -> str:
  os.makedirs(folder, exist_ok=True)
  for f in range(0, len(texts), per_file):
    with open(os.path.join(folder, f"part-{f // per_file:03d}.jsonl"), "w") as out:
      for text in texts[f:f + per_file]:
        out.write(json.dumps({"text": text, "id": "ignored"}) + "\n")
  return os.path.join(folder, "*.jsonl")


def _options(input_glob, out, tokenizer, **kw) -> corpus_lib.Options:
  kw.setdefault("validation_fraction", 0.2)
  kw.setdefault("workers", 1)
  return corpus_lib.Options(input=input_glob, out=str(out),
                            tokenizer=tokenizer_lib.TokenizerSpec(tokenizer), **kw)


def _markers(folder, split: str, eos_id: int, first_marker: int) -> list[int]:
  """Marker words (document numbers) found in a split's shards, in stream order."""
  manifest = token_files.read_manifest(str(folder))
  found = []
  for shard in manifest.split(split):
    ids = np.load(os.path.join(folder, shard.file))
    found += [int(t) - first_marker for t in ids if first_marker <= t < first_marker + 10**6]
  return found


@pytest.fixture(name="corpus")
def fixture_corpus(tmp_path):
  """200 documents in 4 JSONL files, plus an exact duplicate, an empty and a short one."""
  rng = np.random.default_rng(0)
  texts = [_document(i, rng) for i in range(200)]
  texts += [texts[7], "   \n", "m199"]  # duplicate, empty, too short (with min_chars=5)
  tokenizer = _hf_tokenizer(tmp_path, markers=200)
  return {"glob": _jsonl(tmp_path / "in", texts), "tokenizer": tokenizer, "tmp": tmp_path,
          "texts": texts}


def _tokenize(corpus, out_name="out", **kw):
  out = corpus["tmp"] / out_name
  token_build.tokenize(_options(corpus["glob"], out, corpus["tokenizer"], min_chars=5,
                                unit_bytes=8 << 10, **kw), progress=lambda line: None)
  return out


# --- the tokenize step ---------------------------------------------------------------------

def test_tokenize_cleans_splits_and_counts(corpus):
  out = _tokenize(corpus)
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["dropped"] == {"duplicate": 1, "empty": 1, "too_short": 1}
  first_marker = 2 + len(WORDS)
  train_docs = _markers(out, "train", 1, first_marker)
  validation_docs = _markers(out, "validation", 1, first_marker)
  # Every kept document is in exactly one split, once; no validation document in training.
  assert not set(train_docs) & set(validation_docs)
  assert sorted(train_docs + validation_docs) == list(range(200))
  assert 10 < len(validation_docs) < 70  # about 20% of 200
  assert manifest["totals"]["train"]["documents"] == len(train_docs)
  # Documents are joined by EOS: one per document in each shard, the last token an EOS.
  for shard in manifest["shards"]:
    ids = np.load(out / shard["file"])
    assert np.count_nonzero(ids == 1) == shard["documents"] and ids[-1] == 1
  assert manifest["dtype"] == "uint16"
  assert manifest["vocab_size"] == 2 + len(WORDS) + 200
  validation_text = sum(len(corpus["texts"][d].encode()) for d in validation_docs)
  validation_tokens = manifest["totals"]["validation"]["tokens"]
  assert manifest["bytes_per_token"] == pytest.approx(validation_text / validation_tokens)


def test_tokenize_is_the_same_for_any_worker_count_and_rerun(corpus):
  one = _tokenize(corpus, "one", workers=1)
  two = _tokenize(corpus, "two", workers=2)
  names = sorted(os.listdir(one))
  assert names == sorted(os.listdir(two)) and len(names) > 4
  for name in names:
    assert (one / name).read_bytes() == (two / name).read_bytes(), name
  before = {n: (one / n).stat().st_mtime_ns for n in names}
  _tokenize(corpus, "one")  # finished already: nothing is rewritten
  assert before == {n: (one / n).stat().st_mtime_ns for n in names}


def test_an_interrupted_run_resumes_to_the_same_bytes(corpus, monkeypatch):
  reference = _tokenize(corpus, "reference")
  write_unit, written = corpus_lib.write_unit, []

  def dies_after_three_units(unit, keep, options):
    if len(written) == 3:
      # Killed while writing the fourth: a half-written temporary shard stays behind.
      (corpus["tmp"] / "partial" / f".tmp-train-{unit.index:05d}.npy").write_bytes(b"half")
      raise KeyboardInterrupt
    written.append(unit.index)
    return write_unit(unit, keep, options)

  monkeypatch.setattr(corpus_lib, "write_unit", dies_after_three_units)
  with pytest.raises(KeyboardInterrupt):
    _tokenize(corpus, "partial")
  out = corpus["tmp"] / "partial"
  assert not (out / "manifest.json").exists() and (out / corpus_lib.PARTIAL).is_dir()
  finished = {p.name: p.stat().st_mtime_ns for p in out.glob("[tv]*.npy")}
  assert finished
  monkeypatch.setattr(corpus_lib, "write_unit", write_unit)
  _tokenize(corpus, "partial")
  assert finished == {n: (out / n).stat().st_mtime_ns for n in finished}  # not redone
  assert sorted(os.listdir(out)) == sorted(os.listdir(reference))
  for name in os.listdir(reference):
    assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  rng = np.random.default_rng(1)
  for i in range(30):
    (folder / f"{i:02d}.txt").write_bytes(_document(i, rng).encode() + b" \xff\xfe w1")
  tokenizer = _hf_tokenizer(tmp_path, markers=30)
  token_build.tokenize(_options(str(folder / "*.txt"), tmp_path / "out", tokenizer,
                                validation_fraction=0.3), progress=lambda line: None)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["repaired_undecodable"] == 30
  assert "U+FFFD" in manifest["cleaning"]


def test_tokenize_refuses_bad_input_before_writing(corpus, tmp_path):
  def refused(match, **kw):
    options = dict(input_glob=corpus["glob"], out=tmp_path / "o", tokenizer=corpus["tokenizer"])
    options.update(kw)
    with pytest.raises(BadInput, match=match):
      token_build.tokenize(_options(options.pop("input_glob"), **options),
                           progress=lambda line: None)
    assert not (tmp_path / "o").exists()

  refused("matches no files", input_glob=str(tmp_path / "nothing*.jsonl"))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "a.jsonl").write_text('{"text": "m1 w1"}\nnot json\n')
  refused("a.jsonl: line 2 is not JSON", input_glob=str(bad / "*.jsonl"))
  (bad / "a.jsonl").write_text('{"text": "m1 w1"}\n{"body": "m2"}\n')
  refused("line 2 has no string field 'text'", input_glob=str(bad / "*.jsonl"))
  refused("--tokenizer must be one of", tokenizer="bpe50k")
  refused("no such file", tokenizer=f"hf:{tmp_path}/missing.json")
  (tmp_path / "junk.json").write_text("{}")
  refused("is not a tokenizer.json", tokenizer=f"hf:{tmp_path}/junk.json")
  refused("empty validation split", validation_fraction=1e-9)
  other = _tokenize(corpus, "other")
  with pytest.raises(BadInput, match="holds another corpus"):
    token_build.tokenize(_options(corpus["glob"], other, corpus["tokenizer"],
                                  validation_fraction=0.3), progress=lambda line: None)


def test_a_bpe_file_with_the_wrong_bytes_is_refused(tmp_path):
  (tmp_path / "gpt2").mkdir()
  (tmp_path / "gpt2" / "gpt2.tiktoken").write_bytes(b"not the ranks")
  with pytest.raises(BadInput, match="sha256"):
    tokenizer_lib.Tokenizer(tokenizer_lib.TokenizerSpec("gpt2", cache_dir=str(tmp_path)))
  with pytest.raises(BadInput, match="not in the data cache"):
    tokenizer_lib.Tokenizer(tokenizer_lib.TokenizerSpec("o200k_base", cache_dir=str(tmp_path)))


def test_a_large_vocabulary_writes_uint32(tmp_path):
  tokenizer = _hf_tokenizer(tmp_path, markers=40, extra=70_000)
  rng = np.random.default_rng(2)
  texts = [_document(i, rng) + " x69999" for i in range(40)]
  token_build.tokenize(_options(_jsonl(tmp_path / "in", texts), tmp_path / "out", tokenizer,
                                validation_fraction=0.3), progress=lambda line: None)
  manifest = token_files.read_manifest(str(tmp_path / "out"))
  assert manifest.dtype == np.uint32 and manifest.vocab_size > 1 << 16
  ds = tokens.TokenDataset(str(tmp_path / "out"), seq_len=8)
  assert ds.train_batch(0, 4, 0)["inputs"].max() < manifest.vocab_size


def test_sentencepiece_models_tokenize(tmp_path):
  sentencepiece = pytest.importorskip("sentencepiece")
  rng = np.random.default_rng(3)
  texts = [_document(i, rng) for i in range(60)]
  model = tmp_path / "m.model"
  with open(model, "wb") as f:
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=f,
                                             vocab_size=60, model_type="bpe",
                                             minloglevel=2)
  token_build.tokenize(_options(_jsonl(tmp_path / "in", texts), tmp_path / "out",
                                f"spm:{model}", validation_fraction=0.3),
                       progress=lambda line: None)
  manifest = token_files.read_manifest(str(tmp_path / "out"))
  spm = sentencepiece.SentencePieceProcessor(model_file=str(model))
  first = np.load(tmp_path / "out" / manifest.shards[0].file)
  assert manifest.eos_id == spm.eos_id()
  end = int(np.flatnonzero(first == manifest.eos_id)[0])
  assert spm.decode(first[:end].tolist()) in texts


# --- the pinned BPE encodings against tiktoken's own loader --------------------------------

TIKTOKEN_URLS = {"gpt2": ("r50k_base", "encodings/r50k_base.tiktoken"),
                 "cl100k_base": ("cl100k_base", "encodings/cl100k_base.tiktoken"),
                 "o200k_base": ("o200k_base", "encodings/o200k_base.tiktoken")}


@pytest.mark.parametrize("name", sorted(TIKTOKEN_URLS))
def test_bpe_ids_equal_tiktokens_reference(name, tmp_path, monkeypatch):
  """tiktoken's registry (its patterns, special tokens and loader, given our pinned file as
  its download cache) and jscale's tokenizer agree on real text."""
  try:
    stored = cache_lib.pip_file(name, cache_lib.cache_dir())
  except ValueError as e:
    missing_requirement(str(e))
  reference_name, blob = TIKTOKEN_URLS[name]
  url = f"https://openaipublic.blob.core.windows.net/{blob}"
  ranks = stored.read_bytes()
  if stored.suffix == ".gz":
    ranks = __import__("gzip").decompress(ranks)
  (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(ranks)
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
  reference = tiktoken.get_encoding(reference_name)
  ours = tokenizer_lib.Tokenizer(tokenizer_lib.TokenizerSpec(name))
  samples = [d.content.decode("utf-8", "replace") for d in corpora.stdlib()[0][:20]]
  samples += ["héllo wörld 日本語 <|endoftext|> 🎉\r\n\t  x   1234567 don't I'LL\u00a0end",
              "Ünïcödé  \n\n\n  spaces   and\ttabs 3.14159 ¡¿ ﬁ ǅ"]
  for text in samples:
    assert ours.encode(text) == reference.encode_ordinary(text)
  assert ours.eos_id == reference.eot_token and ours.vocab_size == reference.n_vocab


# --- --index and --verify ------------------------------------------------------------------

def _write_layout(path, layout, ids):
  if layout == "npy":
    np.save(path, ids)
  elif layout == "raw":
    ids.tofile(path)
  else:
    header = np.zeros(256, "<i4")
    header[:3] = token_files.LLMC_MAGIC, 1, ids.size
    with open(path, "wb") as f:
      f.write(header.tobytes() + ids.astype("<u2").tobytes())


@pytest.mark.parametrize("layout,suffix", [("npy", ".npy"), ("raw", ".u16"), ("llmc", ".bin")])
def test_index_reads_back_the_tokens_written(layout, suffix, tmp_path):
  tokenizer = _hf_tokenizer(tmp_path, markers=0)
  rng = np.random.default_rng(4)
  written = {}
  for name in ("train_000", "train_001", "val_000"):
    ids = rng.integers(2, 42, 5000).astype(np.uint16)
    ids[::50] = 1  # EOS between documents
    _write_layout(tmp_path / f"{name}{suffix}", layout, ids)
    written[f"{name}{suffix}"] = ids
  token_build.index(token_build.IndexOptions(
      str(tmp_path / f"train_*{suffix}"), str(tmp_path / f"val_*{suffix}"), str(tmp_path),
      tokenizer_lib.TokenizerSpec(tokenizer)), progress=lambda line: None)
  manifest, readers = token_files.open_folder(str(tmp_path))
  for split in ("train", "validation"):
    for reader in readers[split]:
      assert reader.shard.layout == layout
      assert np.array_equal(reader.read(0, reader.shard.tokens), written[reader.shard.file])
      assert reader.shard.documents == 100
  assert [r.shard.file for r in readers["validation"]] == [f"val_000{suffix}"]
  assert "fingerprint" in token_files.verify(str(tmp_path))
  ds = tokens.TokenDataset(str(tmp_path), seq_len=15)
  assert ds.windows_per_epoch == 2 * ((5000 - 16 + 1) // 16)


def _folder(tmp_path):
  """An indexed raw folder of three same-length shards (two train, one validation)."""
  tokenizer = _hf_tokenizer(tmp_path, markers=0)
  rng = np.random.default_rng(5)
  for name in ("a", "b", "v"):
    rng.integers(1, 42, 4 * token_files.PROBE_TOKENS).astype(np.uint16).tofile(
        tmp_path / f"{name}.u16")
  token_build.index(token_build.IndexOptions(str(tmp_path / "[ab].u16"),
                                             str(tmp_path / "v.u16"), str(tmp_path),
                                             tokenizer_lib.TokenizerSpec(tokenizer)),
                    progress=lambda line: None)
  return tmp_path


def _manifest_edit(folder, change):
  path = folder / "manifest.json"
  record = json.loads(path.read_text())
  change(record)
  path.write_text(json.dumps(record))


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / "manifest.json").unlink(), "has no manifest.json"),
    (lambda f: _manifest_edit(f, lambda r: r.update(version=99)), "format version 99"),
    (lambda f: _manifest_edit(f, lambda r: r.update(format="other")), "not a jscale token"),
    (lambda f: os.truncate(f / "a.u16", 1000), "a.u16 has 1000 bytes"),
    (lambda f: _manifest_edit(f, lambda r: r["shards"][0].update(tokens=10)), "truncated or"),
    (lambda f: _manifest_edit(f, lambda r: r.update(vocab_size=20)), "outside the vocabulary"),
    (lambda f: (os.rename(f / "a.u16", f / "t"), os.rename(f / "b.u16", f / "a.u16"),
                os.rename(f / "t", f / "b.u16")), "swapped or rewritten"),
])
def test_opening_a_damaged_folder_fails_in_one_line(damage, message, tmp_path):
  folder = _folder(tmp_path)
  data_lib.load(data_lib.DataSpec("tokens", seq_len=8, tokens_dir=str(folder)))
  damage(folder)
  with pytest.raises(BadInput, match=message) as error:
    data_lib.load(data_lib.DataSpec("tokens", seq_len=8, tokens_dir=str(folder)))
  assert "\n" not in str(error.value)


def test_verify_finds_every_changed_byte_and_out_of_vocabulary_ids(tmp_path):
  folder = _folder(tmp_path)
  ids = np.fromfile(folder / "b.u16", np.uint16)
  ids[2500] ^= 1  # outside the probe blocks: only a full hash sees it
  ids.tofile(folder / "b.u16")
  data_lib.load(data_lib.DataSpec("tokens", seq_len=8, tokens_dir=str(folder)))
  with pytest.raises(BadInput, match="b.u16 has sha256"):
    token_files.verify(str(folder))
  ids[2500] ^= 1
  ids.tofile(folder / "b.u16")
  _manifest_edit(folder, lambda r: r.update(vocab_size=41))
  with pytest.raises(BadInput, match="token id 41 >= vocab_size 41"):
    token_files.verify(str(folder))


def test_index_refuses_ids_outside_the_vocabulary_and_an_empty_validation_split(tmp_path):
  tokenizer = tokenizer_lib.TokenizerSpec(_hf_tokenizer(tmp_path, markers=0))
  np.full(100, 500, np.uint16).tofile(tmp_path / "a.u16")
  np.full(100, 5, np.uint16).tofile(tmp_path / "v.u16")
  with pytest.raises(BadInput, match="token id 500"):
    token_build.index(token_build.IndexOptions(str(tmp_path / "a.u16"), str(tmp_path / "v.u16"),
                                               str(tmp_path), tokenizer), lambda line: None)
  with pytest.raises(BadInput, match="empty validation split"):
    token_build.index(token_build.IndexOptions(str(tmp_path / "v.u16"), str(tmp_path / "z*"),
                                               str(tmp_path), tokenizer), lambda line: None)
  assert not (tmp_path / "manifest.json").exists()


# --- batches -------------------------------------------------------------------------------

@pytest.fixture(name="dataset")
def fixture_dataset(corpus):
  return data_lib.load(data_lib.DataSpec("tokens", seq_len=16, tokens_dir=str(_tokenize(corpus))))


def test_a_batch_is_the_same_for_1_2_and_4_processes_and_after_a_resume(dataset, corpus):
  for step in (0, 1, 57, 1000):
    whole = dataset.train_batch(step, 8, seed=3)
    for count in (2, 4):
      shares = [dataset.train_batch(step, 8, 3, shard_index=i, shard_count=count)
                for i in range(count)]
      for key in whole:
        assert np.array_equal(np.concatenate([s[key] for s in shares]), whole[key])
  # Trained on 2 processes up to step 40, resumed on 4 in a new process (a new dataset,
  # loading ahead): the batches are those of one process.
  resumed = Prefetched(data_lib.load(data_lib.DataSpec(
      "tokens", seq_len=16, tokens_dir=str(corpus["tmp"] / "out"))))
  for step in range(40, 46):
    whole = dataset.train_batch(step, 8, seed=3)
    shares = [resumed.train_batch(step, 8, 3, shard_index=i, shard_count=4) for i in range(4)]
    assert np.array_equal(np.concatenate([s["inputs"] for s in shares]), whole["inputs"])


def test_windows_cover_an_epoch_once_and_never_hold_validation_tokens(dataset, corpus):
  n, batch = dataset.windows_per_epoch, 8
  steps = n // batch
  seen = np.concatenate([dataset.train_batch(s, batch, 0)["inputs"] for s in range(steps)])
  assert len({row.tobytes() for row in seen}) == steps * batch  # no window twice in an epoch
  first_marker = 2 + len(WORDS)
  validation = set(_markers(corpus["tmp"] / "out", "validation", 1, first_marker))
  assert not {int(t) - first_marker for t in seen.ravel() if t >= first_marker} & validation
  eval_rows = np.concatenate([b["inputs"] for b in dataset.eval_batches(batch, 2)])
  assert {int(t) - first_marker for t in eval_rows.ravel() if t >= first_marker} <= validation
  epochs, _ = order.train_slots(steps, 0, batch, 0, 1, n)
  assert epochs.max() <= 1


def test_prefetch_loads_the_next_step_in_the_background_and_returns_the_same_batches(dataset):
  requested = threading.Event()

  class Watched:
    def __getattr__(self, name):
      return getattr(dataset, name)

    def train_batch(self, step, *args, **kw):
      if step == 6:
        requested.set()
      return dataset.train_batch(step, *args, **kw)

  ahead = Prefetched(Watched())
  assert ahead.windows_per_epoch == dataset.windows_per_epoch
  for step in (3, 4, 5, 20, 21, 2):
    assert np.array_equal(ahead.train_batch(step, 8, 1)["targets"],
                          dataset.train_batch(step, 8, 1)["targets"])
    if step == 5:
      assert requested.wait(timeout=60)  # step 6 was asked for before anyone needed it


def test_an_error_while_loading_ahead_surfaces_at_its_step():
  class Failing:
    def train_batch(self, step, *args):
      if step == 2:
        raise BadInput("step 2 is unreadable")
      return {"step": step}

  ahead = Prefetched(Failing())
  assert ahead.train_batch(0, 1, 0) == {"step": 0}
  assert ahead.train_batch(1, 1, 0) == {"step": 1}
  with pytest.raises(BadInput, match="step 2"):
    ahead.train_batch(2, 1, 0)


# --- what runs see ------------------------------------------------------------------------

def _token_config(folder, **train):
  c = tiny_config(**train)
  c.data.name, c.data.tokens_dir = "tokens", str(folder)
  return c


def test_the_model_vocabulary_and_val_bpb_come_from_the_manifest(dataset, corpus):
  run = config_lib.resolve(_token_config(corpus["tmp"] / "out"), dataset)
  assert run.model.vocab_size == token_files.read_manifest(str(corpus["tmp"] / "out")).vocab_size
  record = eval_record(dataset, {"loss": 2.0})
  assert record["val_bpb"] == pytest.approx(2.0 / math.log(2) / dataset.bytes_per_token)
  assert dataset.bytes_per_token > 1.5  # words of 2-4 characters and a space
  with pytest.raises(ValueError, match="train.global_batch=1000000 is more than the"):
    config_lib.resolve(_token_config(corpus["tmp"] / "out", global_batch=1_000_000), dataset)


def test_a_run_records_its_epochs_and_refuses_to_resume_on_other_data(dataset, corpus, tmp_path):
  run = config_lib.resolve(_token_config(corpus["tmp"] / "out", steps=4), dataset)
  result = train(run, dataset, tmp_path / "run", dp=data_parallel(1), progress=lambda p: None)
  assert result["unique_tokens"] == dataset.num_train_units
  assert result["epochs"] == pytest.approx(result["tokens"] / dataset.num_train_units)
  assert result["data"]["content_sha256"] == token_files.read_manifest(
      str(corpus["tmp"] / "out")).fingerprint
  other = _tokenize(corpus, "other", validation_fraction=0.3)
  changed = data_lib.load(data_lib.DataSpec("tokens", seq_len=16, tokens_dir=str(other)))
  with pytest.raises(BadInput, match="trained on other data"):
    train(run, changed, tmp_path / "run", dp=data_parallel(1), progress=lambda p: None)
  shutil.rmtree(other)
