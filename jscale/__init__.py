"""jscale: compute-efficient scaling-law experiments in JAX.

Pipeline: data -> models -> train -> compress -> sweep -> fit -> report.
"""

__version__ = "0.1.0"
