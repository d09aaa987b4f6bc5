# lme4 reference battery for the general LMM with ONE grouping factor: run with
#   Rscript tests/reference/lme4_battery.R > tests/reference/lme4_battery.json
# (Debian packages r-base-core r-cran-lme4 r-cran-mlmrev r-cran-jsonlite; nlme, MASS and
# datasets come with R). It writes every data set it uses to tests/reference/battery_data/NAME.csv
# (only the columns the models use; factors as strings), reads the CSV back and fits on what
# was read, so R and Python see the same numbers.
#
# Every model (formula x data) is fitted by ML and by REML, each with three controls:
#   default      lmerControl()                      (nloptwrap BOBYQA, xtol_abs = ftol_abs = 1e-8)
#   tight        minqa::bobyqa, rhoend 1e-12, maxfun 1e6
#   tight_nlopt  nloptwrap BOBYQA, xtol_abs 1e-12, ftol_abs 1e-14, relative tolerances 1e-15
# The output is one JSON list, one entry per fit: id "<model>.<method>.<control>", data (CSV
# name), formula (lme4 syntax, as workbench.model.design.from_frame takes it), levels (R's level
# order of every factor column the fixed or random-effect terms use: the first level is the
# reference of the treatment contrasts; the grouping factor's order does not matter), method,
# control, objective (ML deviance = -2 logLik, or the REML criterion), theta, fixed_effects and
# se (lme4's names), sigma2, variances / correlations (VarCorr, keyed by lme4's term names,
# correlations "term1:term2"), singular (isSingular), converged, messages (lme4's convergence
# messages), warnings, feval, seconds, versions.
#
# Ordered factors are made plain factors first (lme4 would use polynomial contrasts for them).
# Shifted and most squared covariates are written into the data as columns (DaysU, Days2, ...);
# two models use I(x^2) in the formula (lme4 names the column "I(Days^2)"). The column `yield`
# (oats, Gasoline, npk) is renamed `yld`: our parser refused Python keywords as column names.
suppressMessages({
  library(lme4); library(jsonlite); library(mlmRev); library(nlme); library(MASS)
})
args <- commandArgs(trailingOnly = FALSE)
here <- dirname(normalizePath(sub("--file=", "", args[grep("--file=", args)])))
outdir <- file.path(here, "battery_data")
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
ss <- sleepstudy
ss$DaysU <- ss$Days + 18800
ss$Days2 <- ss$Days^2
ss$half <- factor(ifelse(ss$Days < 5, "first", "second"), levels = c("first", "second"))
D$sleepstudy <- prep(ss, c("Reaction", "Days", "DaysU", "Days2", "half", "Subject"))
sst <- sleepstudy[sleepstudy$Subject %in% levels(sleepstudy$Subject)[1:3] & sleepstudy$Days <= 4, ]
D$sleepstudy_tiny <- prep(sst, c("Reaction", "Days", "Subject"))
D$dyestuff <- prep(Dyestuff, c("Yield", "Batch"))
D$dyestuff2 <- prep(Dyestuff2, c("Yield", "Batch"))
D$penicillin <- prep(Penicillin, c("diameter", "sample", "plate"))
D$pastes <- prep(Pastes, c("strength", "batch", "sample"))
ck <- cake
ck$rr <- combine(ck$recipe, ck$replicate)
D$cake <- prep(ck, c("angle", "recipe", "temp", "replicate", "rr"))
D$exam <- prep(Exam, c("normexam", "standLRT", "sex", "schgend", "school"))
D$hsb82 <- prep(Hsb82, c("mAch", "ses", "cses", "meanses", "sector", "sx", "school"))
ch <- Chem97
ch$ageU <- ch$age + 222  # age in months (mlmRev centres it at 18.5 years)
D$chem97 <- prep(ch, c("score", "gcsecnt", "gender", "ageU", "school"))
D$scotssec <- prep(ScotsSec, c("attain", "verbal", "sex", "social", "primary"))
D$gcsemv <- prep(Gcsemv, c("written", "course", "gender", "school"))
mm <- Mmmec
mm$lrate <- log((mm$deaths + 0.5) / mm$expected)
D$mmmec <- prep(mm, c("lrate", "uvb", "nation", "region"))
ox <- Oxboys
ox$age2 <- ox$age^2
ox$ageU <- ox$age + 13
D$oxboys <- prep(ox, c("height", "age", "age2", "ageU", "Subject"))
D$early <- prep(Early, c("cog", "age", "trt", "id"))
D$egsingle <- prep(egsingle, c("math", "year", "retained", "female", "size", "lowinc",
                               "childid", "schoolid"))
