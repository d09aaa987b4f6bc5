"""Moved: the PyMC model is `workbench.model.pymc`, the priors `workbench.model.priors` (this
module re-exports them until the last importers are switched)."""

from workbench.model.priors import Priors as LMMPriors  # noqa: F401
from workbench.model.priors import make_priors  # noqa: F401
from workbench.model.pymc import build_model  # noqa: F401
