# lme4 reference battery for the general LMM with SEVERAL grouping factors (crossed, nested,
# partially crossed; intercepts and slopes): run with
#   Rscript tests/reference/lme4_crossed.R > tests/reference/lme4_crossed.json
# (Debian packages r-base-core r-cran-lme4 r-cran-mlmrev r-cran-jsonlite; nlme, MASS and
# datasets come with R). The rules are those of lme4_battery.R (the one-factor battery): every
# data set used is written to tests/reference/crossed_data/NAME.csv (only the columns the models
# use; factors as strings; a CSV over 1 MB is written gzipped as NAME.csv.gz, which pandas reads
# as it is), read back, and the fits are made on what was read, so R and Python see the same
# numbers. Real data only (no made-up factors). Runs in about 4 minutes (2 cores), almost all
# of it InstEval.
#
# Every model (formula x data) is fitted by ML and by REML, each with three controls:
#   default      lmerControl()                      (nloptwrap BOBYQA, xtol_abs = ftol_abs = 1e-8)
#   tight        minqa::bobyqa, rhoend 1e-12, maxfun 1e6
#   tight_nlopt  nloptwrap BOBYQA, xtol_abs 1e-12, ftol_abs 1e-14, relative tolerances 1e-15
# The output is one JSON list, one entry per fit, with the fields of lme4_battery.json:
#   id "<model>.<method>.<control>", model, data (CSV name), formula (lme4 syntax, as written
#   here: `a/b`, `a:b` and `||` are lme4's), levels (R's level order of every factor column
#   the FIXED-effect terms use: the first level is the reference of the treatment contrasts),
#   factor_columns (every column of the CSV that is a factor: read these as strings),
#   method ("ml"/"reml"), control, objective (ML deviance = -2 logLik, or the REML criterion),
#   loglik, theta (lme4's order: the terms in `terms` order, within a term the lower triangle of
#   the relative covariance factor column by column), fixed_effects and se (lme4's names),
#   sigma2, singular (isSingular), converged (optimiser code 0 and no lme4 convergence message
#   other than the singular one), optimizer_code, messages (lme4's convergence messages),
#   warnings, feval, nobs, seconds (elapsed time of lmer() alone), lme4_version, r_version;
# and, for several grouping factors:
#   variances     {grouping name: {column: variance}}, keyed as names(VarCorr(fit)): lme4's
#                 grouping factor names ("cask:batch" for the inner factor of `batch/cask`,
#                 "batch:cask" when written `(1 | batch:cask)`); two terms on the same factor
#                 (`(1 | a) + (0 + x | a)` or `(x || a)`) are "a" and "a.1" as VarCorr names them
#   correlations  {grouping name: {"col1:col2": correlation}} (only terms with several columns)
#   terms         lme4's internal term order (getME(fit, "cnms"): lme4 sorts the terms by
#                 decreasing number of levels): a list of {factor, columns, nlevels}; theta,
#                 the columns of Z and the blocks of Lambda follow this order
#   flist         getME(fit, "flist"): the distinct grouping factors, in lme4's order, with their
#                 numbers of levels ({name: nlevels}); a factor written `a:b` or made by `a/b` is
#                 the interaction of the two columns (levels: the combinations present)
#   nrow, ngroups (= flist)
#   ranef, ranef_sd   conditional modes and their conditional standard deviations
#                 (ranef(fit, condVar = TRUE)) as {factor: {column: {level: value}}}, recorded
#                 only where the model has at most 1000 random effects (null otherwise)
#   seconds_runs  for InstEval the default control is timed 3 times (seconds is their median);
#                 elsewhere one run
#
# Ordered factors are made plain factors first (lme4 would use polynomial contrasts for them).
# The column `yield` (nlme's Oats) is renamed `yld`: our parser refused Python keywords as
# column names. Columns combining two factors (machines ww = Worker_Machine, ...) are written
# where a model uses the combination as a column of its own; the same fit written with `a:b`
# is also there, so both routes can be tested.
suppressMessages({
  library(lme4); library(jsonlite); library(mlmRev); library(nlme); library(MASS)
})
args <- commandArgs(trailingOnly = FALSE)
here <- dirname(normalizePath(sub("--file=", "", args[grep("--file=", args)])))
outdir <- file.path(here, "crossed_data")
dir.create(outdir, showWarnings = FALSE)

gd <- function(name, pkg) { e <- new.env(); data(list = name, package = pkg, envir = e); e[[name]] }

