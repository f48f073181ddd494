"""jscale's differentiable scaling-law fitter (user docs: README.md, "Fitting scaling laws").

Public API: ``fit``, ``fit_sweep_results``, ``summary``, ``plot_fit``,
``FitResult``, and the law ``registry``.
"""

from jscale.fit import registry
from jscale.fit.api import choose_sweep_law, fit, fit_sweep_results
from jscale.fit.plots import plot_fit
from jscale.fit.report import FitResult, summary, write_json

__all__ = ["FitResult", "choose_sweep_law", "fit", "fit_sweep_results", "plot_fit", "registry",
           "summary", "write_json"]
