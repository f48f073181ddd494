"""``--smoke``, shared by the absl benchmarks: tiny sizes that run in seconds, so
``make test`` runs every benchmark and checks its last line (tests/test_benchmarks.py)."""

from absl import flags

SMOKE = flags.DEFINE_bool("smoke", False,
                          "Tiny sizes that run in seconds (make test checks the last line).")


def shrink(sizes: dict) -> None:
  """Under --smoke, sets each flag named in ``sizes`` to its tiny value."""
  if SMOKE.value:
    for name, value in sizes.items():
      flags.FLAGS[name].value = value
