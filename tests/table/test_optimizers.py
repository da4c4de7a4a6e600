"""Per-row optimizer math against torch.optim (or a reference formula) on the same gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.table import FTRL, SGD, Adagrad, Adam, EmbeddingTable, RowwiseAdagrad, TableConfig

N, DIM, STEPS = 16, 8, 25


def _table(opt) -> tuple[EmbeddingTable, np.ndarray, np.ndarray]:
    t = EmbeddingTable(TableConfig(dim=DIM, optimizer=opt))
    ids = np.arange(-N // 2, N // 2, dtype=np.int64) * 1_000_003
    w0 = np.random.default_rng(1).normal(size=(N, DIM)).astype(np.float32)
    t.assign(ids, w0)
    return t, ids, w0


def _grads(step: int) -> np.ndarray:
    return np.random.default_rng(100 + step).normal(size=(N, DIM)).astype(np.float32)


TORCH_CASES = [
    (SGD(lr=0.1), lambda p: torch.optim.SGD([p], lr=0.1)),
    (SGD(lr=0.05, weight_decay=0.01), lambda p: torch.optim.SGD([p], lr=0.05, weight_decay=0.01)),
    (SGD(lr=0.05, momentum=0.9), lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.9)),
    (
        SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001),
        lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001),
    ),
    (Adagrad(lr=0.1), lambda p: torch.optim.Adagrad([p], lr=0.1)),
    (
        Adagrad(lr=0.1, eps=1e-6, weight_decay=0.01, initial_accumulator_value=0.1),
        lambda p: torch.optim.Adagrad([p], lr=0.1, eps=1e-6, weight_decay=0.01, initial_accumulator_value=0.1),
    ),
    (Adam(lr=0.01), lambda p: torch.optim.Adam([p], lr=0.01)),
    (
        Adam(lr=0.02, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01),
        lambda p: torch.optim.Adam([p], lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
    ),
]


@pytest.mark.parametrize(("opt", "make_torch"), TORCH_CASES, ids=lambda x: getattr(x, "type", ""))
def test_matches_torch_optim(opt, make_torch):
    table, ids, w0 = _table(opt)
    if isinstance(opt, Adagrad) and opt.initial_accumulator_value:
        # assign() zeroes the state of new rows: set the accumulator the way admission would
        state = np.full((N, DIM), opt.initial_accumulator_value, np.float32)
        table.assign(ids, w0, state=state)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = make_torch(p)
    for step in range(STEPS):
        g = _grads(step)
        table.apply_gradients(ids, g, now=step)
        p.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(table.lookup(ids), p.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta2", [0.9999, 0.99999])
def test_adam_with_beta2_near_one_matches_torch_over_many_steps(beta2):
    """The float32 constants must be rounded as torch rounds them: float32(1 - beta2), not
    1 - float32(beta2), which is 1e-4..1e-3 off at these betas and drifts over 200 steps."""
    table, ids, w0 = _table(Adam(lr=0.01, beta2=beta2))
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = torch.optim.Adam([p], lr=0.01, betas=(0.9, beta2))
    for step in range(200):
        g = _grads(step)
        table.apply_gradients(ids, g, now=step)
        p.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(table.lookup(ids), p.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_duplicates_are_summed_before_the_step():
    """Adagrad is not linear in g: one step on the merged gradient differs from two steps."""
    table, ids, w0 = _table(Adagrad(lr=0.1))
    g = _grads(0)
    dup_ids = np.concatenate([ids, ids[:4]])
    dup_g = np.concatenate([g, g[:4]])
    table.apply_gradients(dup_ids, dup_g, now=0)
    merged = g.copy()
    merged[:4] *= 2
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = torch.optim.Adagrad([p], lr=0.1)
    p.grad = torch.from_numpy(merged)
    topt.step()
    np.testing.assert_allclose(table.lookup(ids), p.detach().numpy(), rtol=1e-5, atol=1e-6)


ALL_OPTIMIZERS = [
    SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
    Adagrad(lr=0.1, weight_decay=0.01),
    RowwiseAdagrad(lr=0.1, weight_decay=0.01),
    Adam(lr=0.01, weight_decay=0.01),
    FTRL(),
]


@pytest.mark.parametrize("opt", ALL_OPTIMIZERS, ids=lambda o: o.type)
def test_a_batch_with_repeats_steps_like_its_merged_batch(opt):
    """Every optimizer, over several steps: IDs repeated up to three times in scattered order
    update exactly like one occurrence each with the summed gradient (the kernel reads a row seen
    once from the batch and sums only the repeated ones)."""
    a, ids, w0 = _table(opt)
    b = EmbeddingTable(TableConfig(dim=DIM, optimizer=opt))
    b.assign(ids, w0)
    rng = np.random.default_rng(7)
    for step in range(5):
        extra = rng.choice(N, 10)  # some rows twice or three times, some once
        order = rng.permutation(N + extra.size)
        rows = np.concatenate([np.arange(N), extra])[order]
        g = rng.normal(size=(rows.size, DIM)).astype(np.float32)
        merged = np.zeros((N, DIM), np.float32)
        np.add.at(merged, rows, g)
        g_before = g.copy()
        a.apply_gradients(ids[rows], g, now=step)
        b.apply_gradients(ids, merged, now=step)
        np.testing.assert_array_equal(g, g_before)  # the caller's gradients are read, never written
    np.testing.assert_allclose(a.lookup(ids), b.lookup(ids), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.export(ids).state, b.export(ids).state, rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_reference_formula():
    opt = RowwiseAdagrad(lr=0.1, eps=1e-8, weight_decay=0.01)
    table, ids, w0 = _table(opt)
    w = w0.astype(np.float64)
    acc = np.zeros(N)
    for step in range(STEPS):
        g = _grads(step).astype(np.float64) + 0.01 * w
        acc += (g * g).mean(axis=1)
        w = w - 0.1 * g / (np.sqrt(acc) + 1e-8)[:, None]
        table.apply_gradients(ids, _grads(step), now=step)
    np.testing.assert_allclose(table.lookup(ids), w, rtol=1e-5, atol=1e-5)
    exp = table.export(ids)
    np.testing.assert_allclose(exp.state[:, 0], acc, rtol=1e-5)


def test_ftrl_reference_formula():
    """FTRL-Proximal, McMahan et al. (2013), Algorithm 1, per coordinate."""
    alpha, beta, l1, l2 = 0.1, 1.0, 2.0, 0.01
    table, ids, w0 = _table(FTRL(alpha=alpha, beta=beta, l1=l1, l2=l2))
    w = w0.astype(np.float64)
    z = np.zeros((N, DIM))
    n = np.zeros((N, DIM))
    for step in range(STEPS):
        g = _grads(step).astype(np.float64)
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / alpha
        z += g - sigma * w
        n += g * g
        w = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((beta + np.sqrt(n)) / alpha + l2))
        table.apply_gradients(ids, _grads(step), now=step)
    np.testing.assert_allclose(table.lookup(ids), w, rtol=1e-5, atol=1e-6)
    assert (table.lookup(ids) == 0).any(), "l1 should zero some coordinates"


def test_state_moves_with_the_row_and_resets_on_reuse():
    t = EmbeddingTable(TableConfig(dim=4, optimizer=Adam(lr=0.01), ttl=10))
    t.lookup([1, 2], train=True, now=0)
    t.apply_gradients([1, 2], np.ones((2, 4)), now=0)
    st1 = t.export([1]).state
    assert st1.shape == (1, 9) and st1[0, -1] == 1.0  # m, v, step count
    t.expire(100)  # frees both rows
    t.lookup([3], train=True, now=100)  # reuses a freed row
    st3 = t.export([3]).state
    np.testing.assert_array_equal(st3, np.zeros((1, 9), np.float32))


def test_adagrad_initial_accumulator_applies_to_admitted_rows():
    t = EmbeddingTable(TableConfig(dim=2, optimizer=Adagrad(initial_accumulator_value=0.5)))
    t.lookup([5], train=True, now=0)
    np.testing.assert_array_equal(t.export([5]).state, [[0.5, 0.5]])
