"""The training split's exact sums for the mean image and the RGB covariance, one compiled pass per image.

prepare adds every stored image into per-position sums (the mean image, SPEC section 3) and into the 3 x 3
sum of x x^T over its pixels (the colour PCA, SPEC section 4), as integers, so that the result does not
depend on the order in which chunks finish. One loop compiled by Numba reads each pixel once and does
both, where numpy needs three widening copies, six products and six sums (a tenth of the time:
docs/PERFORMANCE.md, "Design measurements").
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, boundscheck=False)
def add_image(image: np.ndarray, position_sums: np.ndarray, gram: np.ndarray) -> None:
    """position_sums += image; gram[i, j] += sum over pixels of image[..., i] * image[..., j] for i <= j.

    image: contiguous uint8 (H, W, 3); position_sums: contiguous (H, W, 3) of uint16 (the caller flushes
    it before 257 images could overflow it) or a wider integer type; gram: int64 (3, 3), whose upper
    triangle is filled (the caller mirrors it). Products and sums are integers, so exact: a pixel adds at
    most 255 * 255 per entry, and 64 bits hold that for any image."""
    values = image.reshape(image.size)
    sums = position_sums.reshape(position_sums.size)
    for i in range(values.size):  # separate from the loop below, so each vectorizes on its own
        sums[i] += values[i]
    s00 = s01 = s02 = s11 = s12 = s22 = np.uint64(0)
    for p in range(values.size // 3):
        r, g, b = np.uint64(values[3 * p]), np.uint64(values[3 * p + 1]), np.uint64(values[3 * p + 2])
        s00 += r * r
        s01 += r * g
        s02 += r * b
        s11 += g * g
        s12 += g * b
        s22 += b * b
    gram[0, 0] += np.int64(s00)
    gram[0, 1] += np.int64(s01)
    gram[0, 2] += np.int64(s02)
    gram[1, 1] += np.int64(s11)
    gram[1, 2] += np.int64(s12)
    gram[2, 2] += np.int64(s22)


def colour_pca(sum_rgb: np.ndarray, gram: np.ndarray, pixels: int) -> tuple[list, list, list]:
    """Mean RGB and the eigen-decomposition of the 3x3 pixel covariance (unbiased, like np.cov).

    Computed from exact integer sums: covariance = (P * sum(x x^T) - sum(x) sum(x)^T) / (P (P - 1)),
    with the numerator in Python integers so nothing cancels catastrophically.
    """
    s = [int(v) for v in sum_rgb]
    numerator = np.array([[pixels * int(gram[i, j]) - s[i] * s[j] for j in range(3)] for i in range(3)],
                         dtype=object)
    covariance = (numerator / (pixels * (pixels - 1))).astype(np.float64) if pixels > 1 else np.zeros((3, 3))
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    # eigh's signs are arbitrary; make each column's largest component positive so stores are comparable
    signs = np.sign(eigenvectors[np.argmax(np.abs(eigenvectors), axis=0), range(3)])
    eigenvectors = eigenvectors * np.where(signs == 0, 1, signs)
    mean = [v / pixels for v in s]
    return mean, eigenvalues.tolist(), eigenvectors.tolist()
