"""JL projections: inner products preserved within theory's tolerance, seeded, batch-independent."""
import itertools
import logging
import math

import pytest
import torch

from src.errors import UserError
from src.gradients.projectors import GaussianProjector, RademacherProjector

KINDS = [GaussianProjector, RademacherProjector]


@pytest.mark.parametrize("cls,d", list(itertools.product(KINDS, [256, 1024])))
def test_inner_products_preserved_within_jl_tolerance(cls, d):
    # For unit x, y the JL estimate <Rx, Ry> has variance <= 2/d; a union bound over the
    # m² pairs at failure probability δ gives |err| <= sqrt(8·log(2m²/δ)/d) (TRAK's form).
    m, D, delta = 12, 3000, 1e-6
    x = torch.nn.functional.normalize(torch.randn(m, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1)
    proj = cls(D, d, seed=7, block_size=1000).project(x)
    err = (proj @ proj.T - x @ x.T).abs().max().item()
    eps = math.sqrt(8 * math.log(2 * m * m / delta) / d)
    assert err <= eps, (err, eps)


def test_error_shrinks_with_d():
    x = torch.randn(20, 2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.nn.functional.normalize(x, dim=1)
    errs = []
    for d in (64, 4096):
        p = GaussianProjector(2000, d, seed=3).project(x)
        errs.append((p @ p.T - x @ x.T).abs().mean().item())
    assert errs[1] < errs[0] / 4  # error ~ 1/sqrt(d): 8x smaller expected


@pytest.mark.parametrize("cls", KINDS)
def test_same_seed_same_projection_other_seed_other(cls):
    x = torch.randn(5, 300)
    a = cls(300, 32, seed=11, block_size=64).project(x)
    b = cls(300, 32, seed=11, block_size=64).project(x)
    c = cls(300, 32, seed=12, block_size=64).project(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_projection_of_a_row_does_not_depend_on_its_batch():
    x = torch.randn(9, 500)
    p = GaussianProjector(500, 40, seed=0, block_size=128)
    full = p.project(x)
    one_by_one = torch.cat([p.project(x[i:i + 1]) for i in range(9)])
    torch.testing.assert_close(full, one_by_one, rtol=1e-5, atol=1e-6)


def test_blocked_project_equals_dense_matrix():
    p = RademacherProjector(700, 24, seed=5, block_size=256)
    x = torch.randn(4, 700, dtype=torch.float64)
    torch.testing.assert_close(p.project(x), x @ p.matrix().double().T)
    assert p.matrix().shape == (24, 700)


def test_bad_d_is_a_user_error_and_large_d_is_logged(caplog):
    with pytest.raises(UserError, match="must be positive"):
        GaussianProjector(10, 0)
    with pytest.raises(UserError):
        GaussianProjector(10, -3)
    with caplog.at_level(logging.INFO):
        p = GaussianProjector(10, 10)
    assert "does not compress" in caplog.text
    assert p.project(torch.randn(2, 10)).shape == (2, 10)