bd <- bdf
bd$IQverb <- bd$IQ.verb
D$bdf <- prep(bd, c("langPOST", "IQverb", "sex", "Minority", "schoolNR"))
orth <- gd("Orthodont", "nlme")
D$orthodont <- prep(orth, c("distance", "age", "Sex", "Subject"))
D$orthodont_tiny <- prep(orth[orth$Subject %in% c("M01", "M02", "M03", "M04"), ],
                         c("distance", "age", "Subject"))
D$orthodont_female <- prep(orth[orth$Sex == "Female", ], c("distance", "age", "Subject"))
oa <- gd("Oats", "nlme")
oa$plot <- combine(oa$Block, oa$Variety)
D$oats <- prep(rename(oa, "yield", "yld"), c("yld", "nitro", "Variety", "Block", "plot"))
rail <- gd("Rail", "nlme")
D$rail <- prep(rail, c("travel", "Rail"))
D$rail_tiny <- prep(rail[as.character(rail$Rail) %in% c("1", "2", "3"), ], c("travel", "Rail"))
mach <- gd("Machines", "nlme")
mach$ww <- combine(mach$Worker, mach$Machine)
D$machines <- prep(mach, c("score", "Machine", "Worker", "ww"))
D$ergostool <- prep(gd("ergoStool", "nlme"), c("effort", "Type", "Subject"))
px <- gd("Pixel", "nlme")
px$day2 <- px$day^2
px$ds <- combine(px$Dog, px$Side)
D$pixel <- prep(px, c("pixel", "day", "day2", "Side", "Dog", "ds"))
D$bodyweight <- prep(gd("BodyWeight", "nlme"), c("weight", "Time", "Diet", "Rat"))
D$orange <- prep(gd("Orange", "datasets"), c("circumference", "age", "Tree"))
D$loblolly <- prep(gd("Loblolly", "datasets"), c("height", "age", "Seed"))
cw <- gd("ChickWeight", "datasets")
cw$Time2 <- cw$Time^2
D$chickweight <- prep(cw, c("weight", "Time", "Time2", "Diet", "Chick"))
dia <- gd("Dialyzer", "nlme")
dia$pressure2 <- dia$pressure^2
D$dialyzer <- prep(dia, c("rate", "pressure", "pressure2", "QB", "Subject"))
wf <- gd("Wafer", "nlme")
wf$voltage2 <- wf$voltage^2
wf$ws <- combine(wf$Wafer, wf$Site)
D$wafer <- prep(wf, c("current", "voltage", "voltage2", "Wafer", "ws"))
D$igf <- prep(gd("IGF", "nlme"), c("conc", "age", "Lot"))
D$gasoline <- prep(rename(gd("Gasoline", "nlme"), "yield", "yld"),
                   c("yld", "endpoint", "Sample"))
