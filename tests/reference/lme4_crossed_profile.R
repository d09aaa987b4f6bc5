# Profile-likelihood intervals from lme4 (confint(fit, method = "profile", oldNames = FALSE)) for
# the variance parameters of models with SEVERAL grouping factors (crossed, nested; a correlated
# slope on one factor): run with
#   Rscript tests/reference/lme4_crossed_profile.R > tests/reference/lme4_crossed_profile.json
# (Debian packages r-base-core r-cran-lme4 r-cran-jsonlite). Models, data and level orders are
# those of the crossed battery (tests/reference/lme4_crossed.json, its "default" ML entries; data
# in tests/reference/crossed_data/, read back here so R and Python see the same numbers).
#
# lme4 profiles the ML deviance even for a REML fit (profile.merMod -> devfun2 -> refitML); one
# REML case checks that. Interval ends come from lme4's interpolation splines of the signed root
# deviance (zeta), so they are good to about 1e-5 relative where the profile is smooth; an end
# the profile does not reach before the parameter's boundary (sd 0, correlation +-1) is that
# boundary.
#
# Output: one JSON list, one entry per case: id, model, data (CSV name), formula, levels,
# factor_columns, method, deviance_ml (the ML deviance: the profile's minimum), intervals
# {name: [lower, upper]} for every sd_, cor_ and sigma (lme4's names and order), warnings
# (lme4's, e.g. a non-monotonic profile), seconds, versions.
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = FALSE)
here <- dirname(normalizePath(sub("--file=", "", args[grep("--file=", args)])))
battery <- fromJSON(file.path(here, "lme4_crossed.json"), simplifyVector = FALSE)

cases <- list(
  c("penicillin_crossed", "ml"),
  c("pastes_nested", "ml"),
  c("machines_nested", "reml"),
  c("oxide_nested", "ml"),
  c("pixel_nested_slope", "ml"),
  c("eg_slope_nested", "ml")
)

entry <- function(model, method) {
  for (e in battery) {
    if (e$model == model && e$method == method && e$control == "default") return(e)
  }
  stop("no battery entry ", model, " ", method)
}

one <- function(cs) {
  e <- entry(cs[1], cs[2])
  cols <- unlist(e$factor_columns)
  cc <- setNames(rep("character", length(cols)), cols)
  df <- read.csv(file.path(here, "crossed_data", e$data), colClasses = cc)
  for (v in names(e$levels)) df[[v]] <- factor(df[[v]], levels = unlist(e$levels[[v]]))
  fit <- suppressMessages(lmer(as.formula(e$formula), data = df, REML = cs[2] == "reml"))
  warns <- character()
  t0 <- proc.time()[["elapsed"]]
  ci <- withCallingHandlers(
    suppressMessages(confint(fit, method = "profile", oldNames = FALSE, parm = "theta_")),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") })
  elapsed <- proc.time()[["elapsed"]] - t0
  list(id = paste(cs[1], cs[2], sep = "."), model = cs[1], data = e$data, formula = e$formula,
       levels = if (length(e$levels) == 0) setNames(list(), character()) else e$levels,
       factor_columns = e$factor_columns, method = cs[2],
       deviance_ml = as.numeric(deviance(refitML(fit))),
       intervals = setNames(lapply(seq_len(nrow(ci)), function(i) unname(ci[i, ])), rownames(ci)),
       warnings = unique(warns), seconds = elapsed,
       versions = list(lme4 = as.character(packageVersion("lme4")), r = R.version.string))
}

out <- lapply(cases, one)
cat(toJSON(out, digits = I(15), auto_unbox = TRUE, pretty = TRUE, null = "null"), "\n")
