"""How much of each conv1 kernel is colour: the measure behind the paper's Figure 3 remark that one tower's
kernels are largely colour-agnostic and the other's colour-specific.

A kernel w (3 x k x k, RGB) splits into its grey part, the mean of R, G and B at each pixel repeated over the
three channels, and its colour part, the rest (at each pixel the deviations of R, G and B from their mean). The
two parts are orthogonal, so ||w||^2 = ||grey||^2 + ||colour||^2, and the colour share ||colour||^2 / ||w||^2 is
0 for a kernel that sees only brightness and 1 for one that sees only differences between colours.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def colour_share(weight: np.ndarray) -> np.ndarray:
    """(K,) colour share of each of K kernels (K, 3, k, k); a kernel of all zeros counts as 0."""
    w = np.asarray(weight, dtype=np.float64)
    grey = w.mean(axis=1, keepdims=True)
    colour = ((w - grey) ** 2).sum(axis=(1, 2, 3))
    total = (w**2).sum(axis=(1, 2, 3))
    return np.divide(colour, total, out=np.zeros_like(total), where=total > 0)


def colour_report(weight: np.ndarray, towers: int) -> list[dict[str, Any]]:
    """Per tower (kernels split in order, tower 1 first): count, mean, quartiles of the colour share, and how many
    kernels are mostly colour (share above 0.5)."""
    shares = colour_share(weight)
    rows = []
    for t, part in enumerate(np.array_split(shares, towers), 1):
        q25, median, q75 = np.quantile(part, [0.25, 0.5, 0.75])
        rows.append({"tower": t, "kernels": len(part), "mean": float(part.mean()), "q25": float(q25),
                     "median": float(median), "q75": float(q75), "mostly_colour": int((part > 0.5).sum()),
                     "shares": [round(float(s), 4) for s in part]})
    return rows
