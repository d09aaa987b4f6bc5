"""One seed rule for every stochastic step: the step's generator is spawned from the root seed
by a fixed key naming the step, `SeedSequence(root, spawn_key=key)`. A step's numbers therefore
depend on the root seed and its own name only (not on which other steps ran, their order, the
number of workers or processes)."""

from __future__ import annotations

import hashlib

import numpy as np


def _key(names) -> tuple[int, ...]:
    """A stable integer key from names (strings or non-negative integers)."""
    out = []
    for n in names:
        if isinstance(n, int | np.integer):
            out.append(int(n))
        else:
            out.append(int.from_bytes(hashlib.sha256(str(n).encode()).digest()[:4], "little"))
    return tuple(out)


def seed_for(root: int, *names) -> np.random.SeedSequence:
    """The seed sequence of the step named `names` under the root seed."""
    return np.random.SeedSequence(int(root), spawn_key=_key(names))


def rng_for(root: int, *names) -> np.random.Generator:
    return np.random.default_rng(seed_for(root, *names))


def int_seed_for(root: int, *names) -> int:
    """An integer seed (for libraries that take one, e.g. PyMC's random_seed)."""
    return int(seed_for(root, *names).generate_state(1, dtype=np.uint32)[0])