D$spruce <- prep(gd("Spruce", "nlme"), c("logSize", "days", "plot", "Tree"))
D$milk <- prep(gd("Milk", "nlme"), c("protein", "Time", "Diet", "Cow"))
D$alfalfa <- prep(gd("Alfalfa", "nlme"), c("Yield", "Date", "Variety", "Block"))
D$assay <- prep(gd("Assay", "nlme"), c("logDens", "sample", "dilut", "Block"))
D$fatigue <- prep(gd("Fatigue", "nlme"), c("relLength", "cycles", "Path"))
oxd <- gd("Oxide", "nlme")
oxd$lw <- combine(oxd$Lot, oxd$Wafer)
D$oxide <- prep(oxd, c("Thickness", "Source", "Lot", "lw"))
D$ratpupweight <- prep(gd("RatPupWeight", "nlme"), c("weight", "sex", "Lsize", "Treatment",
                                                     "Litter"))
mo <- gd("oats", "MASS")
mo$BV <- combine(mo$B, mo$V)
D$mass_oats <- prep(mo, c("Y", "N", "V", "B", "BV"))
D$petrol <- prep(gd("petrol", "MASS"), c("Y", "SG", "VP", "V10", "EP", "No"))
sk <- gd("Sitka", "MASS")
sk$tree <- factor(sk$tree)
D$sitka <- prep(sk, c("size", "Time", "treat", "tree"))
D$rabbit <- prep(gd("Rabbit", "MASS"), c("BPchange", "Dose", "Treatment", "Animal"))
D$co2 <- prep(gd("CO2", "datasets"), c("uptake", "conc", "Type", "Treatment", "Plant"))
D$insectsprays <- prep(gd("InsectSprays", "datasets"), c("count", "spray"))
D$warpbreaks <- prep(gd("warpbreaks", "datasets"), c("breaks", "tension", "wool"))
D$plantgrowth <- prep(gd("PlantGrowth", "datasets"), c("weight", "group"))
D$npk <- prep(rename(gd("npk", "datasets"), "yield", "yld"), c("yld", "N", "P", "K", "block"))

