"""jscale's differentiable scaling-law fitter (user docs: README.md, "Fitting scaling laws").

A generic library over named covariates (N, D, C, S, P, T and the loss): it reads
tables but knows no one's column names, and imports nothing else of jscale (a sweep's
results are turned into covariates by ``jscale.sweep.analysis``).

Public API: ``fit``, ``predict``, ``summary``, ``write_json``, ``plot_fit``,
``FitResult``, ``complete_columns``, the law ``registry``, and the learning-rate
annealing law's ``Curve``, ``fit_annealing``, ``predict_annealing`` and ``lr_schedule``.
"""

from jscale.fit import registry
from jscale.fit.annealing import Curve, fit_annealing, lr_schedule, predict_annealing
from jscale.fit.api import ISOFLOP, complete_columns, fit, predict
from jscale.fit.plots import plot_fit
from jscale.fit.report import FitResult, summary, write_json

__all__ = ["ISOFLOP", "Curve", "FitResult", "complete_columns", "fit", "fit_annealing",
           "lr_schedule", "plot_fit", "predict", "predict_annealing", "registry", "summary",
           "write_json"]
