"""The token path through its entry points: ``python -m experiments.tokenize`` refusing bad
input (one line, exit 2, nothing written), a tokenize killed by SIGKILL and rerun, and
tokenize -> sweep -> evaluate on the token folder, then a sweep refused on a changed corpus.

The bad-input table runs in children of the fork server (conftest.py; JAX imported
once); the kill and end-to-end cases are real ``python -m`` subprocesses.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tokenizers
from conftest import missing_requirement
from helpers import ROOT, assert_refused, cli_env, listing, run_module

from jscale.data import cache as cache_lib
from jscale.data import token_build
from jscale.data import tokenize_corpus as corpus_lib
from jscale.data import tokenizer as tokenizer_lib

WORDS = [f"w{i}" for i in range(40)]


def _tokenizer_json(cwd: pathlib.Path) -> None:
  vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.save(str(cwd / "tok.json"))


def _jsonl(cwd: pathlib.Path, documents: int = 40, lines: tuple[str, ...] = ()) -> None:
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(WORDS, 30)) for _ in range(documents)]
  (cwd / "in").mkdir(exist_ok=True)
  (cwd / "in" / "a.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in texts) + "".join(lines))


def _tokenized(cwd: pathlib.Path, **options) -> None:
  _tokenizer_json(cwd)
  _jsonl(cwd)
  token_build.tokenize(corpus_lib.Options(
      input=str(cwd / "in" / "*.jsonl"), out=str(cwd / "tokens"),
      tokenizer=tokenizer_lib.TokenizerSpec(f"hf:{cwd / 'tok.json'}"), workers=1,
      validation_fraction=0.3, **options), progress=lambda line: None)


def _edit_manifest(cwd: pathlib.Path, change) -> None:
  path = cwd / "tokens" / "manifest.json"
  record = json.loads(path.read_text())
  change(record)
  path.write_text(json.dumps(record))


def _flip_a_token(cwd: pathlib.Path) -> None:
  path = cwd / "tokens" / "train-00000.npy"
  data = bytearray(path.read_bytes())
  data[200] ^= 1
  path.write_bytes(bytes(data))


TOKENIZE = ("--tokenizer=hf:tok.json", "--out=out", "--workers=1")
CASES = {
    "glob_matches_nothing": (("--input=none/*.jsonl", *TOKENIZE), "matches no files",
                             _tokenizer_json),
    "jsonl_line_not_json": (("--input=in/*.jsonl", *TOKENIZE), "line 41 is not JSON",
                            lambda c: (_tokenizer_json(c), _jsonl(c, lines=("{oops\n",)))),
    "jsonl_line_lacks_the_field": (("--input=in/*.jsonl", *TOKENIZE), "no string field 'text'",
                                   lambda c: (_tokenizer_json(c),
                                              _jsonl(c, lines=('{"body": "w1"}\n',)))),
    "unknown_tokenizer": (("--input=in/*.jsonl", "--tokenizer=bpe9", "--out=out"),
                          "--tokenizer must be one of", _jsonl),
    "tokenizer_file_missing": (("--input=in/*.jsonl", "--tokenizer=hf:nope.json", "--out=out"),
                               "no such file", _jsonl),
    "tokenizer_file_wrong": (("--input=in/*.jsonl", "--tokenizer=hf:in/a.jsonl", "--out=out"),
                             "is not a tokenizer.json", _jsonl),
    "out_holds_another_corpus": (("--input=in/*.jsonl", "--tokenizer=hf:tok.json",
                                  "--out=tokens", "--validation_fraction=0.5"),
                                 "holds another corpus", _tokenized),
    "out_holds_other_files": (("--input=in/*.jsonl", *TOKENIZE), "holds no jscale token folder",
                              lambda c: (_tokenizer_json(c), _jsonl(c), (c / "out").mkdir(),
                                         (c / "out" / "x").write_text("x"))),
    "empty_validation_split": (("--input=in/*.jsonl", *TOKENIZE, "--validation_fraction=1e-9"),
                               "empty validation split", lambda c: (_tokenizer_json(c), _jsonl(c))),
    "verify_without_manifest": (("--verify", "--out=in"), "has no manifest.json", _jsonl),
    "verify_unknown_version": (("--verify", "--out=tokens"), "format version 7",
                               lambda c: (_tokenized(c), _edit_manifest(
                                   c, lambda r: r.update(version=7)))),
    "verify_size_mismatch": (("--verify", "--out=tokens"), "train-00000.npy has",
                             lambda c: (_tokenized(c), os.truncate(
                                 c / "tokens" / "train-00000.npy", 300))),
    "verify_changed_shard": (("--verify", "--out=tokens"), "train-00000.npy has sha256",
                             lambda c: (_tokenized(c), _flip_a_token(c))),
    "verify_token_id_over_vocab": (("--verify", "--out=tokens"), ">= vocab_size 10",
                                   lambda c: (_tokenized(c), _edit_manifest(
                                       c, lambda r: r.update(vocab_size=10)))),
    "index_without_validation": (("--index", "--input=tokens/train-*.npy",
                                  "--validation_input=tokens/none*", "--tokenizer=hf:tok.json",
                                  "--out=tokens"), "empty validation split",
                                 lambda c: (_tokenized(c), (c / "tokens" / "manifest.json")
                                            .unlink())),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_tokenize_input_is_one_line_exit_2_and_writes_nothing(fork_server, tmp_path, name):
  args, needle, setup = CASES[name]
  setup(tmp_path)
  before = listing(tmp_path)
  outcome = fork_server.run("experiments.tokenize", list(args), tmp_path)
  assert_refused(outcome, (needle,), before, tmp_path)


SWEEP = ("--config=lm_bpe.py:smoke", "--workdir=wd", "--config.data.tokens_dir=tokens")
SWEEP_CASES = {
    "no_manifest": ((*SWEEP[:2], "--config.data.tokens_dir=in"), "has no manifest.json", _jsonl),
    "fewer_windows_than_a_batch": ((*SWEEP, "--config.train.global_batch=4096"),
                                   "train.global_batch=4096 is more than the", _tokenized),
    "a_token_id_over_the_vocabulary": (SWEEP, "outside the vocabulary of 10",
                                       lambda c: (_tokenized(c), _edit_manifest(
                                           c, lambda r: r.update(vocab_size=10)))),
    "a_swapped_shard": (SWEEP, "swapped or rewritten", lambda c: (_tokenized(c),
                                                                  _flip_a_token(c))),
}


@pytest.mark.parametrize("name", sorted(SWEEP_CASES))
def test_a_sweep_on_a_bad_token_folder_is_refused_at_start(fork_server, tmp_path, name):
  args, needle, setup = SWEEP_CASES[name]
  setup(tmp_path)
  (tmp_path / "lm_bpe.py").write_text((ROOT / "experiments/configs/lm_bpe.py").read_text())
  before = listing(tmp_path)
  outcome = fork_server.run("experiments.sweep", list(args), tmp_path)
  assert_refused(outcome, (needle,), before, tmp_path)


def _texts(folder: pathlib.Path, files: int, megabytes: float) -> None:
  folder.mkdir()
  rng = np.random.default_rng(7)
  words = np.array(["the", "of", "and", "king", "queen", "lord", "sword", "night", "day",
                    "love", "death", "crown", "ghost", "speak", "thou", "thee", "hast"])
  for i in range(files):
    n = int(megabytes * 2**20 / 5)
    (folder / f"{i:03d}.txt").write_text(" ".join(rng.choice(words, n)) + f" end{i}")


def _gpt2_available() -> None:
  try:
    cache_lib.pip_file("gpt2", cache_lib.cache_dir())
  except ValueError as e:
    missing_requirement(str(e))


@pytest.mark.slow
def test_a_tokenize_killed_midway_and_rerun_writes_the_same_shards(tmp_path):
  _gpt2_available()
  _texts(tmp_path / "in", files=24, megabytes=1)
  args = ["--input=in/*.txt", "--tokenizer=gpt2", "--validation_fraction=0.2", "--unit_mb=1"]
  reference = run_module("experiments.tokenize", [*args, "--out=reference", "--workers=1"],
                             tmp_path)
  assert reference.returncode == 0, reference.stderr
  command = [sys.executable, "-m", "experiments.tokenize", *args, "--out=killed",
             "--workers=2"]
  proc = subprocess.Popen(command, cwd=tmp_path, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=cli_env())
  partial = tmp_path / "killed" / corpus_lib.PARTIAL
  deadline = time.monotonic() + 300
  while not list(partial.glob("unit-*.json")) and time.monotonic() < deadline:
    time.sleep(0.01)
  os.killpg(proc.pid, signal.SIGKILL)  # the whole job: the CLI and its workers
  proc.wait()
  assert not (tmp_path / "killed" / "manifest.json").exists(), "finished before the kill"
  rerun = run_module("experiments.tokenize", [*args, "--out=killed", "--workers=2"],
                         tmp_path)
  assert rerun.returncode == 0, rerun.stderr
  names = sorted(os.listdir(tmp_path / "reference"))
  assert names == sorted(os.listdir(tmp_path / "killed")) and len(names) > 10
  for name in names:
    assert ((tmp_path / "killed" / name).read_bytes()
            == (tmp_path / "reference" / name).read_bytes()), name


@pytest.mark.slow
def test_tokenize_then_sweep_then_evaluate_on_tokens(tmp_path):
  _gpt2_available()
  _texts(tmp_path / "in", files=30, megabytes=0.05)
  tokenize = ["--input=in/*.txt", "--tokenizer=gpt2", "--validation_fraction=0.3"]
  done = run_module("experiments.tokenize", [*tokenize, "--out=tokens"], tmp_path)
  assert done.returncode == 0, done.stderr
  assert "tokens/s" in done.stdout and "ETA" in done.stdout or "done in" in done.stdout
  config = str(ROOT / "experiments/configs/lm_bpe.py") + ":smoke"
  sweep = ["--config=" + config, "--workdir=wd", "--config.data.tokens_dir=tokens",
           "--config.sweep.widths=(8,16)", "--nofit"]
  done = run_module("experiments.sweep", sweep, tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  done = run_module("experiments.evaluate", ["--workdir=wd"], tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
  rows = (tmp_path / "wd" / "results.csv").read_text().splitlines()
  header = rows[0].split(",")
  for line in rows[1:]:
    row = dict(zip(header, line.split(",")))
    assert int(row["unique_tokens"]) == manifest["totals"]["train"]["tokens"]
    assert float(row["epochs"]) == pytest.approx(int(row["tokens"]) / int(row["unique_tokens"]))
    assert float(row["val_bpb"]) == pytest.approx(
        float(row["val_loss"]) / np.log(2) / manifest["bytes_per_token"])
  for run in (tmp_path / "wd" / "runs").iterdir():
    assert json.loads((run / "eval.json").read_text())
    result = json.loads((run / "result.json").read_text())
    assert result["data"]["vocab_size"] == 50257
  # The same workdir on a changed corpus: refused in one line, nothing trained.
  (tmp_path / "in" / "000.txt").write_text("a different first document")
  done = run_module("experiments.tokenize", [*tokenize, "--out=tokens2"], tmp_path)
  assert done.returncode == 0, done.stderr
  before = listing(tmp_path / "wd")
  refused = run_module("experiments.sweep", [*sweep[:2], "--config.data.tokens_dir=tokens2",
                                                 *sweep[3:]], tmp_path)
  assert refused.returncode == 2 and "data.content_sha256" in refused.stderr, refused.stderr
  assert len(refused.stderr.strip().splitlines()) == 1
  assert listing(tmp_path / "wd") == before
