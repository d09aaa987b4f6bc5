"""lme4-style formulas, parsed as data (never as code), and the design matrices they describe.

A formula is user input, and it may come from someone else's case file, so nothing in it is ever
evaluated as Python. (The `formulae` library evaluates every term as a Python expression in the
caller's namespace: `y ~ pd.io.common.os.system("...") + (1 | g)` ran the shell command.) This
module tokenizes the formula itself, parses it with a small closed grammar, and computes every
column with numpy from the parsed tree; no other library sees the user's text.

Why our own tokenizer and parser rather than Python's `ast`: R's formula syntax is not Python's
(names with dots such as `Sepal.Length`, backquoted names, `^` for powers, `:` and `|`), so mapping
it onto Python would need a tokenizer anyway, and a grammar that only has the tokens below cannot
be talked into an attribute access, a subscript, a lambda, an f-string or a keyword argument:
none of them is a token of the language. Why our own model matrix rather than `formulae` with
plain names: R's rules for coding factors (treatment contrasts where the term's margin is in the
model, full dummies where it is not, the first factor in full when there is no intercept, the
first factor varying fastest in an interaction) are a dozen lines, and doing them ourselves gives
lme4's column names and order exactly.

The grammar (everything else is refused with a one-line `InputError` that names the term):

    formula   response ~ terms             response: one column name
    terms     term + term ...              0 +, + 0, - 1, -1 +: no intercept;  1 +: intercept
    term      a   a:b   a*b (= a + b + a:b)   (a + b):c   (expr | g)   (expr || g)
    a, b      column name (`quoted name` for other characters)
              I(e)  log(e)  exp(e)  sqrt(e)  scale(e)  center(e)      numeric columns
              C(col)  C(col, sum|treatment)  C(col, levels = c("b", "a"))  factor(col[, levels])
    e         numbers, numeric columns, + - * / ^ (also **), parentheses, and the functions above

`scale(x)` is R's: (x - mean) / sd with the n - 1 denominator; `center(x)` is x - mean. The
means and sds are over the rows of the data the model is fitted to. `C(col, sum)` codes a factor
by sum-to-zero contrasts (R's contr.sum, columns named `C(col, sum)1`, ...). Character, boolean
and categorical columns are factors; numeric columns are numeric (use `C()` or `factor()` to
treat codes as levels).

`(expr || g)` is lme4's: it splits `expr` into its *terms*, `(1 + x + f || g)` being
`(1 | g) + (0 + x | g) + (0 + f | g)`. For a factor `f` that gives one correlated block of all of
f's dummy columns (lme4 does not split a factor's columns), and this is what we fit, matching
lme4 (lme4 issue #818 discusses warning about it). Write `(1 | g) + (0 + f | g)` to say it
explicitly, or use numeric dummy columns to get independent effects per level.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from workbench.errors import InputError

ALLOWED = (
    "a formula may use column names (`quoted` for other characters), interactions a:b "
    "and a*b, I() with numbers, numeric columns and + - * / ^, log(), exp(), sqrt(), "
    "scale(), center(), C(col), C(col, sum), C(col, levels = c(...)), factor(col), "
    "0 + or - 1 (no intercept), 1 +, and (terms | group) or (terms || group)"
)

_NUMERIC_FUNCTIONS = ("I", "log", "exp", "sqrt", "scale", "center")
_FACTOR_FUNCTIONS = ("C", "factor")
_CONTRASTS = {
    "treatment": "treatment",
    "contr.treatment": "treatment",
    "sum": "sum",
    "contr.sum": "sum",
}
_R_RESERVED = frozenset(
    "if else repeat while function for next break TRUE FALSE NULL Inf NaN NA in".split()
)
_SYNTACTIC = re.compile(r"^(?:[A-Za-z]|\.(?![0-9]))[A-Za-z0-9._]*$")
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.]))
  | (?P<name>[A-Za-z_.][A-Za-z0-9_.]*)
  | (?P<quoted>`[^`\n]*`)
  | (?P<str>"[^"\\\n]*"|'[^'\\\n]*')
  | (?P<op>\|\||\*\*|[~+\-*/^:(),=|\[\]])
""",
    re.VERBOSE,
)


# ---------------------------------------------------------------------------------------------
# the parsed tree: expressions (inside functions) and formula nodes


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Col:
    name: str


@dataclass(frozen=True)
class Neg:
    arg: object


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / ^
    left: object
    right: object


@dataclass(frozen=True)
class Fn:
    """A numeric function of an arithmetic expression: I, log, exp, sqrt, scale, center."""

    name: str
    arg: object


