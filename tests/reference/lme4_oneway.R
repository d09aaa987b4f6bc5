# Reference numbers from lme4 for the one-way model: run with
#   Rscript tests/reference/lme4_oneway.R > tests/reference/lme4_oneway.json
# (Debian packages r-base-core r-cran-lme4). Data: models/data/*.csv.
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = FALSE)
here <- dirname(normalizePath(sub("--file=", "", args[grep("--file=", args)])))
datadir <- file.path(here, "..", "..", "models", "data")
cases <- list(
  list(name = "dyestuff", file = "dyestuff.csv", y = "Yield", g = "Batch"),
  list(name = "dyestuff2", file = "dyestuff2.csv", y = "Yield", g = "Batch"),
  list(name = "hsb82", file = "hsb82.csv", y = "mAch", g = "school")
)
num <- function(x) formatC(x, digits = 15, format = "g")
out <- c()
for (cs in cases) {
  d <- read.csv(file.path(datadir, cs$file), colClasses = c("character"))
  d$y <- as.numeric(d[[cs$y]]); d$g <- factor(d[[cs$g]])
  blocks <- c()
  for (reml in c(FALSE, TRUE)) {
    fit <- lmer(y ~ 1 + (1 | g), data = d, REML = reml,
                control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 2e-3, rhoend = 1e-12)))
    vc <- as.data.frame(VarCorr(fit))
    re <- ranef(fit, condVar = TRUE)$g
    pv <- attr(re, "postVar")[1, 1, ]
    lev <- rownames(re)
    ci <- suppressWarnings(suppressMessages(confint(fit, method = "profile", level = 0.95, oldNames = FALSE)))
    reblock <- paste0("{", paste0('"', lev, '": {"mode": ', num(re[, 1]), ', "sd": ', num(sqrt(pv)), "}", collapse = ", "), "}")
    blk <- paste0('"', if (reml) "reml" else "ml", '": {',
      '"mu": ', num(fixef(fit)[1]), ', "se_mu": ', num(sqrt(vcov(fit)[1, 1])),
      ', "tau2": ', num(vc$vcov[1]), ', "sigma2": ', num(vc$vcov[2]),
      ', "loglik": ', num(as.numeric(logLik(fit))),
      ', "deviance_or_reml": ', num(as.numeric(deviance(fit, REML = reml))),
      ', "ci_tau": [', num(ci[1, 1]), ", ", num(ci[1, 2]), "]",
      ', "ci_sigma": [', num(ci[2, 1]), ", ", num(ci[2, 2]), "]",
      ', "random_effects": ', reblock, "}")
    blocks <- c(blocks, blk)
  }
  out <- c(out, paste0('"', cs$name, '": {', paste(blocks, collapse = ", "), "}"))
}
cat("{", paste(out, collapse = ",\n"), ',\n"lme4_version": "', as.character(packageVersion("lme4")), '"}\n', sep = "")
