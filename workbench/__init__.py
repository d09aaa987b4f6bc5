"""workbench: the one-way hierarchical model fitted by ANOVA, empirical Bayes (ML, REML), joint
MAP and MCMC, side by side. Start with `workbench.compare`."""

from .compare import Comparison, Settings, compare
from .data import GroupedData, from_arrays, from_frame, load_csv
from .errors import InputError
from .priors import Priors, default_priors

__all__ = [
    "Comparison",
    "GroupedData",
    "InputError",
    "Priors",
    "Settings",
    "compare",
    "default_priors",
    "from_arrays",
    "from_frame",
    "load_csv",
]
