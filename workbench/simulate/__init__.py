"""Simulation studies: bias and coverage of every method over many simulated data sets, for any
model of `workbench.compare`.

A study (`models/NAME.toml`, a [simulation] section) is a model formula, a design generator and a
grid of true parameters (`study`); each replicate simulates a data set and runs `compare` on it,
reading the estimates and intervals from its JSON (`run`); replicates are stored one file each
as they finish, so a killed run loses only those in flight and a rerun resumes, and a store made
by a different study definition is refused; `summary` tabulates bias and coverage and `report`
renders the HTML page in the ADEMP structure of Morris et al. (2019) (`ademp`).
"""

from workbench.simulate.report import SUMMARY_COLUMNS, plot_summary, render_report
from workbench.simulate.run import (
    OUTPUTS,
    WATCH_THREAD,
    Store,
    check_outputs,
    check_run,
    die_with_parent,
    method_labels,
    replicate_seed,
    report_replicates,
    run_replicate,
    run_study,
    simulate_data,
    simulate_frame,
    workers_die_with_this_process,
)
from workbench.simulate.study import (
    DEFAULT_METHODS,
    GRID_KEYS,
    MCMC_KEYS,
    SIM_METHODS,
    Covariate,
    Setting,
    Study,
    check_study,
    load_study,
)
from workbench.simulate.summary import study_table, summarize

__all__ = [
    "DEFAULT_METHODS",
    "GRID_KEYS",
    "MCMC_KEYS",
    "OUTPUTS",
    "SIM_METHODS",
    "SUMMARY_COLUMNS",
    "WATCH_THREAD",
    "Covariate",
    "Setting",
    "Store",
    "Study",
    "check_outputs",
    "check_run",
    "check_study",
    "die_with_parent",
    "workers_die_with_this_process",
    "load_study",
    "method_labels",
    "plot_summary",
    "render_report",
    "replicate_seed",
    "report_replicates",
    "run_replicate",
    "run_study",
    "simulate_data",
    "simulate_frame",
    "study_table",
    "summarize",
]
