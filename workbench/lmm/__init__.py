"""The general linear mixed model (lme4 formulas, one grouping factor), in plain stages:

formula (parse) -> design (LMMData + per-group cross products) -> deviance (lme4's profiled
objectives of theta, and the profiled log joint) -> eb / joint_map / mcmc (objective + optimiser,
or the sampler) -> fitted records.
"""
