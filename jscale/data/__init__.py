"""Real and synthetic data behind one interface; nothing downloads at run time.

``load(DataSpec(name=...))`` returns a dataset whose batches are pure functions
of (seed, step): ``train_batch(step, batch_size, seed, shard_index=0,
shard_count=1)`` gives one shard's rows of global batch ``step``, and
``eval_batches(batch_size, num_batches)`` a fixed list of validation batches.
Text datasets give int32 tokens ``{"inputs", "targets"}`` of shape [B, seq_len]:
bytes for the packaged corpora, BPE tokens for a token folder (``name="tokens"``,
made by ``experiments.tokenize``; see tokens.py); image datasets float32 images
[B, H, W, C] in [0, 1] and int32 labels [B]. See text.py, tokens.py and images.py
for the split and ordering rules, experiments/fetch_data.py for putting real
corpora into the cache, and prefetch.py for loading batches ahead.
"""

import dataclasses
import numbers

from jscale.data import cache as cache_lib
from jscale.data import corpora, images, synthetic, text, tokens
from jscale.errors import BadInput

TEXT_CORPORA = ("shakespeare", "stdlib", "gcide", "files", "synthetic_text", "tokens")
IMAGE_CORPORA = ("mnist", "digits", "fashion_mnist", "synthetic_images")
CORPORA = TEXT_CORPORA + IMAGE_CORPORA

Dataset = text.TextDataset | tokens.TokenDataset | images.ImageDataset


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which data to read; built by the config layer from config.data."""
  name: str  # One of CORPORA.
  seq_len: int = 128  # Text only: tokens per example.
  validation_fraction: float = 0.1  # Share of documents (text) or of each class.
  files_glob: str = ""  # Only for name == "files": local or gs:// glob.
  tokens_dir: str = ""  # Only for name == "tokens": a token folder, local or gs://.
  cache_dir: str = ""  # "" = $JSCALE_DATA_DIR, else ~/.cache/jscale.


def check_spec(spec: DataSpec) -> None:
  """ValueError (one line, naming the field) for a malformed spec."""
  if spec.name not in CORPORA:
    raise BadInput(f"data.name must be one of {', '.join(CORPORA)}, "
                     f"got {spec.name!r}")
  if (not isinstance(spec.seq_len, numbers.Integral)
      or isinstance(spec.seq_len, bool) or spec.seq_len < 1):
    raise BadInput(f"data.seq_len must be a positive integer, got {spec.seq_len!r}")
  if (not isinstance(spec.validation_fraction, numbers.Real)
      or isinstance(spec.validation_fraction, bool)
      or not 0 < spec.validation_fraction < 1):
    raise BadInput(f"data.validation_fraction must be a number in (0, 1), "
                     f"got {spec.validation_fraction!r}")
  if not isinstance(spec.files_glob, str) or (spec.name == "files") != bool(
      spec.files_glob):
    raise BadInput(f"data.files_glob must be a non-empty glob exactly when "
                     f"data.name is 'files', got {spec.files_glob!r} with data.name="
                     f"{spec.name!r}")
  if not isinstance(spec.tokens_dir, str) or (spec.name == "tokens") != bool(spec.tokens_dir):
    raise BadInput(f"data.tokens_dir must be a token folder exactly when data.name is "
                   f"'tokens', got {spec.tokens_dir!r} with data.name={spec.name!r}")
  if not isinstance(spec.cache_dir, str):
    raise BadInput(f"data.cache_dir must be a string, got {spec.cache_dir!r}")


def _text_documents(spec: DataSpec) -> tuple[tuple[text.Document, ...], dict]:
  cache = cache_lib.cache_dir(spec.cache_dir)
  if spec.name == "shakespeare":
    return corpora.shakespeare(cache)
  if spec.name == "stdlib":
    return corpora.stdlib()
  if spec.name == "gcide":
    return corpora.gcide(cache)
  if spec.name == "files":
    return corpora.files(spec.files_glob)
  return synthetic.markov_documents(), {"generator": "random Markov chain",
                                        "content_seed": synthetic.CONTENT_SEED}


def _image_dataset(spec: DataSpec) -> images.ImageDataset:
  cache = cache_lib.cache_dir(spec.cache_dir)
  if spec.name == "mnist":
    return images.mnist(cache, spec.validation_fraction)
  if spec.name == "digits":
    return images.digits(cache, spec.validation_fraction)
  if spec.name == "fashion_mnist":
    return images.fashion_mnist(cache)
  pixels, labels = synthetic.teacher_images()
  return images.split_stratified(
      "synthetic_images", images.Images(pixels, labels, 255.0),
      spec.validation_fraction, {"generator": "random teacher network",
                                 "content_seed": synthetic.CONTENT_SEED})


def load(spec: DataSpec) -> Dataset:
  """The dataset `spec` names; ValueError (one line) if it is malformed or missing."""
  check_spec(spec)
  if spec.name == "tokens":
    return tokens.TokenDataset(spec.tokens_dir, spec.seq_len)
  if spec.name in TEXT_CORPORA:
    documents, source = _text_documents(spec)
    return text.TextDataset(spec.name, documents, spec.seq_len,
                            spec.validation_fraction, source)
  return _image_dataset(spec)
