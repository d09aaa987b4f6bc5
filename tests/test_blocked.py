"""The blocked penalised least squares (several random-effect terms) against lme4 at lme4's own
theta, and against a dense brute-force GLS computation on small random crossed designs.

The lme4 numbers below come from lme4 1.1-31 (R 4.2), data from lme4 (Penicillin, Pastes) and
nlme (Machines, Worker recoded to a factor with sorted levels), written to
tests/reference/blocked_data/ with write.csv, and for each model and REML in (FALSE, TRUE):

    fit <- lmer(formula, data = d, REML = reml,
                control = lmerControl(check.conv.singular = "ignore"))
    list(theta = getME(fit, "theta"),
         objective = if (reml) fit@devcomp$cmp[["REML"]] else fit@devcomp$cmp[["dev"]],
         beta = fixef(fit), ranef = ranef(fit))   # jsonlite::toJSON(digits = NA)

with the formulas of MODELS. lme4's theta lists the terms by number of levels (descending);
its ranef levels are in sorted label order here, as are the codes built below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench.objectives import blocked

DATA = Path(__file__).parent / "reference" / "blocked_data"

LME4 = {
    "penicillin_ml": {
        "theta": [1.53759428033522, 3.2197562243559],
        "objective": 332.188348668514,
        "beta": [22.9722222222258],
        "ranef": {
            "plate": [
                0.804403763566738,
                0.804403763566738,
                0.181639559515189,
                0.337330610528075,
                0.0259485085022943,
                -0.441124644536369,
                -1.3752709506137,
                0.804403763566738,
                -0.752506746562142,
                -0.752506746562144,
                0.960094814579627,
                0.493021661540961,
                1.42716796761829,
                0.493021661540961,
                0.960094814579627,
                0.0259485085022999,
                -0.28543359352348,
                -0.28543359352348,
                -1.37527095061369,
                0.960094814579627,
                -0.908197797575033,
                -0.28543359352348,
                -0.596815695549255,
                -1.21957989960081,
            ],
            "sample": [
                2.18565977679412,
                -1.00983015004318,
                1.93666056171588,
                -0.0968330280896698,
                -0.0138332897302643,
                -3.00182387066904,
            ],
        },
    },
    "penicillin_reml": {
        "theta": [1.53967555415216, 3.51251886000646],
        "objective": 330.860588999606,
        "beta": [22.9722222222137],
        "ranef": {
            "plate": [
                0.804546905830452,
                0.804546905830452,
                0.181671881961789,
                0.337390637928955,
                0.0259531259946238,
                -0.441203141906876,
                -1.37551567770987,
                0.804546905830458,
                -0.752640653841207,
                -0.75264065384121,
                0.960265661797623,
                0.493109393896126,
                1.42742192969912,
                0.493109393896121,
                0.96026566179762,
                0.0259531259946238,
                -0.285484385939705,
                -0.285484385939708,
                -1.37551567770987,
                0.960265661797623,
                -0.908359409808373,
                -0.285484385939705,
                -0.596921897874042,
                -1.21979692174271,
            ],
            "sample": [
                2.18705840183886,
                -1.01047635020445,
                1.93789984973159,
                -0.0968949924777908,
                -0.0138421417753692,
                -3.00374476706262,
            ],
        },
    },
    "pastes_ml": {
        "theta": [3.52688587143094, 1.32992302095371],
        "objective": 247.994465862897,
        "beta": [60.0533333333338],
        "ranef": {
            "batch:cask": [
                1.92557513665277,
                0.483539771338957,
                2.11784651869461,
                0.832298628895284,
                -2.53245055683691,
                0.159348791748844,
                -2.43608976792418,
                2.75523754720551,
                3.76466230292517,
                -3.0768954108348,
                -2.1155385006256,
                4.46975633430743,
                -3.60070899084471,
                -4.22559098248069,
                -0.66857041470665,
                3.66436491003428,
                -1.57503025060585,
                -0.0849270397815893,
                2.44305754617671,
                -0.152606111388132,
                -2.6040662324216,
                -1.58068612741631,
                4.47586240690165,
                3.37030196016107,
                -4.66729601454991,
                4.17718755937474,
                -2.31197158453737,
                -0.793909812612245,
                -0.40936704852856,
                -1.8033345683319,
            ],
            "batch": [
                0.643690335811324,
                -0.219087373333586,
                0.580678480649023,
                -0.102757794572456,
                -1.20788879280294,
                0.285007467964511,
                -0.044593005191904,
                0.890890690678568,
                -0.398428807256993,
                -0.427511201947201,
            ],
        },
    },
    "pastes_reml": {
        "theta": [3.52690220896523, 1.56346001183544],
        "objective": 246.990745853486,
        "beta": [60.053333333334],
        "ranef": {
            "batch:cask": [
                1.77468728827231,
                0.332651406696707,
                1.96695873914905,
                0.883655567727732,
                -2.48109482261535,
                0.21070548965912,
                -2.57220846252814,
                2.61912071114404,
                3.62854582824696,
                -3.05280888437644,
                -2.09145162999271,
                4.4938455625359,
                -3.31756702986896,
                -3.94244924521838,
                -0.385427403998564,
                3.59755714043492,
                -1.64183989595645,
                -0.151736151661655,
                2.45351154240506,
                -0.142153044431033,
                -2.59361404310957,
                -1.78952188337045,
                4.26702881924709,
                3.16146797670579,
                -4.57390131648333,
                4.27058542384705,
                -2.21857604324317,
                -0.693696474626249,
                -0.309153572872751,
                -1.70312159172918,
            ],
            "batch": [
                0.800643993846102,
                -0.272508347303331,
                0.722267699267623,
                -0.12781364962033,
                -1.50241327760957,
                0.354502009323259,
                -0.0554663007788569,
                1.10812022642266,
                -0.495579339564641,
                -0.531753013985415,
            ],
        },
    },
    "machines_ml": {
        "theta": [3.53277617677313, 4.53888080675918],
        "objective": 225.269446939773,
        "beta": [52.3555555555606, 7.96666666666282, 13.9166666666638],
        "ranef": {
            "Worker:Machine": [
                -0.746822032046979,
                1.49334683100646,
                -0.113730831617074,
                1.54568444927078,
                0.604164202485521,
                -2.98335259993557,
                1.76973455790292,
                2.28919400441094,
                -0.811329566912381,
                -1.03476555267283,
                2.40665328042175,
                -1.40812702984496,
                -3.44161252425284,
                2.14257652567187,
                2.84060015691104,
                1.9077811017815,
                -8.9359348439915,
                2.47593987139836,
            ],
            "Worker": [
                1.04454616833487,
                -1.37585596622535,
                5.36077659080174,
                -0.0598198246207406,
                2.54464330876609,
                -7.51429027706902,
            ],
        },
    },
    "machines_reml": {
        "theta": [3.87856597711476, 4.97209518479132],
        "objective": 215.687568008221,
        "beta": [52.3555555555517, 7.96666666666814, 13.9166666666684],
        "ranef": {
            "Worker:Machine": [
                -0.750146468775291,
                1.49999424509396,
                -0.114237136596135,
                1.55256494343844,
                0.60685362891163,
                -2.9966325867801,
                1.77761209206475,
                2.29938385180143,
                -0.814941339135819,
                -1.03937168842376,
                2.41736621983993,
                -1.41439514073724,
                -3.45693257228102,
                2.15211384490248,
                2.85324464705034,
                1.91627369398704,
                -8.97571179054795,
                2.48696155619893,
            ],
            "Worker": [
                1.04454621477209,
                -1.37585602738265,
                5.3607768291095,
                -0.0598198272754997,
                2.54464342188727,
                -7.51429061109783,
            ],
        },
    },
    "machines_slopes_ml": {
        "theta": [
            3.86543424109174,
            2.71981452122271,
            -1.26679532778977,
            4.86072811776004,
            1.89020618087956,
            2.64234850071524,
        ],
        "objective": 216.417827348979,
        "beta": [52.3555555555508, 7.9666666666632, 13.9166666666682],
        "ranef": {
            "Worker": [
                [0.318829775495998, 2.22948368294391, 0.611969578754911],
                [0.178446832932645, -0.991329588726121, -4.42939608967384],
                [6.92751356901091, 0.865486698082499, -2.46487391887599],
                [-1.00419991982267, 3.31612303837932, -0.392234389791565],
                [-0.821781475297397, 5.54421847394322, 6.11736270336],
                [-5.59880878229143, -10.9639823046015, 0.55717211621783],
            ],
        },
    },
    "machines_slopes_reml": {
        "theta": [
            4.24217693383095,
            2.95804663872493,
            -1.4017197264821,
            5.34993766439767,
            2.07526243813258,
            2.9078981500442,
        ],
        "objective": 208.311219417004,
        "beta": [52.3555555555544, 7.96666666666508, 13.9166666666665],
        "ranef": {
            "Worker": [
                [0.311973924118065, 2.24126254364791, 0.618311601260772],
                [0.183903614715943, -0.987216750509566, -4.46618607580561],
                [6.96925042501624, 0.810091157590534, -2.49578806083532],
                [-1.02389537056367, 3.35238139013273, -0.390740722789368],
                [-0.849679636452201, 5.57579785699178, 6.17284361200242],
                [-5.59155295682726, -10.9923161978441, 0.561559646168062],
            ],
        },
    },
}


def _codes(*labels) -> tuple[np.ndarray, list[str]]:
    """Integer codes of a factor (or an interaction a:b) in sorted label order, and the labels."""
    joined = np.array([":".join(map(str, row)) for row in zip(*labels, strict=True)])
    levels, codes = np.unique(joined, return_inverse=True)
    return codes, list(levels)


def _model(name: str):
    """(y, X, terms, ranef names in the user's order of terms) for each reference model."""
    import csv

    with open(DATA / f"{name.split('_')[0]}.csv") as fh:
        rows = list(csv.DictReader(fh))
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    if name == "penicillin":
        y, X = col["diameter"].astype(float), np.ones((len(rows), 1))
        terms = [(_codes(col["plate"])[0], None), (_codes(col["sample"])[0], None)]
        return y, X, terms, ["plate", "sample"]
    if name == "pastes":
        y, X = col["strength"].astype(float), np.ones((len(rows), 1))
        terms = [
            (_codes(col["batch"])[0], None),
            (_codes(col["batch"], col["cask"])[0], None),
        ]
        return y, X, terms, ["batch", "batch:cask"]
    y = col["score"].astype(float)
    m = col["Machine"]
    X = np.column_stack([np.ones(len(rows)), m == "B", m == "C"]).astype(float)
    worker = _codes(col["Worker"])[0]
    if name == "machines":
        terms = [(worker, None), (_codes(col["Worker"], m)[0], None)]
        return y, X, terms, ["Worker", "Worker:Machine"]
    return y, X, [(worker, X)], ["Worker"]  # (Machine | Worker): q = 3


MODELS = {
    "penicillin": "diameter ~ 1 + (1 | plate) + (1 | sample)",
    "pastes": "strength ~ 1 + (1 | batch) + (1 | batch:cask)",
    "machines": "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)",
    "machines_slopes": "score ~ Machine + (Machine | Worker)",
}


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_lme4_at_its_theta(name, method):
    ref = LME4[f"{name}_{method}"]
    y, X, terms, names = _model(name)
    t = blocked.Terms.of(y, X, terms)
    theta = t.from_lme4_theta(ref["theta"])
    np.testing.assert_array_equal(t.lme4_theta(theta), ref["theta"])
    value = blocked.objective(t, theta, method)
    assert value == pytest.approx(ref["objective"], rel=1e-8, abs=0)
    sol = blocked.solve(t, theta)
    assert sol.objective(method) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(sol.beta, ref["beta"], rtol=1e-6, atol=1e-9)
    for k, g in enumerate(names):
        want = np.array(ref["ranef"][g], float).reshape(sol.b[k].shape)
        np.testing.assert_allclose(sol.b[k], want, rtol=0, atol=1e-5)


def _brute(y, X, terms, theta):
    """ML deviance, REML criterion, beta and b from dense matrices: V = I + Z Lambda Lambda'Z'
    (in units of sigma^2), GLS, log det by LU."""
    N, p = X.shape
    Zs, Lams = [], []
    start = 0
    for codes, Z in terms:
        Z = np.ones((N, 1)) if Z is None else Z.reshape(N, -1)
        n, q = codes.max() + 1, Z.shape[1]
        Zk = np.zeros((N, n * q))
        for a in range(q):
            Zk[np.arange(N), codes * q + a] = Z[:, a]
        T = np.zeros((q, q))
        r, c = np.tril_indices(q)
        order = np.lexsort((r, c))  # column by column
        T[r[order], c[order]] = theta[start : start + q * (q + 1) // 2]
        start += q * (q + 1) // 2
        Zs.append(Zk)
        Lams.append(np.kron(np.eye(n), T))
    Z = np.hstack(Zs)
    Lam = np.zeros((Z.shape[1], Z.shape[1]))
    o = 0
    for L in Lams:
        Lam[o : o + L.shape[0], o : o + L.shape[0]] = L
        o += L.shape[0]
    V = np.eye(N) + Z @ Lam @ Lam.T @ Z.T
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    res = y - X @ beta
    r2 = res @ Vi @ res
    ld = np.linalg.slogdet(V)[1]
    ml = ld + N * (1 + np.log(2 * np.pi * r2 / N))
    reml = ld + np.linalg.slogdet(XtViX)[1] + (N - p) * (1 + np.log(2 * np.pi * r2 / (N - p)))
    b = Lam @ Lam.T @ Z.T @ Vi @ res
    return ml, reml, beta, b, r2


def _random_design(seed: int):
    """A small unbalanced crossed (and partly nested) design: 2 or 3 terms, one with a random
    slope (q = 2) in half the seeds, random theta with now and then a zero element."""
    rng = np.random.default_rng(seed)
    N = int(rng.integers(40, 120))
    x = rng.normal(size=N)
    X = np.column_stack([np.ones(N), x, rng.normal(size=N)])
    terms, theta = [], []
    n_terms = 2 + seed % 2
    for k in range(n_terms):
        n = int(rng.integers(3, 15))
        codes = rng.integers(0, n, size=N)
        codes = np.unique(codes, return_inverse=True)[1]  # every level observed
        if k == 1 and seed % 4 < 2:
            Z = np.column_stack([np.ones(N), x])
            theta += [rng.uniform(0.2, 2), rng.normal(), rng.uniform(0, 1.5)]
        else:
            Z = None if rng.random() < 0.7 else rng.normal(size=N)
            theta.append(rng.uniform(0, 2) if rng.random() < 0.8 else 0.0)
        terms.append((codes, Z))
    y = X @ rng.normal(size=3) * 3 + 10 + rng.normal(size=N)
    for (codes, Z), s in zip(terms, rng.uniform(0.5, 2, size=len(terms)), strict=True):
        Zm = np.ones((N, 1)) if Z is None else Z.reshape(N, -1)
        y += (Zm * rng.normal(size=(codes.max() + 1, Zm.shape[1]))[codes] * s).sum(axis=1)
    return y, X, terms, np.array(theta)


@pytest.mark.parametrize("seed", range(12))
def test_matches_dense_brute_force(seed):
    y, X, terms, theta = _random_design(seed)
    ml, reml, beta, b, r2 = _brute(y, X, terms, theta)
    t = blocked.Terms.of(y, X, terms)
    assert blocked.objective(t, theta, "ml") == pytest.approx(ml, rel=1e-9, abs=0)
    assert blocked.objective(t, theta, "reml") == pytest.approx(reml, rel=1e-9, abs=0)
    sol = blocked.solve(t, theta)
    assert sol.r2 == pytest.approx(r2, rel=1e-9)
    np.testing.assert_allclose(sol.beta, beta, rtol=1e-9, atol=1e-9 * np.abs(beta).max())
    got = np.concatenate([bk.ravel() for bk in sol.b])
    np.testing.assert_allclose(got, b, rtol=0, atol=1e-9 * max(1.0, np.abs(b).max()))


def test_term_order_does_not_matter():
    """The same model with the terms given in another order: same objectives and modes."""
    y, X, terms, theta = _random_design(3)
    t = blocked.Terms.of(y, X, terms)
    perm = [2, 0, 1]
    t2 = blocked.Terms.of(y, X, [terms[k] for k in perm])
    theta2 = np.concatenate([theta[t.theta_slices[k]] for k in perm])
    for method in blocked.METHODS:
        assert blocked.objective(t2, theta2, method) == pytest.approx(
            blocked.objective(t, theta, method), rel=1e-12
        )
    s, s2 = blocked.solve(t, theta), blocked.solve(t2, theta2)
    for j, k in enumerate(perm):
        np.testing.assert_allclose(s2.b[j], s.b[k], atol=1e-10)


def test_bad_theta_length():
    y, X, terms, theta = _random_design(0)
    t = blocked.Terms.of(y, X, terms)
    with pytest.raises(ValueError, match="theta has"):
        blocked.objective(t, theta[:-1])


def _central_difference(t, theta, method, h=1e-5):
    out = np.empty(theta.size)
    for i in range(theta.size):
        e = np.zeros(theta.size)
        e[i] = h
        up = blocked.objective(t, theta + e, method)
        down = blocked.objective(t, theta - e, method)
        out[i] = (up - down) / (2 * h)
    return out


def _check_gradient(t, theta, method):
    value, grad = blocked.objective_and_gradient(t, theta, method)
    assert value == blocked.objective(t, theta, method)
    fd = _central_difference(t, theta, method)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("name", ["penicillin", "pastes", "machines"])
def test_gradient_matches_central_differences_reference_models(name, method):
    y, X, terms, _ = _model(name)
    t = blocked.Terms.of(y, X, terms)
    at_lme4 = t.from_lme4_theta(LME4[f"{name}_{method}"]["theta"])
    for theta in (at_lme4, 1.3 * at_lme4 + 0.1, np.full(t.n_theta, 0.4)):
        _check_gradient(t, theta, method)
    # At lme4's optimum (interior) the gradient is about zero on the criterion's scale.
    _, grad = blocked.objective_and_gradient(t, at_lme4, method)
    assert np.abs(grad).max() < 1e-3


def _scalar_design(seed: int):
    """A random crossed design of 2 to 4 scalar terms (intercepts and single slopes), some
    nested, unbalanced, with one theta element zero now and then."""
    rng = np.random.default_rng(1000 + seed)
    N = int(rng.integers(60, 200))
    X = np.column_stack([np.ones(N), rng.normal(size=(N, int(rng.integers(0, 3))))])
    terms = []
    for k in range(2 + seed % 3):
        n = int(rng.integers(2, 25))
        codes = np.unique(rng.integers(0, n, size=N), return_inverse=True)[1]
        if k == 2 and seed % 2:  # nested in the first term's levels
            codes = np.unique(terms[0][0] * n + codes, return_inverse=True)[1]
        Z = None if rng.random() < 0.7 else rng.normal(size=N)
        terms.append((codes, Z))
    y = X @ rng.normal(size=X.shape[1]) + rng.normal(size=N)
    for codes, Z in terms:
        z = np.ones(N) if Z is None else Z
        y += z * rng.normal(size=codes.max() + 1)[codes] * rng.uniform(0.3, 2)
    theta = rng.uniform(0.05, 2.5, size=len(terms))
    if seed % 4 == 3:
        theta[int(rng.integers(len(terms)))] = 0.0
    return y, X, terms, theta


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("seed", range(12))
def test_gradient_matches_central_differences_random_designs(seed, method):
    y, X, terms, theta = _scalar_design(seed)
    t = blocked.Terms.of(y, X, terms)
    _check_gradient(t, theta, method)
    # The criterion is even in each theta_k: the gradient is exactly zero at theta_k = 0.
    _, grad = blocked.objective_and_gradient(t, theta, method)
    assert np.all(grad[theta == 0.0] == 0.0)


def _vector_design(seed: int):
    """A random crossed design with random slopes: (1 + x | a) + (1 | b) (seed % 4 in 0, 1) or
    (1 + x | a) + (1 + x | b), the slope term the first (largest) block or not (seed % 2), a
    third scalar term now and then, random T_k (negative off-diagonal elements, one diagonal
    element 0 in every third seed)."""
    rng = np.random.default_rng(2000 + seed)
    N = int(rng.integers(80, 200))
    x = rng.normal(size=N)
    X = np.column_stack([np.ones(N), x, rng.normal(size=N)])
    na, nb = (int(rng.integers(15, 30)), int(rng.integers(3, 8)))
    if seed % 2:
        na, nb = nb, na  # the slope term of a is then the smaller block
    a = np.unique(rng.integers(0, na, size=N), return_inverse=True)[1]
    b = np.unique(rng.integers(0, nb, size=N), return_inverse=True)[1]
    slope = np.column_stack([np.ones(N), x])
    terms = [(a, slope), (b, None if seed % 4 < 2 else slope)]
    if seed % 3 == 2:
        terms.append((np.unique(rng.integers(0, 6, size=N), return_inverse=True)[1], None))
    y = X @ rng.normal(size=3) + rng.normal(size=N)
    theta = []
    for codes, Z in terms:
        Zm = np.ones((N, 1)) if Z is None else Z
        y += (Zm * rng.normal(size=(codes.max() + 1, Zm.shape[1]))[codes]).sum(axis=1)
        if Zm.shape[1] == 2:
            theta += [rng.uniform(0.3, 2), rng.normal(), rng.uniform(0.1, 1.5)]
        else:
            theta.append(rng.uniform(0.2, 2))
    theta = np.array(theta)
    if seed % 3 == 0:
        theta[2 if seed % 2 else 0] = 0.0  # a zero diagonal element of a slope term's T
    return y, X, terms, theta


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("seed", range(8))
def test_gradient_vector_terms_central_differences(seed, method):
    y, X, terms, theta = _vector_design(seed)
    t = blocked.Terms.of(y, X, terms)
    assert (t.order[0] == 0) == (seed % 2 == 0)  # the slope term of a first, or not
    _check_gradient(t, theta, method)


def test_gradient_vector_term_alone_lme4():
    """One vector term alone (Machines, (Machine | Worker), q = 3): the gradient against central
    differences, and about zero at lme4's optimum."""
    y, X, terms, _ = _model("machines_slopes")
    t = blocked.Terms.of(y, X, terms)
    for method in ("ml", "reml"):
        theta = t.from_lme4_theta(LME4[f"machines_slopes_{method}"]["theta"])
        _check_gradient(t, 1.1 * theta, method)
        _, grad = blocked.objective_and_gradient(t, theta, method)
        assert np.abs(grad).max() < 5e-3  # lme4 stops within ~1e-3 here


@pytest.mark.parametrize("seed", range(0, 12, 3))
def test_general_gradient_path_matches_scalar_path(seed):
    """The inverse-free path for vector terms, run on scalar terms, gives the trace path's
    numbers (zero elements of theta included)."""
    y, X, terms, theta = _scalar_design(seed)
    t = blocked.Terms.of(y, X, terms)
    f = blocked.factor(t, theta)
    for got, want in zip(blocked._general_parts(t, f), blocked._scalar_parts(t, f), strict=True):
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=1e-8, atol=1e-10)


def test_gradient_bad_method():
    with pytest.raises(ValueError, match="method"):
        blocked.objective_and_gradient(blocked.Terms.of(*_model("pastes")[:3]), [1.0, 1.0], "x")


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_gradient_term_order_does_not_matter(method):
    y, X, terms, theta = _scalar_design(7)
    perm = list(reversed(range(len(terms))))
    v, g = blocked.objective_and_gradient(blocked.Terms.of(y, X, terms), theta, method)
    t2 = blocked.Terms.of(y, X, [terms[k] for k in perm])
    v2, g2 = blocked.objective_and_gradient(t2, theta[perm], method)
    assert v2 == pytest.approx(v, rel=1e-12)
    np.testing.assert_allclose(g2, g[perm], rtol=1e-8, atol=1e-10 * np.abs(g).max())


def test_joint_matches_one_factor_deviance():
    """One factor with a slope term: the joint criterion and its sigma^2 equal
    `deviance.solve`'s (the per-group closed forms)."""
    from workbench.model.design import Block, group_factors
    from workbench.objectives import deviance

    y, X, terms, theta = _vector_design(4)
    codes, Z = terms[0]
    m = int(codes.max()) + 1
    blocks = (Block(names=("(Intercept)", "x"), cols=(0, 1)),)
    gf = group_factors(y, X, Z, codes, m, intercept=0, blocks=blocks)
    layout = deviance.Layout.of(blocks, 2)
    t = blocked.Terms.of(y, X, [(codes, Z)])
    for th in (theta[:3], np.array([0.7, -0.4, 0.2])):
        pls = deviance.solve(gf, layout, th)
        assert blocked.objective(t, th, "joint") == pytest.approx(pls.objective("joint"), rel=1e-10)
        sol = blocked.solve(t, th)
        assert sol.objective("joint") == blocked.objective(t, th, "joint")
        assert sol.sigma2("joint") == pytest.approx(pls.sigma2("joint"), rel=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_joint_gradient_central_differences(seed):
    """Several terms, scalar and vector: the joint's gradient against central differences;
    at a zero diagonal element of T the joint is -inf and the gradient finite."""
    for y, X, terms, theta in (_scalar_design(seed), _vector_design(seed + 1)):
        t = blocked.Terms.of(y, X, terms)
        theta = np.where(theta == 0.0, 0.3, theta)
        _check_gradient(t, theta, "joint")
        zero = theta.copy()
        zero[0] = 0.0
        value, grad = blocked.objective_and_gradient(t, zero, "joint")
        assert value == -np.inf == blocked.objective(t, zero, "joint")
        assert np.all(np.isfinite(grad))


def _dense_A(X, terms, theta):
    """Lambda, Z and A = Lambda'Z'Z Lambda + I as dense matrices (small designs)."""
    N = X.shape[0]
    Zs, Lams, start = [], [], 0
    for codes, Z in terms:
        Z = np.ones((N, 1)) if Z is None else Z.reshape(N, -1)
        n, q = codes.max() + 1, Z.shape[1]
        Zk = np.zeros((N, n * q))
        for a in range(q):
            Zk[np.arange(N), codes * q + a] = Z[:, a]
        T = blocked.Term(codes=codes, Z=Z, n=n, q=q).T(theta[start : start + q * (q + 1) // 2])
        start += q * (q + 1) // 2
        Zs.append(Zk)
        Lams.append(np.kron(np.eye(n), T))
    Z = np.hstack(Zs)
    from scipy.linalg import block_diag

    Lam = block_diag(*Lams)
    A = Lam.T @ Z.T @ Z @ Lam + np.eye(Z.shape[1])
    return Z, Lam, A


@pytest.mark.parametrize("seed", range(6))
def test_conditional_covariances_and_beta_cov_dense(seed):
    """Lambda A^-1 Lambda' by level and term, and (X'V^-1X)^-1, against dense inverses."""
    for y, X, terms, theta in (_scalar_design(seed), _vector_design(seed)):
        t = blocked.Terms.of(y, X, terms)
        sol = blocked.solve(t, theta)
        Z, Lam, A = _dense_A(X, terms, theta)
        full = Lam @ np.linalg.solve(A, Lam.T)
        covs = sol.conditional_covariances()
        at = 0
        for (codes, _), cov in zip(terms, covs, strict=True):
            n, q = codes.max() + 1, cov.shape[1]
            assert cov.shape == (n, q, q)
            for j in range(n):
                s = at + j * q
                np.testing.assert_allclose(
                    cov[j], full[s : s + q, s : s + q], rtol=1e-9, atol=1e-12
                )
            at += n * q
        V = np.eye(X.shape[0]) + Z @ Lam @ Lam.T @ Z.T
        want = np.linalg.inv(X.T @ np.linalg.solve(V, X))
        np.testing.assert_allclose(sol.beta_cov_unscaled, want, rtol=1e-9)


def test_conditional_covariances_lme4():
    """lme4 1.1-31's condVar (attr(ranef(fit, condVar = TRUE)$g, "postVar")) and vcov() at
    its REML fits of Penicillin and of (Machine | Worker), our sigma^2 times ours."""
    y, X, terms, _ = _model("penicillin")
    t = blocked.Terms.of(y, X, terms)
    sol = blocked.solve(t, t.from_lme4_theta(LME4["penicillin_reml"]["theta"]))
    s2 = sol.sigma2("reml")
    assert s2 == pytest.approx(0.302414956255594, rel=1e-8)
    plate, sample = sol.conditional_covariances()
    np.testing.assert_allclose(s2 * plate[:, 0, 0], 0.073635871101407, rtol=1e-7)
    np.testing.assert_allclose(s2 * sample[:, 0, 0], 0.040872985912025, rtol=1e-7)
    assert s2 * sol.beta_cov_unscaled[0, 0] == pytest.approx(0.653826458510993, rel=1e-7)
    y, X, terms, _ = _model("machines_slopes")
    t = blocked.Terms.of(y, X, terms)
    sol = blocked.solve(t, t.from_lme4_theta(LME4["machines_slopes_reml"]["theta"]))
    want = [0.293049343417252, -0.287402881824985, -0.292841933102039, -0.287402881824985]
    want += [0.584808282882888, 0.291656178889064, -0.292841933102039, 0.291656178889064]
    want += [0.589211609529576]
    (worker,) = sol.conditional_covariances()
    got = sol.sigma2("reml") * worker[0]
    np.testing.assert_allclose(got, np.reshape(want, (3, 3)), rtol=1e-6)