M <- function(id, data, formula) list(id = id, data = data, formula = formula)
models <- list(
  M("sleep_int", "sleepstudy", "Reaction ~ Days + (1 | Subject)"),
  M("sleep_slope", "sleepstudy", "Reaction ~ Days + (Days | Subject)"),
  M("sleep_uncorr", "sleepstudy", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"),
  M("sleep_dbar", "sleepstudy", "Reaction ~ Days + (Days || Subject)"),
  M("sleep_uncentred_int", "sleepstudy", "Reaction ~ DaysU + (1 | Subject)"),
  M("sleep_uncentred_slope", "sleepstudy", "Reaction ~ DaysU + (DaysU | Subject)"),
  M("sleep_uncentred_dbar", "sleepstudy", "Reaction ~ DaysU + (DaysU || Subject)"),
  M("sleep_quad3", "sleepstudy", "Reaction ~ Days + Days2 + (Days + Days2 | Subject)"),
  M("sleep_quadI", "sleepstudy", "Reaction ~ Days + I(Days^2) + (Days | Subject)"),
  M("sleep_half", "sleepstudy", "Reaction ~ Days + (1 + half | Subject)"),
  M("sleep_half0", "sleepstudy", "Reaction ~ Days + (0 + half | Subject)"),
  M("sleep_dayshalf", "sleepstudy", "Reaction ~ Days * half + (Days | Subject)"),
  M("sleeptiny_slope", "sleepstudy_tiny", "Reaction ~ Days + (Days | Subject)"),
  M("sleeptiny_int", "sleepstudy_tiny", "Reaction ~ Days + (1 | Subject)"),
  M("dyestuff_int", "dyestuff", "Yield ~ 1 + (1 | Batch)"),
  M("dyestuff2_int", "dyestuff2", "Yield ~ 1 + (1 | Batch)"),
  M("penicillin_plate", "penicillin", "diameter ~ sample + (1 | plate)"),
  M("penicillin_sample", "penicillin", "diameter ~ 1 + (1 | sample)"),
  M("pastes_batch", "pastes", "strength ~ 1 + (1 | batch)"),
  M("pastes_sample", "pastes", "strength ~ 1 + (1 | sample)"),
  M("cake_rep", "cake", "angle ~ recipe * temp + (1 | replicate)"),
  M("cake_rr", "cake", "angle ~ recipe + temp + (1 | rr)"),
  M("cake_tempslope", "cake", "angle ~ recipe + temp + (temp | replicate)"),
  M("exam_int", "exam", "normexam ~ standLRT + (1 | school)"),
  M("exam_slope", "exam", "normexam ~ standLRT + sex + schgend + (standLRT | school)"),
  M("exam_sexslope", "exam", "normexam ~ standLRT * sex + (1 + sex | school)"),
  M("exam_three", "exam", "normexam ~ standLRT + sex + (1 + standLRT + sex | school)"),
  M("hsb_cross", "hsb82", "mAch ~ meanses * cses + sector + (cses | school)"),
  M("hsb_sx", "hsb82", "mAch ~ ses + sx + (1 + sx | school)"),
  M("hsb_sx0", "hsb82", "mAch ~ ses + (0 + sx | school)"),
  M("hsb_dbar", "hsb82", "mAch ~ ses + sector + (ses || school)"),
  M("chem_int", "chem97", "score ~ gcsecnt + gender + (1 | school)"),
  M("chem_slope", "chem97", "score ~ gcsecnt + (gcsecnt | school)"),
  M("chem_ageU", "chem97", "score ~ ageU + gcsecnt + (1 | school)"),
  M("scots_int", "scotssec", "attain ~ verbal + sex + social + (1 | primary)"),
  M("scots_slope", "scotssec", "attain ~ verbal + sex + (verbal | primary)"),
  M("gcse_written", "gcsemv", "written ~ gender + (1 | school)"),
  M("gcse_course", "gcsemv", "course ~ gender + (1 + gender | school)"),
  M("mmmec_region", "mmmec", "lrate ~ uvb + (1 | region)"),
  M("mmmec_nation", "mmmec", "lrate ~ uvb + (uvb | nation)"),
  M("oxboys_slope", "oxboys", "height ~ age + (age | Subject)"),
  M("oxboys_quad", "oxboys", "height ~ age + age2 + (age + age2 | Subject)"),
  M("oxboys_quadI", "oxboys", "height ~ age + I(age^2) + (age | Subject)"),
  M("oxboys_uncentred", "oxboys", "height ~ ageU + (ageU | Subject)"),
  M("early_slope", "early", "cog ~ age * trt + (age | id)"),
  M("early_int", "early", "cog ~ age + trt + (1 | id)"),
  M("eg_child", "egsingle", "math ~ year + (year | childid)"),
  M("eg_school", "egsingle", "math ~ year + retained + female + (year | schoolid)"),
  M("eg_size", "egsingle", "math ~ year + size + lowinc + (1 | schoolid)"),
  M("bdf_slope", "bdf", "langPOST ~ IQverb + sex + Minority + (IQverb | schoolNR)"),
  M("ortho_slope", "orthodont", "distance ~ age + (age | Subject)"),
  M("ortho_sex", "orthodont", "distance ~ age * Sex + (age | Subject)"),
  M("ortho_int", "orthodont", "distance ~ age + Sex + (1 | Subject)"),
  M("ortho_dbar", "orthodont", "distance ~ age * Sex + (age || Subject)"),
  M("orthotiny_slope", "orthodont_tiny", "distance ~ age + (age | Subject)"),
  M("orthofem_slope", "orthodont_female", "distance ~ age + (age | Subject)"),
  M("oats_block", "oats", "yld ~ nitro + Variety + (1 | Block)"),
  M("oats_plot", "oats", "yld ~ nitro + Variety + (1 | plot)"),
  M("oats_nslope", "oats", "yld ~ nitro + (nitro | Block)"),
  M("rail_int", "rail", "travel ~ 1 + (1 | Rail)"),
  M("railtiny_int", "rail_tiny", "travel ~ 1 + (1 | Rail)"),
  M("machines_int", "machines", "score ~ Machine + (1 | Worker)"),
  M("machines_cat0", "machines", "score ~ Machine + (0 + Machine | Worker)"),
  M("machines_cat1", "machines", "score ~ Machine + (1 + Machine | Worker)"),
  M("machines_ww", "machines", "score ~ Machine + (1 | ww)"),
  M("ergo_int", "ergostool", "effort ~ Type + (1 | Subject)"),
  M("pixel_dog", "pixel", "pixel ~ day + day2 + (day | Dog)"),
  M("pixel_ds", "pixel", "pixel ~ day + day2 + Side + (1 | ds)"),
  M("bodyweight_slope", "bodyweight", "weight ~ Time * Diet + (Time | Rat)"),
  M("orange_slope", "orange", "circumference ~ age + (age | Tree)"),
  M("orange_uncorr", "orange", "circumference ~ age + (1 | Tree) + (0 + age | Tree)"),
  M("orange_int", "orange", "circumference ~ age + (1 | Tree)"),
  M("loblolly_slope", "loblolly", "height ~ age + (age | Seed)"),
  M("chick_slope", "chickweight", "weight ~ Time * Diet + (Time | Chick)"),
  M("chick_quad", "chickweight", "weight ~ Time + Time2 + Diet + (Time + Time2 | Chick)"),
  M("dialyzer_slope", "dialyzer", "rate ~ pressure * QB + (pressure | Subject)"),
  M("dialyzer_quad", "dialyzer",
    "rate ~ (pressure + pressure2) * QB + (pressure + pressure2 | Subject)"),
  M("wafer_slope", "wafer", "current ~ voltage + voltage2 + (voltage | Wafer)"),
  M("wafer_site", "wafer", "current ~ voltage + voltage2 + (1 | ws)"),
  M("igf_slope", "igf", "conc ~ age + (age | Lot)"),
  M("gasoline_int", "gasoline", "yld ~ endpoint + (1 | Sample)"),
  M("spruce_slope", "spruce", "logSize ~ days + plot + (days | Tree)"),
  M("milk_slope", "milk", "protein ~ Time * Diet + (Time | Cow)"),
  M("alfalfa_int", "alfalfa", "Yield ~ Date + Variety + (1 | Block)"),
  M("assay_int", "assay", "logDens ~ sample + dilut + (1 | Block)"),
  M("fatigue_slope", "fatigue", "relLength ~ cycles + (cycles | Path)"),
  M("oxide_lot", "oxide", "Thickness ~ Source + (1 | Lot)"),
  M("oxide_wafer", "oxide", "Thickness ~ Source + (1 | lw)"),
  M("ratpup_int", "ratpupweight", "weight ~ sex + Lsize + Treatment + (1 | Litter)"),
  M("massoats_int", "mass_oats", "Y ~ N + V + (1 | B)"),
  M("massoats_nslope", "mass_oats", "Y ~ N + (1 + N | B)"),
  M("massoats_bv", "mass_oats", "Y ~ N + V + (1 | BV)"),
  M("petrol_int", "petrol", "Y ~ SG + VP + V10 + EP + (1 | No)"),
  M("sitka_slope", "sitka", "size ~ Time + treat + (Time | tree)"),
  M("rabbit_slope", "rabbit", "BPchange ~ Dose + Treatment + (Dose | Animal)"),
  M("co2_int", "co2", "uptake ~ conc + Type * Treatment + (1 | Plant)"),
  M("co2_slope", "co2", "uptake ~ conc + (conc | Plant)"),
  M("insectsprays_int", "insectsprays", "count ~ 1 + (1 | spray)"),
  M("warpbreaks_int", "warpbreaks", "breaks ~ tension + (1 | wool)"),
  M("plantgrowth_int", "plantgrowth", "weight ~ 1 + (1 | group)"),
  M("npk_int", "npk", "yld ~ N * P + K + (1 | block)")
)

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
for (name in used) {
  df <- D[[name]]
  file <- file.path(outdir, paste0(name, ".csv"))
  is_f <- vapply(df, is.factor, TRUE)
  write.csv(df, file, row.names = FALSE)
  back <- read.csv(file, colClasses = ifelse(is_f, "character", NA))
  for (c in names(df)[is_f]) back[[c]] <- factor(back[[c]], levels = levels(df[[c]]))
  stopifnot(identical(dim(back), dim(df)), !anyNA(back))
  R[[name]] <- back
  level_order[[name]] <- lapply(df[is_f], levels)
}

one_fit <- function(m, reml, cname) {
  df <- R[[m$data]]
  f <- as.formula(m$formula)
  warns <- character(); msgs <- character()
  t0 <- proc.time()[["elapsed"]]
  fit <- withCallingHandlers(
    lmer(f, data = df, REML = reml, control = controls[[cname]]),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(w) { msgs <<- c(msgs, trimws(conditionMessage(w))); invokeRestart("muffleMessage") })
  elapsed <- proc.time()[["elapsed"]] - t0
  vc <- as.data.frame(VarCorr(fit))
  var_rows <- vc[is.na(vc$var2) & vc$grp != "Residual", ]
  cor_rows <- vc[!is.na(vc$var2), ]
  fe <- fixef(fit)
  se <- sqrt(diag(as.matrix(vcov(fit))))
  vars_f <- all.vars(f)
  grp <- names(getME(fit, "flist"))[1]
  lev <- level_order[[m$data]]
  lev <- lev[names(lev) %in% setdiff(vars_f, grp)]
  conv <- fit@optinfo$conv
  lme4_msgs <- unlist(conv$lme4$messages)
  method <- if (reml) "reml" else "ml"
  list(
    id = paste(m$id, method, cname, sep = "."),
    model = m$id,
    data = paste0(m$data, ".csv"),
    formula = m$formula,
    levels = if (length(lev)) lev else setNames(list(), character()),
    method = method,
    control = cname,
    objective = if (reml) REMLcrit(fit) else deviance(fit),
    loglik = as.numeric(logLik(fit)),
    theta = I(unname(getME(fit, "theta"))),
    fixed_effects = as.list(fe),
    se = as.list(setNames(unname(se), names(fe))),
    sigma2 = sigma(fit)^2,
    variances = setNames(as.list(var_rows$vcov), var_rows$var1),
    correlations = setNames(as.list(cor_rows$sdcor), paste(cor_rows$var1, cor_rows$var2, sep = ":")),
    singular = isSingular(fit),
    # converged: optimiser code 0 and no lme4 convergence message other than the singular one
    converged = (is.null(conv$opt) || conv$opt == 0) &&
      !any(!grepl("singular", lme4_msgs)),
    optimizer_code = if (is.null(conv$opt)) 0L else conv$opt,
    messages = if (length(lme4_msgs)) as.list(lme4_msgs) else list(),
    warnings = as.list(unique(c(warns, msgs, unlist(fit@optinfo$warnings)))),
    feval = fit@optinfo$feval,
    nobs = nobs(fit),
    ngroups = unname(ngrps(fit)[1]),
    seconds = elapsed,
    lme4_version = as.character(packageVersion("lme4")),
    r_version = R.version.string
  )
}

out <- list()
t_all <- proc.time()[["elapsed"]]
for (m in models) {
  for (reml in c(FALSE, TRUE)) {
    for (cname in names(controls)) {
      e <- tryCatch(one_fit(m, reml, cname), error = function(err) {
        message("FAILED ", m$id, " reml=", reml, " ", cname, ": ", conditionMessage(err)); NULL })
      if (!is.null(e)) out[[length(out) + 1]] <- e
    }
  }
}
message(sprintf("%d models, %d fits, %.1f s", length(models), length(out),
                proc.time()[["elapsed"]] - t_all))
cat(toJSON(out, digits = I(15), auto_unbox = TRUE, pretty = TRUE, null = "null"), "\n")