@dataclass(frozen=True)
class Factor:
    """C(col, contrast, levels = ...) or factor(col, levels = ...): a column as a factor."""

    fn: str
    column: str
    contrast: str | None = None  # as written (sum, contr.sum, "sum", ...)
    levels: tuple | None = None  # strings or numbers, as written


@dataclass(frozen=True)
class _Prod:
    op: str  # ':' or '*'
    left: object
    right: object


@dataclass(frozen=True)
class _Group:
    """A parenthesised sum of terms inside a product, e.g. the (a + b) of (a + b):c."""

    items: tuple


@dataclass(frozen=True)
class _Bar:
    expr: tuple  # sum items: (sign, node)
    factors: tuple[tuple[str, ...], ...]  # `a/b` -> (("a",), ("a", "b"))
    double: bool


@dataclass(frozen=True)
class _Intercept:
    value: int  # 0 or 1


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4}


def _name_text(name: str) -> str:
    return name if _SYNTACTIC.match(name) and name not in _R_RESERVED else f"`{name}`"


def _num_text(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _level_text(v) -> str:
    if isinstance(v, float | int):
        return _num_text(v)
    return f"'{v}'" if '"' in v else f'"{v}"'  # the tokenizer's strings hold no own quote


def deparse(node) -> str:
    """R-style text of a node (R's deparse spacing: `x + 1`, `x * 2`, `x/2`, `x^2`, `-x`)."""
    if isinstance(node, Num):
        return _num_text(node.value)
    if isinstance(node, Col):
        return _name_text(node.name)
    if isinstance(node, Neg):
        inner = deparse(node.arg)
        return f"-({inner})" if _prec(node.arg) < _PREC["neg"] else f"-{inner}"
    if isinstance(node, BinOp):
        p, lp, rp = _PREC[node.op], _prec(node.left), _prec(node.right)
        left, right = deparse(node.left), deparse(node.right)
        if node.op == "^":  # right associative; R writes x^-1
            left = f"({left})" if lp <= p else left
            right = f"({right})" if rp < p and not isinstance(node.right, Neg) else right
        else:
            left = f"({left})" if lp < p else left
            right = f"({right})" if rp < p or (rp == p and node.op in "-/") else right
        sep = node.op if node.op in "/^" else f" {node.op} "
        return f"{left}{sep}{right}"
    if isinstance(node, Fn):
        return f"{node.name}({deparse(node.arg)})"
    if isinstance(node, Factor):
        args = [_name_text(node.column)]
        if node.contrast is not None:
            args.append(node.contrast)
        if node.levels is not None:
            args.append(f"levels = c({', '.join(_level_text(v) for v in node.levels)})")
        return f"{node.fn}({', '.join(args)})"
    if isinstance(node, _Prod):
        return f"{deparse(node.left)}{' * ' if node.op == '*' else ':'}{deparse(node.right)}"
    if isinstance(node, _Group):
        return f"({_sum_text(node.items)})"
    if isinstance(node, _Intercept):
        return str(node.value)
    raise TypeError(node)


def _prec(node) -> int:
    if isinstance(node, BinOp):
        return _PREC[node.op]
    if isinstance(node, Neg):
        return _PREC["neg"]
    return 9


def _sum_text(items) -> str:
    out = ""
    for k, (sign, node) in enumerate(items):
        text = deparse(node)
        out += (
            (f"-{text}" if sign < 0 else text)
            if k == 0
            else (f" - {text}" if sign < 0 else f" + {text}")
        )
    return out


# ---------------------------------------------------------------------------------------------
# tokenizer and parser


@dataclass(frozen=True)
class _Tok:
    kind: str  # num name quoted str op end
    text: str
    pos: int


def _element(text: str, pos: int) -> str:
    """The top-level term of `text` (split at + and - outside brackets) that holds `pos`."""
    depth, start, quote = 0, 0, None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'`":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth <= 0 and ch in "+-~":
            if i >= pos and i > start:
                return text[start:i].strip() or text.strip()
            start = i + 1
    return text[start:].strip() or text.strip()


class _Parser:
    def __init__(self, text: str, formula: str, offset: int = 0):
        self.text, self.formula, self.offset = text, formula, offset
        self.toks = self._tokenize()
        self.i = 0

    # errors -----------------------------------------------------------------------------
    def refuse(self, what: str, pos: int | None = None) -> InputError:
        pos = self.peek().pos if pos is None else pos
        term = _element(self.formula, pos + self.offset)
        return InputError(
            f"formula '{self.formula}': {what} in term '{term}' is not allowed; {ALLOWED}."
        )

    def _tokenize(self) -> list[_Tok]:
        toks, pos = [], 0
        while pos < len(self.text):
            m = _TOKEN.match(self.text, pos)
            if m is None:
                ch = self.text[pos]
                raise (
                    self.refuse(f"the character '{ch}'", pos)
                    if ch not in "\"'`"
                    else self.refuse(f"the unterminated or escaped quote {ch}", pos)
                )
            if m.lastgroup != "ws":
                toks.append(_Tok(m.lastgroup, m.group(), pos))
            pos = m.end()
        toks.append(_Tok("end", "", len(self.text)))
        return toks

    # token helpers ----------------------------------------------------------------------
    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text in ops

    def expect(self, op: str) -> _Tok:
        if not self.at(op):
            tok = self.peek()
            got = "the end of the formula" if tok.kind == "end" else f"'{tok.text}'"
            raise self.refuse(f"{got} where '{op}' was expected", tok.pos)
        return self.take()

    def column_name(self, tok: _Tok) -> str:
        name = tok.text[1:-1] if tok.kind == "quoted" else tok.text
        dunder = name.startswith("__") or name.endswith("__") or ".__" in name
        # Python keywords are fine (nothing is evaluated; lme4 fits a column called `yield`);
        # R's reserved words are refused as R refuses them, dunder names as a precaution
        if dunder or (tok.kind == "name" and name in _R_RESERVED):
            raise self.refuse(f"the name '{name}'", tok.pos)
        if tok.kind == "name" and name == ".":
            raise self.refuse("'.' (all other columns)", tok.pos)
        if not name:
            raise self.refuse("an empty `` name", tok.pos)
        return name

    # formula level ----------------------------------------------------------------------
    def formula_sum(self, top: bool) -> tuple:
        """terms separated by + and -; returns ((sign, node), ...)."""
        items = []
        sign = 1
        if self.at("-"):
            self.take()
            sign = -1
        elif self.at("+"):
            self.take()
        while True:
            if self.at("+", "-") or self.peek().kind == "end" or self.at(")"):
                raise InputError(
                    f"formula '{self.formula}': empty term (a stray '+' or '-'); remove it."
                )
            start = self.peek().pos
            node = self.formula_product(top)
            if sign < 0 and not (isinstance(node, _Intercept) and node.value == 1):
                raise self.refuse("removing a term with '-' (only '- 1' is supported)", start)
            items.append((sign, node))
            if self.at("+"):
                self.take()
                sign = 1
            elif self.at("-"):
                self.take()
                sign = -1
            else:
                return tuple(items)

    def formula_product(self, top: bool):
        start = self.peek().pos
        node = self.formula_interaction(top)
        while self.at("*"):
            self.take()
            node = _Prod("*", node, self.formula_interaction(False))
        self._no_formula_operator()
        if isinstance(node, _Prod):
            self._check_product(node, start)
        return node

    def formula_interaction(self, top: bool):
        start = self.peek().pos
        node = self.formula_atom(top)
        while self.at(":"):
            self.take()
            node = _Prod(":", node, self.formula_atom(False))
        self._no_formula_operator()
        if isinstance(node, _Prod):
            self._check_product(node, start)
        return node

    def _no_formula_operator(self) -> None:
        if self.at("^", "**"):
            raise self.refuse(
                "'^' outside I() (R's crossing operator; write the interactions "
                "out, or I(x^2) for a power)"
            )
        if self.at("/"):
            raise self.refuse("'/' outside I() (R's nesting operator; write a + a:b)")

    def _check_product(self, node, start: int) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, _Prod):
                stack += [n.left, n.right]
            elif isinstance(n, _Intercept):
                raise self.refuse(f"the number {n.value} inside an interaction", start)
            elif isinstance(n, _Bar):
                raise self.refuse("a random-effect term inside an interaction", start)

    def grouping(self, bar: _Tok, open_tok: _Tok) -> tuple[tuple[str, ...], ...]:
        """The grouping factor after `|`: `g`, an interaction `a:b` (the observed combinations
        of a and b) or a nesting `a/b` (= `a` and `b:a`, lme4's rule and names; `a/b/c` also
        gives `c:b:a`). Returns each factor as its tuple of columns."""
        chains: list[tuple[str, ...]] = []
        chain: list[str] = []
        while True:
            gtok = self.take()
            if gtok.kind not in ("name", "quoted"):
                raise self.refuse(
                    f"'{gtok.text or 'the end'}' after '{bar.text}' (the grouping factor must be "
                    f"column names joined by ':' (interaction) or '/' (nesting))",
                    gtok.pos,
                )
            name = self.column_name(gtok)
            if name in chain:
                raise self.refuse(f"the grouping column '{name}' twice", gtok.pos)
            chain.append(name)
            if self.at(":"):
                self.take()
                continue
            chains.append(tuple(chain))
            if self.at("/"):
                self.take()
                continue
            break
        if not self.at(")"):
            tok = self.peek()
            close = self.text.find(")", tok.pos)
            inner = self.text[bar.pos + len(bar.text) : close if close >= 0 else None].strip()
            term = _element(self.formula, open_tok.pos + self.offset)
            raise InputError(
                f"formula: grouping factor '{inner}' in '{term}' must be column names joined "
                f"by ':' (interaction, as in a:b) or '/' (nesting, as in a/b); make a column "
                f"for anything else."
            )
        out, prefix = [], ()
        for c in chains:
            prefix = tuple(v for v in c if v not in prefix) + prefix  # lme4: a/b -> b:a
            out.append(prefix)
        return tuple(out)

    def formula_atom(self, top: bool):
        tok = self.peek()
        if tok.kind == "num":
            self.take()
            value = float(tok.text)
            if value in (0.0, 1.0):
                return _Intercept(int(value))
            raise self.refuse(
                f"the number {tok.text} as a term (write I({tok.text}) or a "
                f"transform like I(x + {tok.text}))",
                tok.pos,
            )
        if tok.kind in ("name", "quoted"):
            self.take()
            if self.at("(") and tok.kind == "name":
                return self.call(tok, numeric_only=False)
            return Col(self.column_name(tok))
        if self.at("("):
            self.take()
            items = self.formula_sum(top=False)
            if self.at("|", "||"):
                bar = self.take()
                double = bar.text == "||"
                factors = self.grouping(bar, tok)
                self.take()
                if not top:
                    raise self.refuse("a random-effect term inside another term", tok.pos)
                return _Bar(expr=items, factors=factors, double=double)
            self.expect(")")
            for _, node in items:
                if isinstance(node, _Intercept):
                    raise self.refuse(f"the number {node.value} inside parentheses", tok.pos)
                if isinstance(node, _Bar):
                    raise self.refuse("a random-effect term inside parentheses", tok.pos)
            return items[0][1] if len(items) == 1 else _Group(items)
        if tok.kind == "end":
            raise InputError(
                f"formula '{self.formula}': empty term (a stray '+' or '-'); remove it."
            )
        what = f"the string {tok.text}" if tok.kind == "str" else f"'{tok.text}'"
        raise self.refuse(what, tok.pos)

    # functions and arithmetic -----------------------------------------------------------
    def call(self, name_tok: _Tok, numeric_only: bool):
        fn = name_tok.text
        if fn in _FACTOR_FUNCTIONS and not numeric_only:
            return self.factor_call(name_tok)
        if fn not in _NUMERIC_FUNCTIONS:
            what = "the function" if fn not in _FACTOR_FUNCTIONS else "a factor inside arithmetic:"
            raise self.refuse(f"{what} '{fn}(...)'", name_tok.pos)
        self.expect("(")
        if self.at(")"):
            raise self.refuse(f"'{fn}()' without an argument", name_tok.pos)
        arg = self.arith()
        if self.at(","):
            raise self.refuse(f"a second argument to '{fn}()'", self.peek().pos)
        if self.at("="):
            raise self.refuse(f"a keyword argument to '{fn}()'", self.peek().pos)
        self.expect(")")
        return Fn(fn, arg)

    def factor_call(self, name_tok: _Tok):
        fn = name_tok.text
        self.expect("(")
        tok = self.take()
        if tok.kind not in ("name", "quoted") or self.at("("):
            raise self.refuse(
                f"'{tok.text}' as the argument of {fn}() (it takes a column name)", tok.pos
            )
        column = self.column_name(tok)
        contrast, levels = None, None
        while self.at(","):
            self.take()
            tok = self.take()
            if tok.kind == "name" and self.at("="):
                self.take()
                key = tok.text
                if key == "levels" and levels is None:
                    levels = self.level_list()
                elif key == "contr" and fn == "C" and contrast is None:
                    contrast = self.contrast_name()
                else:
                    raise self.refuse(f"the argument '{key} =' of {fn}()", tok.pos)
            elif fn == "C" and contrast is None and levels is None:
                self.i -= 1
                contrast = self.contrast_name()
            else:
                raise self.refuse(f"the argument '{tok.text}' of {fn}()", tok.pos)
        self.expect(")")
        return Factor(fn, column, contrast, levels)

    def contrast_name(self) -> str:
        tok = self.take()
        name = tok.text[1:-1] if tok.kind == "str" else tok.text
        if tok.kind not in ("name", "str") or name not in _CONTRASTS:
            raise self.refuse(f"the contrast '{tok.text}' (use sum or treatment)", tok.pos)
        return tok.text.replace("'", '"')

    def level_list(self) -> tuple:
        tok = self.take()
        if tok.kind == "name" and tok.text == "c" and self.at("("):
            self.take()
            close = ")"
        elif tok.kind == "op" and tok.text == "[":
            close = "]"
        else:
            raise self.refuse("levels = anything but c(...) of strings or numbers", tok.pos)
        out = []
        while not self.at(close):
            if out:
                self.expect(",")
            tok = self.take()
            sign = 1.0
            if tok.kind == "op" and tok.text == "-":
                sign, tok = -1.0, self.take()
            if tok.kind == "str" and sign > 0:
                out.append(tok.text[1:-1])
            elif tok.kind == "num":
                out.append(sign * float(tok.text))
            else:
                raise self.refuse(
                    f"'{tok.text}' in a level list (strings or numbers only)", tok.pos
                )
        self.take()
        if not out or len(set(map(str, out))) < len(out):
            raise self.refuse("an empty level list or a level listed twice", tok.pos)
        return tuple(out)

    def arith(self):
        node = self.arith_term()
        while self.at("+", "-"):
            op = self.take().text
            node = BinOp(op, node, self.arith_term())
        return node

    def arith_term(self):
        node = self.arith_unary()
        while self.at("*", "/"):
            op = self.take().text
            node = BinOp(op, node, self.arith_unary())
        return node

    def arith_unary(self):
        if self.at("-"):
            self.take()
            return Neg(self.arith_unary())
        if self.at("+"):
            self.take()
            return self.arith_unary()
        return self.arith_power()

    def arith_power(self):
        node = self.arith_atom()
        if self.at("^", "**"):
            self.take()
            return BinOp("^", node, self.arith_unary())
        return node

    def arith_atom(self):
        tok = self.take()
        if tok.kind == "num":
            return Num(float(tok.text))
        if tok.kind in ("name", "quoted"):
            if tok.kind == "name" and self.at("("):
                return self.call(tok, numeric_only=True)
            return Col(self.column_name(tok))
        if tok.kind == "op" and tok.text == "(":
            node = self.arith()
            self.expect(")")
            return node
        if tok.kind == "end":
            raise self.refuse("an incomplete expression", tok.pos)
        what = f"the string {tok.text}" if tok.kind == "str" else f"'{tok.text}'"
        raise self.refuse(f"{what} inside a function", tok.pos)


