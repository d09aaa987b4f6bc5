"""workbench: the one-way hierarchical model fitted by ANOVA, empirical Bayes (ML, REML), joint
MAP and MCMC, side by side. Start with `workbench.compare`."""

from workbench.compare import Comparison, Settings, compare
from workbench.errors import InputError
from workbench.model.data import GroupedData, from_arrays, from_frame, load_csv
from workbench.model.priors import Priors, default_priors

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
