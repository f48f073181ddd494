"""Tokenizes a corpus offline into a token folder that ``data.name="tokens"`` trains on.

    python -m experiments.tokenize --input='DIR/*.jsonl.gz' --tokenizer=gpt2 --out=TOKENS
    python -m experiments.tokenize --input=corpus:shakespeare --tokenizer=gpt2 --out=TOKENS
    python -m experiments.tokenize --index --input='DIR/train_*.bin' \\
        --validation_input='DIR/val_*.bin' --tokenizer=gpt2 --out=DIR
    python -m experiments.tokenize --verify --out=TOKENS

``--input`` is a glob of plain text files (one document each), ``.jsonl`` / ``.jsonl.gz``
files (one document per line, text in ``--text_field``), or ``corpus:NAME`` for a packaged
corpus. ``--tokenizer`` is ``gpt2``, ``cl100k_base``, ``o200k_base`` (their files come
from the data cache: ``python -m experiments.fetch_data gpt2``), ``hf:PATH/tokenizer.json``
or ``spm:PATH.model``. Nothing is downloaded. A killed run, rerun with the same flags,
finishes where it stopped. ``--index`` writes a manifest for token files made elsewhere
(.npy, headerless uint16/uint32, llm.c .bin) without tokenizing; ``--verify`` re-hashes a
folder against its manifest. Cleaning, split and file format: jscale/data/tokenize_corpus.py
and jscale/data/token_files.py.
"""

import functools

from absl import app, flags

from experiments import cli
from jscale.data import token_build, token_files
from jscale.data import tokenize_corpus as corpus_lib
from jscale.data import tokenizer as tokenizer_lib
from jscale.errors import BadInput

_INPUT = flags.DEFINE_string("input", "", "Glob of text/.jsonl/.jsonl.gz files, or "
                             "corpus:NAME (shakespeare, stdlib, gcide). With --index: glob of "
                             "the training token files.")
_OUT = flags.DEFINE_string("out", "", "The token folder to write (or, with --index and "
                           "--verify, the folder holding the token files).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "gpt2", f"{tokenizer_lib.ALLOWED}.")
_EOS_TOKEN = flags.DEFINE_string("eos_token", "", "End-of-document token of an hf:/spm: "
                                 "tokenizer; '' = the first of "
                                 f"{', '.join(tokenizer_lib.EOS_CANDIDATES)} it has.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL: the field holding the text.")
_MIN_CHARS = flags.DEFINE_integer("min_chars", 0, "Drop documents with fewer characters.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.01, "Expected share of documents held out for validation "
    "(chosen by a hash of each document's text).")
_UNIT_MB = flags.DEFINE_integer("unit_mb", 64, "Input megabytes per unit of work (and per "
                                "pair of output shards).")
_WORKERS = flags.DEFINE_integer("workers", 0, "Worker processes; 0 = every core.")
_INDEX = flags.DEFINE_bool("index", False, "Write a manifest for existing token files.")
_VALIDATION_INPUT = flags.DEFINE_string("validation_input", "", "With --index: glob of the "
                                        "validation token files (whole files).")
_VERIFY = flags.DEFINE_bool("verify", False, "Re-hash --out against its manifest.")


def _spec() -> tokenizer_lib.TokenizerSpec:
  return tokenizer_lib.TokenizerSpec(tokenizer_lib.absolute_name(_TOKENIZER.value),
                                     _EOS_TOKEN.value)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise BadInput(f"unexpected arguments {argv[1:]}; flags look like --input=GLOB")
  if not _OUT.value:
    raise BadInput("--out is required: the token folder")
  if _INDEX.value and _VERIFY.value:
    raise BadInput("give --index or --verify, not both")
  if _VERIFY.value:
    print(token_files.verify(_OUT.value), flush=True)
    return
  if not _INPUT.value:
    raise BadInput("--input is required: a glob of files or corpus:NAME")
  for name, value, least in (("--min_chars", _MIN_CHARS.value, 0),
                             ("--unit_mb", _UNIT_MB.value, 1), ("--workers", _WORKERS.value, 0)):
    if value < least:
      raise BadInput(f"{name} must be an integer >= {least}, got {value}")
  progress = functools.partial(print, flush=True)
  if _INDEX.value:
    if not _VALIDATION_INPUT.value:
      raise BadInput("--index needs --validation_input: a glob of the validation token files")
    print(token_build.index(token_build.IndexOptions(
        _INPUT.value, _VALIDATION_INPUT.value, _OUT.value, _spec(), _WORKERS.value),
        progress), flush=True)
    return
  print(token_build.tokenize(corpus_lib.Options(
      input=_INPUT.value, out=_OUT.value, tokenizer=_spec(), text_field=_TEXT_FIELD.value,
      min_chars=_MIN_CHARS.value, validation_fraction=_VALIDATION_FRACTION.value,
      unit_bytes=_UNIT_MB.value << 20, workers=_WORKERS.value), progress), flush=True)


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