# ---------------------------------------------------------------------------------------------
# terms: one model matrix (an intercept and a list of terms, each a tuple of variables)


@dataclass(frozen=True)
class Part:
    """What R's `terms()` makes of one right-hand side: the intercept, the variables in order of
    first appearance (key = R-style text, node), and the terms sorted by degree (each a tuple
    of variable keys in variable order)."""

    intercept: bool
    variables: tuple[tuple[str, object], ...]
    terms: tuple[tuple[str, ...], ...]

    def columns(self) -> list[str]:
        """Data columns this part reads."""
        out: list[str] = []
        for _, node in self.variables:
            for name in _columns_of(node):
                if name not in out:
                    out.append(name)
        return out


def _columns_of(node) -> list[str]:
    if isinstance(node, Col):
        return [node.name]
    if isinstance(node, Factor):
        return [node.column]
    if isinstance(node, Neg | Fn):
        return _columns_of(node.arg)
    if isinstance(node, BinOp):
        return _columns_of(node.left) + _columns_of(node.right)
    return []


def _expand(node, order: dict[str, object]) -> list[tuple[str, ...]]:
    """R's term algebra: a:b is the products, a*b = a + b + a:b; (a + b) a list of terms."""
    if isinstance(node, _Prod):
        left, right = _expand(node.left, order), _expand(node.right, order)
        inter = [tuple(dict.fromkeys(a + b)) for a in left for b in right]
        return _unique(left + right + inter) if node.op == "*" else _unique(inter)
    if isinstance(node, _Group):
        return _unique([t for _, n in node.items for t in _expand(n, order)])
    key = deparse(node)
    order.setdefault(key, node)
    return [(key,)]


