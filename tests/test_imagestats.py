"""prepare's compiled per-image sums against the formulas in numpy int64."""

from __future__ import annotations

import numpy as np
import pytest

from alexnet.prepare.imagestats import add_image


@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (32, 32), (256, 256)])
def test_sums_and_gram_are_the_exact_integer_formulas(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    images = rng.integers(0, 256, (3, height, width, 3), dtype=np.uint8)
    images[0, 0, 0] = 255  # the largest products appear
    sums = np.zeros((height, width, 3), np.uint16)
    gram = np.zeros((3, 3), np.int64)
    for image in images:
        add_image(image, sums, gram)
    pixels = images.reshape(-1, 3).astype(np.int64)
    expected_gram = pixels.T @ pixels
    assert np.array_equal(np.triu(gram), np.triu(expected_gram))
    assert np.array_equal(np.tril(gram, -1), np.zeros((3, 3), np.int64))  # the caller mirrors the triangle
    assert np.array_equal(sums, images.astype(np.int64).sum(axis=0))


def test_a_saturated_image_adds_its_largest_values_exactly():
    image = np.full((256, 256, 3), 255, np.uint8)
    sums = np.full((256, 256, 3), 65535 - 255, np.uint16)  # one more image fits a uint16 exactly
    gram = np.zeros((3, 3), np.int64)
    add_image(image, sums, gram)
    assert int(np.triu(gram)[0, 0]) == 255 * 255 * 256 * 256
    assert int(sums.min()) == 65535
