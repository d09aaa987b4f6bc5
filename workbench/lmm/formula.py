"""lme4-style formulas: split `y ~ fixed + (expr | g) + (expr || g)` into its parts.

`formulae` builds every design matrix, but it splits `(1 + x | g)` into two separate terms and
so forgets which random effects are correlated. This module keeps that structure: it splits the
right-hand side at top-level `+` signs, takes the parenthesised `(expr | factor)` terms out as
random-effect terms (one correlated block each; `||` makes every column its own block, as in
lme4), and leaves the rest as the fixed-effects formula. Syntax is checked by `formulae`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import formulae

from ..errors import InputError

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class RandomTerm:
    """One `(expr | factor)` term: `expr` is a formulae right-hand side ("1 + ses")."""

    expr: str
    factor: str
    correlated: bool = True

    def text(self) -> str:
        return f"({self.expr} {'|' if self.correlated else '||'} {self.factor})"


@dataclass(frozen=True)
class FormulaSpec:
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def factor(self) -> str:
        return self.random[0].factor

    def text(self) -> str:
        rhs = " + ".join([self.fixed] + [t.text() for t in self.random])
        return f"{self.response} ~ {rhs}"

    @property
    def is_oneway(self) -> bool:
        """`y ~ 1 + (1 | g)`: the model with the fast sufficient-statistics path."""
        return (_canon(self.fixed) in ("1", "")
                and len(self.random) == 1 and _canon(self.random[0].expr) == "1")


def _canon(text: str) -> str:
    return "".join(text.split())


def _split_top(text: str, sep: str = "+") -> list[str]:
    """Split at `sep` outside parentheses and brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise InputError(f"formula: unbalanced ')' in '{text}'; check the parentheses.")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise InputError(f"formula: unbalanced '(' in '{text}'; check the parentheses.")
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _random_term(part: str) -> RandomTerm | None:
    if not (part.startswith("(") and part.endswith(")")) or "|" not in part:
        return None
    inner = part[1:-1]
    if len(_split_top(inner, "|")) == 1:  # the bar sits inside nested parentheses
        return None
    correlated = "||" not in inner
    expr, factor = (s.strip() for s in inner.split("||" if not correlated else "|", 1))
    if not expr:
        raise InputError(f"formula: random-effect term '{part}' has nothing before the bar; "
                         f"write e.g. (1 | {factor or 'group'}).")
    if not _NAME.match(factor):
        raise InputError(f"formula: grouping factor '{factor}' in '{part}' must be one column "
                         f"name (nested or interacted factors are not supported yet); make a "
                         f"column that combines them.")
    return RandomTerm(expr=expr, factor=factor, correlated=correlated)


def parse(formula: str) -> FormulaSpec:
    """Parse and check an lme4 formula; one-line `InputError` on anything we cannot fit."""
    if not isinstance(formula, str) or formula.count("~") != 1:
        raise InputError(f"formula '{formula}' must have exactly one '~', like "
                         f"'y ~ x + (1 + x | g)'.")
    lhs, rhs = (s.strip() for s in formula.split("~"))
    if not _NAME.match(lhs):
        raise InputError(f"formula: the response '{lhs}' must be one column name "
                         f"(transform it in the data instead).")
    fixed, random = [], []
    for part in _split_top(rhs):
        if not part:
            raise InputError(f"formula '{formula}': empty term (a stray '+'); remove it.")
        term = _random_term(part)
        if term is None:
            fixed.append(part)
        else:
            random.append(term)
    if not random:
        raise InputError(f"formula '{formula}' has no random-effect term; add one like "
                         f"(1 | group).")
    factors = sorted({t.factor for t in random})
    if len(factors) > 1:
        raise InputError(f"formula '{formula}' has {len(factors)} grouping factors "
                         f"({', '.join(factors)}); only one grouping factor is supported.")
    spec = FormulaSpec(response=lhs, fixed=" + ".join(fixed) if fixed else "1",
                       random=tuple(random))
    for text in [f"{lhs} ~ {spec.fixed}"] + [f"{lhs} ~ {t.expr}" for t in random]:
        try:
            formulae.model_description(text)
        except Exception as exc:  # formulae raises its own parse errors
            raise InputError(f"formula '{formula}' cannot be parsed ({exc}); use lme4 syntax "
                             f"like 'y ~ x + (1 + x | g)'.") from None
    return spec


def variables(spec: FormulaSpec) -> list[str]:
    """Column names the formula uses (response first, grouping factor last)."""
    names: list[str] = []
    for text in [spec.fixed] + [t.expr for t in spec.random]:
        desc = formulae.model_description(f"{spec.response} ~ {text}")
        names += [v for v in sorted(desc.var_names) if v and v not in names]
    names = [spec.response] + [v for v in names if v != spec.response]
    return names + [spec.factor]


def lme4_name(label: str) -> str:
    """formulae's column label -> lme4's: Intercept -> (Intercept), sector[Catholic] ->
    sectorCatholic, x:g[b] -> x:gb."""
    if label == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[([^\]]*)\]", r"\1", label)