# plain data frame, complete cases of the columns kept, unordered factors without unused levels
prep <- function(df, cols) {
  df <- as.data.frame(df)[, cols, drop = FALSE]
  df <- df[complete.cases(df), , drop = FALSE]
  for (c in names(df)) {
    x <- df[[c]]
    if (is.factor(x) || is.character(x)) {
      lev <- if (is.factor(x)) levels(x) else sort(unique(x))
      x <- as.character(x)
      df[[c]] <- factor(x, levels = lev[lev %in% x])
    }
  }
  rownames(df) <- NULL
  df
}
rename <- function(df, from, to) { names(df)[names(df) == from] <- to; df }
combine <- function(a, b) paste(as.character(a), as.character(b), sep = "_")

D <- list()
D$penicillin <- prep(Penicillin, c("diameter", "plate", "sample"))
D$pastes <- prep(Pastes, c("strength", "batch", "cask", "sample"))
mach <- gd("Machines", "nlme")
mach$ww <- combine(mach$Worker, mach$Machine)
D$machines <- prep(mach, c("score", "Machine", "Worker", "ww"))
oa <- gd("Oats", "nlme")
D$oats <- prep(rename(oa, "yield", "yld"), c("yld", "nitro", "Variety", "Block"))
D$cake <- prep(cake, c("angle", "recipe", "temperature", "temp", "replicate"))
D$scotssec <- prep(ScotsSec, c("attain", "verbal", "sex", "primary", "second"))
D$chem97 <- prep(Chem97, c("score", "gcsecnt", "gender", "school", "lea"))
D$egsingle <- prep(egsingle, c("math", "year", "retained", "female", "childid", "schoolid"))
px <- gd("Pixel", "nlme")
px$day2 <- px$day^2
D$pixel <- prep(px, c("pixel", "day", "day2", "Side", "Dog"))
D$oxide <- prep(gd("Oxide", "nlme"), c("Thickness", "Source", "Lot", "Wafer"))
D$alfalfa <- prep(gd("Alfalfa", "nlme"), c("Yield", "Date", "Variety", "Block"))
D$assay <- prep(gd("Assay", "nlme"), c("logDens", "sample", "dilut", "Block"))
wf <- gd("Wafer", "nlme")
wf$voltage2 <- wf$voltage^2
D$wafer <- prep(wf, c("current", "voltage", "voltage2", "Wafer", "Site"))
D$insteval <- prep(InstEval, c("y", "service", "s", "d", "dept"))

M <- function(id, data, formula) list(id = id, data = data, formula = formula)
models <- list(
  # crossed
  M("penicillin_crossed", "penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  # nested, written three ways (the inner factor's labels a, b, c repeat across batches)
  M("pastes_nested", "pastes", "strength ~ 1 + (1 | batch/cask)"),
  M("pastes_nested_colon", "pastes", "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
  M("pastes_nested_sample", "pastes", "strength ~ 1 + (1 | sample) + (1 | batch)"),
  # the same labels taken as a factor of their own: 3 "casks" crossed with the batches (what
  # `(1 | cask)` means with repeated labels; not the nested model)
  M("pastes_cask_crossed", "pastes", "strength ~ 1 + (1 | batch) + (1 | cask)"),
  M("machines_nested_colon", "machines", "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)"),
  M("machines_nested", "machines", "score ~ Machine + (1 | Worker/Machine)"),
  M("machines_nested_ww", "machines", "score ~ Machine + (1 | Worker) + (1 | ww)"),
  M("oats_nested", "oats", "yld ~ nitro + (1 | Block/Variety)"),
  M("oats_splitplot", "oats", "yld ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)"),
  # one grouping factor given as an interaction (lme4's cake example, temperature as a factor)
  M("cake_rr", "cake", "angle ~ recipe * temperature + (1 | recipe:replicate)"),
  M("cake_rep_rr", "cake", "angle ~ recipe + temp + (1 | replicate) + (1 | replicate:recipe)"),
  # partially crossed (pupils of a primary school go to several secondary schools)
  M("scots_crossed", "scotssec", "attain ~ verbal + sex + (1 | primary) + (1 | second)"),
  # slopes with a second factor
  M("scots_slope_crossed", "scotssec", "attain ~ verbal + (1 + verbal | primary) + (1 | second)"),
  M("scots_uncorr_crossed", "scotssec",
    "attain ~ verbal + (1 | primary) + (0 + verbal | primary) + (1 | second)"),
  M("scots_dbar_crossed", "scotssec", "attain ~ verbal + sex + (verbal || primary) + (1 | second)"),
  M("chem_nested", "chem97", "score ~ gcsecnt + gender + (1 | school) + (1 | lea)"),
  M("chem_slope_nested", "chem97", "score ~ gcsecnt + (1 + gcsecnt | school) + (1 | lea)"),
  M("eg_slope_nested", "egsingle", "math ~ year + (1 + year | childid) + (1 | schoolid)"),
  M("eg_slopes_nested", "egsingle",
    "math ~ year + retained + female + (1 + year | childid) + (1 + year | schoolid)"),
  M("pixel_nested_slope", "pixel", "pixel ~ day + day2 + Side + (1 + day | Dog) + (1 | Dog:Side)"),
  M("wafer_nested_slope", "wafer",
    "current ~ voltage + voltage2 + (1 + voltage | Wafer) + (1 | Wafer:Site)"),
  M("oxide_nested", "oxide", "Thickness ~ Source + (1 | Lot/Wafer)"),
  M("alfalfa_splitplot", "alfalfa", "Yield ~ Date + Variety + (1 | Block/Variety)"),
  M("assay_blocked", "assay",
    "logDens ~ sample + dilut + (1 | Block) + (1 | Block:sample) + (1 | Block:dilut)"),
  # big: 73,421 rows, 2972 students x 1128 lecturers crossed, plus dept:service
  M("insteval", "insteval", "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)")
)
TIMED <- c("insteval")  # default control timed 3 times (median)
RANEF_MAX <- 1000

controls <- list(
  default = lmerControl(),
  tight = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6)),
  tight_nlopt = lmerControl(optimizer = "nloptwrap",
                            optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 1e-15,
                                           ftol_rel = 1e-15, maxeval = 1e6))
)

