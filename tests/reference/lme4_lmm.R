# Reference numbers from lme4 for general linear mixed models: run with
#   Rscript tests/reference/lme4_lmm.R > tests/reference/lme4_lmm.json
# (Debian packages r-base-core r-cran-lme4 r-cran-jsonlite). Data: models/data/*.csv.
# Factor levels follow the R data sets (mlmRev's Hsb82 has sector = Public, Catholic), so the
# fixed-effect names are lme4's (e.g. sectorCatholic); the case files set the same order.
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = FALSE)
here <- dirname(normalizePath(sub("--file=", "", args[grep("--file=", args)])))
datadir <- file.path(here, "..", "..", "models", "data")
hsb <- read.csv(file.path(datadir, "hsb82.csv"), colClasses = c(school = "character"))
hsb$sector <- factor(hsb$sector, levels = c("Public", "Catholic"))
hsb$sx <- factor(hsb$sx, levels = c("Male", "Female"))
hsb$minrty <- factor(hsb$minrty, levels = c("No", "Yes"))
hsb$school <- factor(hsb$school)
pen <- read.csv(file.path(datadir, "penicillin.csv"))

cases <- list(
  list(name = "hsb82_slope", data = hsb, formula = mAch ~ ses + sector + (1 + ses | school)),
  list(name = "hsb82_uncorrelated", data = hsb, formula = mAch ~ ses + (1 | school) + (0 + ses | school)),
  list(name = "hsb82_categorical", data = hsb,
       formula = mAch ~ cses * sector + minrty + sx + (1 + cses | school)),
  list(name = "hsb82_three_terms", data = hsb,
       formula = mAch ~ cses + sector + (1 + cses + meanses | school)),
  list(name = "hsb82_oneway", data = hsb, formula = mAch ~ 1 + (1 | school))
)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-12, maxfun = 1e5))

one_fit <- function(cs, reml) {
  t0 <- proc.time()[["elapsed"]]
  fit <- lmer(cs$formula, data = cs$data, REML = reml, control = ctrl)
  elapsed <- proc.time()[["elapsed"]] - t0
  vc <- as.data.frame(VarCorr(fit))
  var_rows <- vc[is.na(vc$var2) & vc$grp != "Residual", ]
  cor_rows <- vc[!is.na(vc$var2), ]
  re <- ranef(fit, condVar = TRUE)
  g <- names(re)[1]
  modes <- lapply(re, function(r) as.list(as.data.frame(r)))
  pv <- lapply(re, function(r) attr(r, "postVar"))
  # condVar per group: one q x q matrix per level (several terms on one factor give several
  # blocks; we report the diagonal of each block, concatenated in term order)
  cond_sd <- lapply(re, function(r) {
    pvl <- attr(r, "postVar")
    diags <- function(a) { d <- apply(a, 3, diag); if (is.matrix(d)) t(d) else matrix(d, ncol = 1) }
    if (is.list(pvl)) sqrt(do.call(cbind, lapply(pvl, diags))) else sqrt(diags(pvl))
  })
  list(
    fixed_effects = setNames(lapply(names(fixef(fit)), function(n)
      list(estimate = unname(fixef(fit)[n]), se = unname(sqrt(diag(vcov(fit)))[n]))),
      names(fixef(fit))),
    variances = setNames(as.list(var_rows$vcov), paste(var_rows$grp, var_rows$var1, sep = "|")),
    correlations = setNames(as.list(cor_rows$sdcor),
                            paste(cor_rows$grp, paste(cor_rows$var1, cor_rows$var2, sep = ":"), sep = "|")),
    sigma2 = sigma(fit)^2,
    loglik = as.numeric(logLik(fit)),
    deviance_or_reml = as.numeric(deviance(fit, REML = reml)),
    theta = unname(getME(fit, "theta")),
    ranef_levels = rownames(re[[1]]),
    ranef_terms = colnames(re[[1]]),
    ranef_modes = unname(as.matrix(re[[1]])),
    ranef_sd = unname(cond_sd[[1]]),
    seconds = elapsed
  )
}

out <- list()
for (cs in cases) {
  out[[cs$name]] <- list(formula = paste(deparse(cs$formula), collapse = ""),
                         ml = one_fit(cs, FALSE), reml = one_fit(cs, TRUE))
}
out$lme4_version <- as.character(packageVersion("lme4"))
out$r_version <- R.version.string
cat(toJSON(out, digits = I(15), auto_unbox = TRUE, pretty = TRUE, matrix = "rowmajor"), "\n")
