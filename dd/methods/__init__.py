"""Synthesizers: one module per method, registered by name; `distill()` runs any of them."""
from dd.methods.base import DistillationDiverged, Scoring, Inputs, Method, MethodConfig
from dd.methods.registry import METHODS
from dd.methods.driver import DistillResult, RunConfig, RunPlan, build_method, distill, make_plan, prepare, run_plan
from dd.methods import dm as _dm  # noqa: F401  (each import registers a method)
from dd.methods import mtt as _mtt  # noqa: F401
from dd.methods import ftd as _ftd  # noqa: F401
from dd.methods import datm as _datm  # noqa: F401
from dd.methods import datadam as _datadam  # noqa: F401
from dd.methods import sre2l as _sre2l  # noqa: F401  (sre2l, cda)
from dd.methods import cvdd as _cvdd  # noqa: F401
from dd.methods import ncfm as _ncfm  # noqa: F401
from dd.methods import rded as _rded  # noqa: F401

__all__ = ["METHODS", "DistillResult", "DistillationDiverged", "Scoring", "Inputs", "Method", "MethodConfig", "RunConfig",
           "RunPlan", "build_method", "distill", "make_plan", "prepare", "run_plan"]
