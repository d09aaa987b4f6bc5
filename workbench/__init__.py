"""workbench: linear mixed models (lme4 formulas; the one-way model y ~ 1 + (1 | g) as a fast
path) fitted by empirical Bayes (ML, REML), joint MAP, MCMC and, for the one-way model, ANOVA,
side by side. Start with `workbench.compare`."""

from importlib.metadata import version as _version

from workbench.compare import Comparison, Settings, compare
from workbench.errors import InputError
from workbench.model.data import GroupedData, from_arrays, from_frame, load_csv
from workbench.model.priors import Priors, default_priors

__version__ = _version("workbench")

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
