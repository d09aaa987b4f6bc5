# lme4's time on InstEval (73,421 rows; 2972 students s x 1128 lecturers d crossed, plus
# dept:service, 28 levels), the speed target of issue 11:
#   Rscript benchmarks/bench_instEval_lme4.R [REPEATS] [CSV] [METHODS]
# Fits y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service) with lmer() (default control)
# REPEATS times (default 3) for each of METHODS ("reml", "ml" or "reml,ml", the default), and
# prints one JSON object per line:
#   {"method": "reml", "seconds": <median>, "runs": [...], "cpu": <median>, "objective": <REML
#    criterion or ML deviance>, "theta": [...], "feval": n, "nobs": 73421, "lme4": "1.1.31",
#    "r": "..."}
# seconds = median of the elapsed (wall) times of lmer() alone (system.time), data already in
# memory; cpu = median of its user + system CPU times. With CSV given
# (tests/reference/crossed_data/insteval.csv.gz, written by tests/reference/lme4_crossed.R) the
# data are read from it, as a Python benchmark would; otherwise lme4's InstEval is used (the
# same numbers). Progress goes to stderr.
suppressMessages({ library(lme4); library(jsonlite) })
a <- commandArgs(trailingOnly = TRUE)
reps <- if (length(a) >= 1) as.integer(a[1]) else 3L
if (length(a) >= 2 && nzchar(a[2])) {
  df <- read.csv(a[2], colClasses = c(y = "numeric", service = "character", s = "character",
                                      d = "character", dept = "character"))
  for (c in c("service", "s", "d", "dept")) df[[c]] <- factor(df[[c]])
  # service's reference level: "0" (as in InstEval); the order of the grouping factors' levels
  # does not change the fit
  df$service <- relevel(df$service, "0")
} else {
  df <- InstEval[, c("y", "service", "s", "d", "dept")]
}
methods <- if (length(a) >= 3) strsplit(a[3], ",")[[1]] else c("reml", "ml")
f <- y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)
for (method in methods) {
  reml <- method == "reml"
  secs <- numeric(reps); cpu <- numeric(reps); fit <- NULL
  for (i in seq_len(reps)) {
    st <- system.time(fit <- lmer(f, data = df, REML = reml))
    secs[i] <- st[["elapsed"]]
    cpu[i] <- st[["user.self"]] + st[["sys.self"]]
    message(sprintf("%s run %d: %.2f s", toupper(method), i, secs[i]))
  }
  cat(toJSON(list(method = method, seconds = median(secs), runs = I(secs), cpu = median(cpu),
                  objective = if (reml) REMLcrit(fit) else deviance(fit),
                  theta = I(unname(getME(fit, "theta"))), feval = fit@optinfo$feval,
                  nobs = nobs(fit), lme4 = as.character(packageVersion("lme4")),
                  r = R.version.string),
             digits = I(15), auto_unbox = TRUE), "\n")
}
