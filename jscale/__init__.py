"""jscale: compute-efficient scaling-law experiments in JAX.

Pipeline: data -> models -> compress -> train -> sweep, and fit (standalone).
"""

__version__ = "0.1.0"
