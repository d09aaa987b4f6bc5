"""Write small_groups.csv: the situation of the original question (simulated, seeded).

30 groups of 3 observations, mu = 50, tau = 6, sigma = 3 (strong group effect, tiny groups):
the centered joint mode is interior and its sigma^2 is about (n - 1)/n = 2/3 of ML's.
Run: python models/data/make_small_groups.py  (rewrites the same file byte for byte)
"""

from pathlib import Path

import numpy as np

M, N_PER, MU, TAU, SIGMA, SEED = 30, 3, 50.0, 6.0, 3.0, 20261121

rng = np.random.default_rng(SEED)
theta = MU + TAU * rng.standard_normal(M)
rows = ["group,y,theta_true"]
for j in range(M):
    for _ in range(N_PER):
        rows.append(f"G{j + 1:02d},{theta[j] + SIGMA * rng.standard_normal():.6f},{theta[j]:.6f}")
(Path(__file__).parent / "small_groups.csv").write_text("\n".join(rows) + "\n")
