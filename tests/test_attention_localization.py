"""Attention mass inside a known shape (issue: continuous attention that finds the object): masks, cell coverage,
discrete and continuous masses against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mmfusion.attention.continuous import gaussian_density
from mmfusion.attention.localization import (
    cell_coverage,
    density_mass,
    discrete_mass,
    pixel_centres,
    shape_mask,
    uniform_mass,
)
from mmfusion.attention.moments import grid_positions
from mmfusion.errors import DataError


def _rectangle(r0: int, r1: int, c0: int, c1: int, size: int = 64) -> np.ndarray:
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = (238, 253, 247)
    img[r0:r1, c0:c1] = (255, 0, 0)
    return img


def test_shape_mask_is_the_drawn_shape_with_fractional_edges() -> None:
    img = _rectangle(16, 40, 8, 24)
    img[40, 8:24] = np.round(0.5 * np.array([255, 0, 0]) + 0.5 * np.array([238, 253, 247]))  # a 50 % edge row
    m = shape_mask(img)
    assert m[16:40, 8:24].min() == 1.0 and m[41:].max() == 0.0 and m[:16].max() == 0.0
    np.testing.assert_allclose(m[40, 8:24], 0.5, atol=0.01)
    np.testing.assert_array_equal(shape_mask(img.transpose(2, 0, 1)), m)  # channel-first works too
    with pytest.raises(DataError, match="single colour"):
        shape_mask(np.zeros((8, 8, 3), dtype=np.uint8))


def test_real_easyvqa_image_mask_matches_its_shape_pixels() -> None:
    easy_vqa = pytest.importorskip("easy_vqa")
    from pathlib import Path

    from PIL import Image

    img = np.asarray(
        Image.open(Path(easy_vqa.__file__).parent / "data" / "test" / "images" / "0.png").convert("RGB")
    )
    m = shape_mask(img)
    colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    bg = colours[counts.argmax()]
    plain = (img != bg).any(-1)
    assert (m > 0).sum() == plain.sum()  # every non-background pixel has some coverage, no other pixel
    assert 0 < m.sum() <= plain.sum()


def test_cell_coverage_and_discrete_mass_closed_forms() -> None:
    m = torch.as_tensor(shape_mask(_rectangle(0, 16, 0, 8)))  # the top-left quarter of 2 cells of a 4x4 grid
    c = cell_coverage(m, (4, 4))
    expected = torch.zeros(16, dtype=torch.float64)
    expected[0] = 0.5  # cell (0, 0): rows 0-15 x cols 0-15, half covered
    torch.testing.assert_close(c, expected)
    uniform = torch.full((1, 16), 1 / 16, dtype=torch.float64)
    # uniform weights over equal cells put exactly the area fraction in the shape
    torch.testing.assert_close(discrete_mass(uniform, c[None]), uniform_mass(m[None]))
    assert float(uniform_mass(m[None])) == pytest.approx(16 * 8 / 64**2)
    one_hot = torch.zeros(1, 16, dtype=torch.float64)
    one_hot[0, 0] = 1.0
    assert float(discrete_mass(one_hot, c[None])) == pytest.approx(0.5)


def test_pixel_centres_follow_the_grid_positions() -> None:
    torch.testing.assert_close(pixel_centres(8, 8), grid_positions(8, 8, torch.float64))


def test_density_mass_of_a_gaussian_against_the_normal_cdf() -> None:
    """A Gaussian N(mu, diag(s^2)) over the rectangle [a0, b0] x [a1, b1]: product of normal CDF differences."""
    size = 64
    img = _rectangle(16, 48, 20, 44, size)
    m = torch.as_tensor(shape_mask(img))
    mu = torch.tensor([[0.45, 0.5]], dtype=torch.float64)
    s = torch.tensor([0.08, 0.05], dtype=torch.float64)
    sigma = torch.diag(s**2)[None]
    dens = gaussian_density(pixel_centres(size, size)[None], mu, sigma)
    inside, total = density_mass(dens, m[None])
    n0 = stats.norm(0.45, 0.08)
    n1 = stats.norm(0.5, 0.05)
    exact = (n0.cdf(48 / 64) - n0.cdf(16 / 64)) * (n1.cdf(44 / 64) - n1.cdf(20 / 64))
    exact_image = (n0.cdf(1) - n0.cdf(0)) * (n1.cdf(1) - n1.cdf(0))
    assert float(inside) == pytest.approx(exact, abs=2e-3)
    assert float(total) == pytest.approx(exact_image, abs=2e-3)
    assert math.isclose(float(total), 1.0, abs_tol=1e-3)  # all of this density lies inside the image


def test_question_types_of_easyvqa_questions() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "attention_localization", Path(__file__).parents[1] / "scripts" / "attention_localization.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    colours = {"red", "green", "blue"}
    qs = [
        "what color is the shape?",
        "what is the blue shape?",
        "is there a red shape?",
        "is there a circle?",
        "does the image contain a green triangle?",
    ]
    ans = ["red", "circle", "no", "yes", "yes"]
    assert mod.question_types(qs, ans, colours) == [
        "open colour",
        "open shape",
        "colour yes/no",
        "shape yes/no",
        "colour yes/no",
    ]


def test_runs_are_grouped_by_attention_type(tmp_path) -> None:
    """Labels ``<type>/<run>`` are averaged per type (mean, sample std) in the JSON, the table and the figure."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "attention_localization", Path(__file__).parents[1] / "scripts" / "attention_localization.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(mass: float, acc: float) -> dict:
        r = dict(n=10, mass_in_shape=mass, uniform_baseline=0.2, ratio_to_uniform=mass / 0.2)
        return {"ckpt": "x", "types": {"colour yes/no": {**r, "mass_in_image": 1.0, "accuracy": acc}}}

    results = {"none/s0": run(0.3, 99.0), "none/s1": run(0.5, 98.0), "mca/s0": run(0.4, 97.0)}
    out = tmp_path / "loc"
    mod.write(results, out, tmp_path / "loc.png")
    groups = json.loads(out.with_suffix(".json").read_text())["groups"]
    assert groups["none"]["colour yes/no"]["mass_in_shape"] == [0.3, 0.5]
    md = out.with_suffix(".md").read_text()
    assert "| none | colour yes/no | 2 | 10 | 0.400 ± 0.141 | 0.200 ± 0.000 | 2.00 ± 0.71 |" in md
    assert "| mca | colour yes/no | 1 | 10 | 0.400 | 0.200 | 2.00 | 1.000 | 97.00 |" in md
    assert (tmp_path / "loc.png").stat().st_size > 1000