# write each data set, read it back (factors with R's level order) and keep what was read
used <- unique(vapply(models, function(m) m$data, ""))
stopifnot(all(used %in% names(D)))
R <- list()
level_order <- list()
csv_name <- list()
for (name in used) {
  df <- D[[name]]
  is_f <- vapply(df, is.factor, TRUE)
  file <- file.path(outdir, paste0(name, ".csv"))
  write.csv(df, file, row.names = FALSE)
  if (file.size(file) > 1e6) {
    unlink(file)
    file <- paste0(file, ".gz")
    con <- gzfile(file, "w")
    write.csv(df, con, row.names = FALSE)
    close(con)
  }
  csv_name[[name]] <- basename(file)
  back <- read.csv(file, colClasses = ifelse(is_f, "character", NA))
  for (c in names(df)[is_f]) back[[c]] <- factor(back[[c]], levels = levels(df[[c]]))
  stopifnot(identical(dim(back), dim(df)), !anyNA(back))
  R[[name]] <- back
  level_order[[name]] <- lapply(df[is_f], levels)
}

# {factor: {column: {level: value}}} from ranef(condVar = TRUE): modes and conditional sds
ranef_json <- function(fit) {
  r <- ranef(fit, condVar = TRUE)
  modes <- list(); sds <- list()
  for (g in names(r)) {
    df <- r[[g]]
    pv <- attr(df, "postVar")
    # one term: an array k x k x n; several terms on the factor: a list of such arrays
    blocks <- if (is.list(pv)) pv else list(pv)
    dvar <- do.call(cbind, lapply(blocks, function(a) {
      k <- dim(a)[1]; n <- dim(a)[3]
      matrix(a[cbind(rep(1:k, each = n), rep(1:k, each = n), rep(1:n, k))], n, k)
    }))
    stopifnot(identical(dim(dvar), dim(as.matrix(df))))
    modes[[g]] <- lapply(setNames(seq_along(df), names(df)),
                         function(j) as.list(setNames(df[[j]], rownames(df))))
    sds[[g]] <- lapply(setNames(seq_along(df), names(df)),
                       function(j) as.list(setNames(sqrt(dvar[, j]), rownames(df))))
  }
  list(modes = modes, sds = sds)
}

fit_once <- function(f, df, reml, cname) {
  warns <- character(); msgs <- character()
  t0 <- proc.time()[["elapsed"]]
  fit <- withCallingHandlers(
    lmer(f, data = df, REML = reml, control = controls[[cname]]),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(w) { msgs <<- c(msgs, trimws(conditionMessage(w))); invokeRestart("muffleMessage") })
  list(fit = fit, seconds = proc.time()[["elapsed"]] - t0, warns = warns, msgs = msgs)
}