def _unique(terms: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    seen, out = set(), []
    for t in terms:
        if frozenset(t) not in seen:
            seen.add(frozenset(t))
            out.append(t)
    return out


def _part(items: tuple) -> Part:
    intercept = True
    order: dict[str, object] = {}
    terms: list[tuple[str, ...]] = []
    for sign, node in items:
        if isinstance(node, _Intercept):
            intercept = sign > 0 and node.value == 1
            continue
        terms += _expand(node, order)
    keys = list(order)
    terms = _unique([tuple(sorted(set(t), key=keys.index)) for t in terms])
    terms.sort(key=len)  # stable: R's terms() orders by degree, keeping the written order
    return Part(intercept=intercept, variables=tuple(order.items()), terms=tuple(terms))


@lru_cache(maxsize=256)
def parse_part(text: str) -> Part:
    """Parse one right-hand side without random-effect terms ("1 + x", "0 + f", "x * f")."""
    parser = _Parser(text, text)
    items = parser.formula_sum(top=False)
    if parser.peek().kind != "end":
        raise parser.refuse(f"'{parser.peek().text}'")
    return _part(items)


# ---------------------------------------------------------------------------------------------
# the formula


@dataclass(frozen=True)
class RandomTerm:
    """One `(expr | factor)` term: `expr` is an R right-hand side ("1 + ses"), one correlated
    block of random effects; `columns` the grouping factor's columns (one, or several for an
    interaction: `a:b` has the observed combinations of a and b as levels). `(expr || g)` and
    `(expr | a/b)` are expanded into such terms by `parse`, as lme4 does."""

    expr: str
    columns: tuple[str, ...]
    correlated: bool = True

    @property
    def factor(self) -> str:
        """lme4's name of the grouping factor ("plate", "cask:batch")."""
        return ":".join(self.columns)

    def factor_text(self) -> str:
        return ":".join(_name_text(c) for c in self.columns)

    def text(self) -> str:
        return f"({self.expr} {'|' if self.correlated else '||'} {self.factor_text()})"

    @property
    def part(self) -> Part:
        return parse_part(self.expr)


@dataclass(frozen=True)
class FormulaSpec:
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def factors(self) -> tuple[str, ...]:
        """The grouping factors, in the order of their first term."""
        return tuple(dict.fromkeys(t.factor for t in self.random))

    @property
    def factor(self) -> str:
        """The grouping factor of a model with one (the first one's otherwise)."""
        return self.random[0].factor

    @property
    def fixed_part(self) -> Part:
        return parse_part(self.fixed)

    def text(self) -> str:
        rhs = " + ".join([self.fixed] + [t.text() for t in self.random])
        return f"{_name_text(self.response)} ~ {rhs}"

    @property
    def is_oneway(self) -> bool:
        """`y ~ 1 + (1 | g)`: the model with the fast sufficient-statistics path."""
        fixed = self.fixed_part
        return (
            fixed.intercept
            and not fixed.terms
            and len(self.random) == 1
            and len(self.random[0].columns) == 1
            and self.random[0].correlated
            and self.random[0].part.intercept
            and not self.random[0].part.terms
        )


def _balance(formula: str) -> None:
    depth, quote = 0, None
    for ch in formula:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise InputError(f"formula: unbalanced ')' in '{formula}'; check the parentheses.")
    if depth != 0:
        raise InputError(f"formula: unbalanced '(' in '{formula}'; check the parentheses.")


def _expand_double_bar(bar: _Bar, columns: tuple[str, ...]) -> list[RandomTerm]:
    """lme4's expandDoubleVerts: (1 + a + b || g) -> (1 | g) + (0 + a | g) + (0 + b | g), one
    term per *term* of the expression (a factor's dummy columns stay one block)."""
    part = _part(bar.expr)
    out = [RandomTerm("1", columns)] if part.intercept else []
    variables = dict(part.variables)
    for term in part.terms:
        out.append(RandomTerm("0 + " + ":".join(deparse(variables[k]) for k in term), columns))
    return out


def parse(formula: str) -> FormulaSpec:
    """Parse and check an lme4 formula; one-line `InputError` on anything we cannot fit."""
    try:
        return _parse(formula)
    except RecursionError:
        raise InputError(
            f"formula '{str(formula)[:200]}' is nested too deeply; simplify it."
        ) from None


def _parse(formula: str) -> FormulaSpec:
    if not isinstance(formula, str) or formula.count("~") != 1:
        raise InputError(
            f"formula '{formula}' must have exactly one '~', like 'y ~ x + (1 + x | g)'."
        )
    _balance(formula)
    lhs, rhs = formula.split("~")
    lhs_parser = _Parser(lhs, formula)
    toks = lhs_parser.toks
    if len(toks) != 2 or toks[0].kind not in ("name", "quoted"):
        raise InputError(
            f"formula: the response '{lhs.strip()}' must be one column name "
            f"(transform it in the data instead)."
        )
    response = lhs_parser.column_name(toks[0])
    parser = _Parser(rhs, formula, offset=len(lhs) + 1)
    items = parser.formula_sum(top=True)
    if parser.peek().kind != "end":
        tok = parser.peek()
        raise parser.refuse(f"the string {tok.text}" if tok.kind == "str" else f"'{tok.text}'")
    fixed = tuple((s, n) for s, n in items if not isinstance(n, _Bar))
    bars = [n for _, n in items if isinstance(n, _Bar)]
    if not bars:
        raise InputError(
            f"formula '{formula}' has no random-effect term; add one like (1 | group)."
        )
    random: list[RandomTerm] = []
    for bar in bars:
        # lme4's expandSlash: (e | a/b) -> (e | b:a) + (e | a), the inner factor named first
        # lme4 expands || before /: (1 + x || a/b) -> (1 | b:a) + (1 | a) + (0 + x | b:a) + ...
        chains = list(reversed(bar.factors))
        if bar.double:
            per = [_expand_double_bar(bar, columns) for columns in chains]
            random += [terms[k] for k in range(len(per[0])) for terms in per]
        else:
            random += [RandomTerm(_sum_text(bar.expr), columns) for columns in chains]
    for term in random:
        part = term.part
        if not part.intercept and not part.terms:
            raise InputError(
                f"formula '{formula}': the random-effect term {term.text()} has no "
                f"columns; write e.g. (1 | {term.factor_text()})."
            )
    fixed_text = _sum_text(fixed) if fixed else "1"
    spec = FormulaSpec(response=response, fixed=fixed_text, random=tuple(random))
    if not spec.fixed_part.intercept and not spec.fixed_part.terms:
        raise InputError(
            f"formula '{formula}' has no fixed effects; keep the intercept (drop "
            f"the '0 +' or '- 1') or add a covariate."
        )
    return spec


def variables(spec: FormulaSpec) -> list[str]:
    """Column names the formula uses (response first, grouping columns last)."""
    names = [spec.response]
    for part in [spec.fixed_part] + [t.part for t in spec.random]:
        names += [v for v in part.columns() if v not in names]
    groups = list(dict.fromkeys(c for t in spec.random for c in t.columns))
    return [v for v in names if v not in groups] + groups


# ---------------------------------------------------------------------------------------------
# evaluation: variables -> numbers, terms -> R's model matrix


@dataclass(frozen=True)
class _Categorical:
    codes: np.ndarray
    levels: tuple[str, ...]
    contrast: str  # "treatment" or "sum"


def _fail(source: str, key: str, what: str) -> InputError:
    return InputError(f"{source}: the formula term '{key}' {what}")


def _level_string(v) -> str:
    if isinstance(v, bool | np.bool_):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | float | np.integer | np.floating):
        return _num_text(float(v))
    return str(v)


