# Profile-likelihood intervals from lme4 (confint(fit, method = "profile", oldNames = FALSE)) for
# the variance parameters of formula models: run with
#   Rscript tests/reference/lme4_profile.R > tests/reference/lme4_profile.json
# (Debian packages r-base-core r-cran-lme4 r-cran-jsonlite). Data: the CSVs that
# lme4_battery.R wrote to tests/reference/battery_data/ (read back here, so R and Python see the
# same numbers). Hsb82's sector has mlmRev's level order Public, Catholic.
#
# lme4 profiles the ML deviance even for a REML fit (profile.merMod -> devfun2 -> refitML), so
# its REML intervals are the ML ones up to the optimiser; the sleepstudy model is in both.
# Interval ends come from lme4's interpolation splines of the signed root deviance (zeta), so
# they are good to about 1e-5 relative, not to the last digit; an end the profile does not reach
# before the parameter's boundary (sd 0, correlation +-1) is that boundary.
#
# Output: one JSON list, one entry per case: id, data (CSV name), formula, levels, method, the ML
# deviance of the model (the profile's minimum), intervals {name: [lower, upper]} for every
# sd_, cor_ and sigma (lme4's names and order), warnings (lme4's, e.g. a non-monotonic profile),
# seconds, versions.
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = FALSE)
here <- dirname(normalizePath(sub("--file=", "", args[grep("--file=", args)])))
datadir <- file.path(here, "battery_data")
rd <- function(name, text) {
  cc <- setNames(rep("character", length(text)), text)
  read.csv(file.path(datadir, name), colClasses = cc)
}
ss <- rd("sleepstudy.csv", "Subject")
hsb <- rd("hsb82.csv", c("school", "sector"))
hsb$sector <- factor(hsb$sector, levels = c("Public", "Catholic"))
dye <- rd("dyestuff.csv", "Batch")
dye2 <- rd("dyestuff2.csv", "Batch")

cases <- list(
  list(id = "sleepstudy_slope.ml", data = "sleepstudy.csv", df = ss, reml = FALSE,
       formula = "Reaction ~ Days + (Days | Subject)"),
  list(id = "sleepstudy_slope.reml", data = "sleepstudy.csv", df = ss, reml = TRUE,
       formula = "Reaction ~ Days + (Days | Subject)"),
  list(id = "sleepstudy_uncorrelated.ml", data = "sleepstudy.csv", df = ss, reml = FALSE,
       formula = "Reaction ~ Days + (Days || Subject)"),
  list(id = "sleepstudy_quadratic.ml", data = "sleepstudy.csv", df = ss, reml = FALSE,
       formula = "Reaction ~ Days + (Days + Days2 | Subject)"),
  list(id = "hsb82_slope.ml", data = "hsb82.csv", df = hsb, reml = FALSE,
       formula = "mAch ~ ses + sector + (1 + ses | school)",
       levels = list(sector = c("Public", "Catholic"))),
  list(id = "dyestuff.ml", data = "dyestuff.csv", df = dye, reml = FALSE,
       formula = "Yield ~ 1 + (1 | Batch)"),
  list(id = "dyestuff2.ml", data = "dyestuff2.csv", df = dye2, reml = FALSE,
       formula = "Yield ~ 1 + (1 | Batch)")
)

one <- function(cs) {
  fit <- suppressMessages(lmer(as.formula(cs$formula), data = cs$df, REML = cs$reml))
  warns <- character()
  t0 <- proc.time()[["elapsed"]]
  ci <- withCallingHandlers(
    suppressMessages(confint(fit, method = "profile", oldNames = FALSE, parm = "theta_")),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") })
  elapsed <- proc.time()[["elapsed"]] - t0
  list(id = cs$id, data = cs$data, formula = cs$formula,
       levels = if (is.null(cs$levels)) setNames(list(), character()) else cs$levels,
       method = if (cs$reml) "reml" else "ml",
       deviance_ml = as.numeric(deviance(refitML(fit))),
       intervals = setNames(lapply(seq_len(nrow(ci)), function(i) unname(ci[i, ])), rownames(ci)),
       warnings = unique(warns), seconds = elapsed,
       versions = list(lme4 = as.character(packageVersion("lme4")), r = R.version.string))
}

out <- lapply(cases, one)
cat(toJSON(out, digits = I(15), auto_unbox = TRUE, pretty = TRUE, null = "null"), "\n")