one_fit <- function(m, reml, cname) {
  df <- R[[m$data]]
  f <- as.formula(m$formula)
  nrun <- if (m$id %in% TIMED && cname == "default") 3 else 1
  runs <- lapply(seq_len(nrun), function(i) fit_once(f, df, reml, cname))
  secs <- vapply(runs, function(r) r$seconds, 0)
  r1 <- runs[[1]]
  fit <- r1$fit
  vc <- VarCorr(fit)
  variances <- list(); correlations <- list()
  for (g in names(vc)) {
    v <- as.matrix(vc[[g]])
    variances[[g]] <- as.list(setNames(diag(v), colnames(v)))
    if (ncol(v) > 1) {
      cr <- attr(vc[[g]], "correlation")
      cc <- list()
      for (j in 1:(ncol(v) - 1)) for (i in (j + 1):ncol(v))
        cc[[paste(colnames(v)[j], colnames(v)[i], sep = ":")]] <- cr[i, j]
      correlations[[g]] <- cc
    }
  }
  fe <- fixef(fit)
  se <- sqrt(diag(as.matrix(vcov(fit))))
  flist <- getME(fit, "flist")
  cnms <- getME(fit, "cnms")
  asg <- attr(flist, "assign")
  terms <- lapply(seq_along(cnms), function(k)
    list(factor = names(cnms)[k], columns = I(cnms[[k]]), nlevels = nlevels(flist[[asg[k]]])))
  nlev <- lapply(flist, nlevels)
  # factor columns used by the fixed-effect terms
  fixed_vars <- all.vars(lme4::nobars(f)[[3]])
  lev <- level_order[[m$data]]
  lev <- lev[names(lev) %in% fixed_vars]
  conv <- fit@optinfo$conv
  lme4_msgs <- unlist(conv$lme4$messages)
  method <- if (reml) "reml" else "ml"
  q <- sum(vapply(terms, function(t) length(t$columns) * t$nlevels, 0))
  rj <- if (q <= RANEF_MAX) ranef_json(fit) else NULL
  list(
    id = paste(m$id, method, cname, sep = "."),
    model = m$id,
    data = csv_name[[m$data]],
    formula = m$formula,
    levels = if (length(lev)) lev else setNames(list(), character()),
    factor_columns = I(names(level_order[[m$data]])),
    method = method,
    control = cname,
    objective = if (reml) REMLcrit(fit) else deviance(fit),
    loglik = as.numeric(logLik(fit)),
    theta = I(unname(getME(fit, "theta"))),
    fixed_effects = as.list(fe),
    se = as.list(setNames(unname(se), names(fe))),
    sigma2 = sigma(fit)^2,
    variances = variances,
    correlations = if (length(correlations)) correlations else setNames(list(), character()),
    terms = terms,
    flist = nlev,
    singular = isSingular(fit),
    converged = (is.null(conv$opt) || conv$opt == 0) &&
      !any(!grepl("singular", lme4_msgs)),
    optimizer_code = if (is.null(conv$opt)) 0L else conv$opt,
    messages = if (length(lme4_msgs)) as.list(lme4_msgs) else list(),
    warnings = as.list(unique(c(r1$warns, r1$msgs, unlist(fit@optinfo$warnings)))),
    feval = fit@optinfo$feval,
    nobs = nobs(fit),
    nrow = nrow(df),
    ngroups = nlev,
    q = q,
    ranef = if (is.null(rj)) NULL else rj$modes,
    ranef_sd = if (is.null(rj)) NULL else rj$sds,
    seconds = median(secs),
    seconds_runs = I(secs),
    lme4_version = as.character(packageVersion("lme4")),
    r_version = R.version.string
  )
}

out <- list()
t_all <- proc.time()[["elapsed"]]
only <- Sys.getenv("CROSSED_ONLY")  # comma-separated model ids, for trying a few
for (m in models) {
  if (nzchar(only) && !(m$id %in% strsplit(only, ",")[[1]])) next
  for (reml in c(FALSE, TRUE)) {
    for (cname in names(controls)) {
      e <- tryCatch(one_fit(m, reml, cname), error = function(err) {
        message("FAILED ", m$id, " reml=", reml, " ", cname, ": ", conditionMessage(err)); NULL })
      if (!is.null(e)) {
        out[[length(out) + 1]] <- e
        message(sprintf("%-28s %-5s %-12s %.10f  %.2f s", m$id, e$method, cname, e$objective,
                        e$seconds))
      }
    }
  }
}
message(sprintf("%d models, %d fits, %.1f s", length(models), length(out),
                proc.time()[["elapsed"]] - t_all))
cat(toJSON(out, digits = I(15), auto_unbox = TRUE, pretty = TRUE, null = "null"), "\n")