def _as_categorical(
    col: pd.Series, key: str, source: str, levels=None, contrast: str = "treatment"
) -> _Categorical:
    """A column as a factor: its levels as strings (numbers as R prints them, booleans as
    FALSE/TRUE), ordered as given, as a categorical column's categories, numerically for numbers,
    else sorted; levels without observations are dropped (as lme4's model frame does)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        raw = list(col.cat.categories)
        first = col.cat.codes.to_numpy().astype(np.int64)
        natural = [_level_string(v) for v in raw]
    else:
        first, uniques = pd.factorize(col, sort=False)
        raw = list(uniques)
        if pd.api.types.is_bool_dtype(col):
            natural = ["FALSE", "TRUE"]
        elif pd.api.types.is_numeric_dtype(col):
            natural = [_level_string(v) for v in sorted(raw)]
        else:
            natural = sorted({_level_string(v) for v in raw})
    strings = [_level_string(v) for v in raw]
    order = (
        [_level_string(v) for v in levels] if levels is not None else list(dict.fromkeys(natural))
    )
    where = {lev: i for i, lev in enumerate(order)}
    present = set(strings[c] for c in np.unique(first))
    unknown = sorted(present - set(where))
    if unknown:
        raise _fail(
            source,
            key,
            f"gets value(s) {', '.join(unknown[:5])} that are not in its levels; list every level.",
        )
    lookup = np.array([where.get(s, -1) for s in strings], dtype=np.int64)
    codes = lookup[first]
    used = np.bincount(codes, minlength=len(order)) > 0  # R drops unused levels
    if not used.all():
        remap = np.cumsum(used) - 1
        codes, order = remap[codes], [lev for lev, u in zip(order, used, strict=True) if u]
    if len(order) < 2:
        raise _fail(
            source,
            key,
            f"has only one level ({order[0] if order else 'none'}); a "
            f"factor needs 2 or more levels: drop the term.",
        )
    return _Categorical(codes=codes, levels=tuple(order), contrast=contrast)


def _numeric(node, frame: pd.DataFrame, key: str, source: str) -> np.ndarray | float:
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Col):
        col = frame[node.name]
        if (
            pd.api.types.is_bool_dtype(col)
            or not pd.api.types.is_numeric_dtype(col)
            or isinstance(col.dtype, pd.CategoricalDtype)
        ):
            raise _fail(
                source,
                key,
                f"does arithmetic on column '{node.name}', which is not "
                f"numeric; use the column as a factor term instead.",
            )
        return col.to_numpy(dtype=float)
    if isinstance(node, Neg):
        return -_numeric(node.arg, frame, key, source)
    if isinstance(node, BinOp):
        a, b = _numeric(node.left, frame, key, source), _numeric(node.right, frame, key, source)
        if node.op == "+":
            return a + b
        if node.op == "-":
            return a - b
        if node.op == "*":
            return a * b
        if node.op == "/":
            return np.true_divide(a, b)
        return np.power(a, b)
    if isinstance(node, Fn):
        x = _numeric(node.arg, frame, key, source)
        if node.name == "I":
            return x
        if node.name in ("log", "exp", "sqrt"):
            return getattr(np, node.name)(x)
        x = np.broadcast_to(np.asarray(x, dtype=float), (len(frame),))
        centred = x - x.mean()
        if node.name == "center":
            return centred
        sd = math.sqrt(float(centred @ centred) / (x.size - 1)) if x.size > 1 else 0.0
        if not sd > 0.0:
            raise _fail(source, key, "scales a constant (its sd is 0); drop the term.")
        return centred / sd
    raise TypeError(node)


def _variable(node, frame: pd.DataFrame, key: str, source: str) -> np.ndarray | _Categorical:
    """A variable's value: a float vector (numeric) or a `_Categorical`."""
    if isinstance(node, Factor):
        contrast = _CONTRASTS[node.contrast.strip('"')] if node.contrast else "treatment"
        return _as_categorical(frame[node.column], key, source, node.levels, contrast)
    if isinstance(node, Col):
        col = frame[node.name]
        if (
            pd.api.types.is_bool_dtype(col)
            or not pd.api.types.is_numeric_dtype(col)
            or isinstance(col.dtype, pd.CategoricalDtype)
        ):
            return _as_categorical(col, key, source)
    with np.errstate(all="ignore"):
        x = np.broadcast_to(
            np.asarray(_numeric(node, frame, key, source), dtype=float), (len(frame),)
        ).copy()
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _fail(
            source,
            key,
            f"is not a finite number in data row {row + 1} ({x[row]}; "
            f"{int(bad.sum())} rows in all): fix the data or the "
            f"transform (log and sqrt need positive values).",
        )
    return x


