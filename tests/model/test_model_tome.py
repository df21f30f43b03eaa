"""ToMe bipartite soft matching as HiCo uses it: schedules, counts, size conservation, determinism, brute force."""
from __future__ import annotations

import pytest
import torch

from longvid.model.tome import bipartite_soft_matching, merge_schedule, merge_tokens, merge_wavg, similarity_metric


def test_schedules_match_the_reference():
    assert merge_schedule(784, 64) == [392, 196, 98, 34]
    assert merge_schedule(3136, 64) == [1568, 784, 392, 196, 98, 34]
    assert merge_schedule(196, 64) == [98, 34]  # a lone image at 224
    assert merge_schedule(784 * 2, 128) == [784, 392, 196, 68]
    with pytest.raises(ValueError):
        merge_schedule(64, 64)


@pytest.mark.parametrize("n", [784, 3136])
def test_exact_counts_and_size_conservation(n):
    torch.manual_seed(0)
    x = torch.randn(3, n, 32)
    out, size = merge_tokens(x, 64, chunks=4)
    assert out.shape == (3, 64, 32)
    assert size.shape == (3, 64)
    assert torch.equal(size.sum(-1), torch.full((3,), float(n)))
    assert (size >= 1).all()
    # size-weighted mean is conserved: sum(size * token) == sum of input tokens
    torch.testing.assert_close((out * size[..., None]).sum(1), x.sum(1), rtol=1e-4, atol=1e-3)


def test_deterministic_and_rows_independent():
    torch.manual_seed(1)
    x = torch.randn(4, 784, 32)
    a, sa = merge_tokens(x, 64, chunks=4)
    b, sb = merge_tokens(x.clone(), 64, chunks=4)
    assert torch.equal(a, b) and torch.equal(sa, sb)
    # each row (clip) is merged on its own: a row alone gives the same result
    c, sc = merge_tokens(x[2:3], 64, chunks=4)
    torch.testing.assert_close(c[0], a[2])
    assert torch.equal(sc[0], sa[2])


def test_ties_are_resolved_deterministically():
    x = torch.ones(1, 16, 8)  # every score ties
    out, size = merge_tokens(x, 4, chunks=2)
    assert out.shape == (1, 4, 8) and size.sum() == 16
    out2, size2 = merge_tokens(x, 4, chunks=2)
    assert torch.equal(size, size2)


def test_metric_averages_chunks():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    m = similarity_metric(x, 4)  # (b, p, 4, 2).mean(2)
    assert m.shape == (2, 3, 2)
    torch.testing.assert_close(m[0, 0], torch.tensor([(0 + 2 + 4 + 6) / 4, (1 + 3 + 5 + 7) / 4]))


def _brute_force_round(x: torch.Tensor, size: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One ToMe round for a single row, written with plain Python loops."""
    n = x.shape[0]
    a_idx = list(range(0, n, 2))
    b_idx = list(range(1, n, 2))
    norm = [x[i] / x[i].norm() for i in range(n)]
    best = []
    for ai in a_idx:
        scores = [float(norm[ai] @ norm[bj]) for bj in b_idx]
        top = max(scores)
        best.append((top, scores.index(top)))  # first index on ties
    order = sorted(range(len(a_idx)), key=lambda k: -best[k][0])  # Python's sort is stable
    merged_a, kept_a = order[:r], order[r:]
    b_sum = [x[bj] * size[bj] for bj in b_idx]
    b_size = [size[bj].clone() for bj in b_idx]
    for k in merged_a:
        j = best[k][1]
        b_sum[j] = b_sum[j] + x[a_idx[k]] * size[a_idx[k]]
        b_size[j] = b_size[j] + size[a_idx[k]]
    rows = [x[a_idx[k]] for k in kept_a] + [b_sum[j] / b_size[j] for j in range(len(b_idx))]
    sizes = [size[a_idx[k]] for k in kept_a] + b_size
    return torch.stack(rows), torch.stack(sizes)


def test_matches_brute_force_on_a_tiny_example():
    torch.manual_seed(3)
    x = torch.randn(2, 11, 6)  # odd N: 6 A tokens, 5 B tokens
    size = torch.ones(2, 11, 1)
    for r in (1, 3, 5):
        plan = bipartite_soft_matching(x, r)
        got, got_size = merge_wavg(plan, x, size)
        for row in range(2):
            want, want_size = _brute_force_round(x[row], size[row], r)
            torch.testing.assert_close(got[row], want)
            torch.testing.assert_close(got_size[row], want_size)


def test_merges_the_most_similar_pair():
    # tokens 0 and 1 are near-identical; token 2 is orthogonal; r = 1 must merge 0 into 1
    x = torch.tensor([[[1.0, 0.0], [0.99, 0.01], [0.0, 1.0], [-1.0, 0.2]]])
    plan = bipartite_soft_matching(x, 1)
    assert plan.src_idx.tolist() == [[0]] and plan.dst_idx.tolist() == [[0]]
    out, size = merge_wavg(plan, x, torch.ones(1, 4, 1))
    assert size[0, :, 0].tolist() == [1.0, 2.0, 1.0]  # unmerged A (token 2), then B tokens 1 and 3
    torch.testing.assert_close(out[0, 1], (x[0, 0] + x[0, 1]) / 2)
