"""The one error type users see: bad input, told in one line with the fix."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (file, column, row, option). The message is one line that names the culprit
    and says how to fix it; the CLI prints it and exits with status 2, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# Checks of single values (options, case- and study-file settings). `name` says where the value
# came from, e.g. "--seed" or "models/x.toml: [compare] seed"; the message names it and the fix.


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def need_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number in [lo, hi] (TOML booleans and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a whole number, got {_shown(value)}.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            want = f"at least {lo}"
        elif lo is None:
            want = f"at most {hi}"
        else:
            want = f"between {lo} and {hi}"
        raise InputError(f"{name} must be {want}, got {value}.")
    return value


def need_real(
    value,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
) -> float:
    """A finite number in the interval (bounds closed unless `open_*`)."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{name} must be a number, got {_shown(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}.")
    below = lo is not None and (value <= lo if open_lo else value < lo)
    above = hi is not None and (value >= hi if open_hi else value > hi)
    if below or above:
        if lo is not None and hi is not None:
            want = f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        elif lo is not None:
            want = f"{'>' if open_lo else '>='} {lo:g}"
        else:
            want = f"{'<' if open_hi else '<='} {hi:g}"
        raise InputError(f"{name} must be {want}, got {value:g}.")
    return value


def need_str(value, name: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string (in quotes), got {_shown(value)}.")
    return value


def need_str_list(value, name: str) -> list[str]:
    """A list of strings, or one string of comma-separated names."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(
            f'{name} must be a list of names in quotes, like ["a", "b"], got {_shown(value)}.'
        )
    return list(value)