def _coding(part: Part, values: dict) -> list[list[str]]:
    """R's model.c: per term, per variable, 'c' (contrasts), 'd' (all dummies) or 'n'."""
    keys = [k for k, _ in part.variables]
    codes = []
    for i, term in enumerate(part.terms):
        row = []
        for v in term:
            if not isinstance(values[v], _Categorical):
                row.append("n")
                continue
            rest = set(term) - {v}
            margin = not rest or any(rest <= set(prev) for prev in part.terms[:i])
            row.append("c" if margin else "d")
        codes.append(row)
    if not part.intercept:  # the first factor of the first term with one: all its levels
        done = False
        for i, term in enumerate(part.terms):
            for v in keys:
                if v in term and isinstance(values[v], _Categorical):
                    codes[i][term.index(v)] = "d"
                    done = True
                    break
            if done:
                break
    return codes


def _columns(key: str, value, code: str) -> tuple[np.ndarray, list[str]]:
    if code == "n":
        return value[:, None], [key]
    k = len(value.levels)
    if code == "d":
        return np.eye(k)[value.codes], [f"{key}{lev}" for lev in value.levels]
    if value.contrast == "sum":
        basis = np.vstack([np.eye(k - 1), -np.ones((1, k - 1))])
        return basis[value.codes], [f"{key}{j}" for j in range(1, k)]
    return np.eye(k)[value.codes][:, 1:], [f"{key}{lev}" for lev in value.levels[1:]]


def model_matrix(part: Part, frame: pd.DataFrame, source: str) -> tuple[np.ndarray, list[str]]:
    """R's model.matrix for one right-hand side: treatment (or C()'s sum) contrasts where the
    term's margin is in the model, all dummies where it is not; the first variable of an
    interaction varies fastest; lme4's column names."""
    n = len(frame)
    values = {key: _variable(node, frame, key, source) for key, node in part.variables}
    cols, names = ([np.ones((n, 1))], ["(Intercept)"]) if part.intercept else ([], [])
    for term, codes in zip(part.terms, _coding(part, values), strict=True):
        block, labels = np.ones((n, 1)), [""]
        for v, code in zip(term, codes, strict=True):
            m, lab = _columns(v, values[v], code)
            block = (block[:, None, :] * m[:, :, None]).reshape(n, -1)
            labels = [f"{a}:{b}" if a else b for b in lab for a in labels]
        cols.append(block)
        names += labels
    X = np.hstack(cols) if cols else np.empty((n, 0))
    return np.ascontiguousarray(X, dtype=float), names
