"""Timestep orders: permutations of a timestep grid such that every prefix covers [0, T) evenly.

A sequential schedule (racing) may stop after any number of trials, so the i-th trial's timestep
comes from an order whose prefixes are spread over the whole range: a prefix of n trials then
estimates the mean over all timesteps nearly as well as n evenly spaced ones (stratification),
instead of covering only the low-noise end (ascending order) or clumping (random order).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserInputError

GOLDEN = (5**0.5 - 1) / 2  # the Kronecker (golden-ratio) sequence has the lowest discrepancy among 1-D rotations


def radical_inverse(k: int, base: int = 2) -> float:
    """The van der Corput sequence: the digits of k in the given base mirrored about the point."""
    inv, f = 0.0, 1.0 / base
    while k > 0:
        inv += f * (k % base)
        k //= base
        f /= base
    return inv


def even_grid(n: int, T: int = 1000) -> list[int]:
    """n timesteps at the centres of n equal strata of [0, T): the reference master grid when n divides T."""
    return [(2 * i + 1) * T // (2 * n) for i in range(n)]


def _order_from_points(points: Callable[[int], float], n: int) -> list[int]:
    """Positions 0..n-1 in the order the points u_0, u_1, ... in [0, 1) first land in their cells."""
    seen: set[int] = set()
    order: list[int] = []
    k = 0
    while len(order) < n:
        cell = min(int(points(k) * n), n - 1)
        if cell not in seen:
            seen.add(cell)
            order.append(cell)
        k += 1
        if k > 64 * n:  # the golden sequence fills all cells long before; guards an endless loop
            order.extend(i for i in range(n) if i not in seen)
            break
    return order


def van_der_corput_order(n: int) -> list[int]:
    """Bit-reversal order of n grid positions: every prefix of 2^j positions is evenly stratified.

    The sequence is rotated by one half so it opens mid-range, where single timesteps tell classes apart best.
    """
    return _order_from_points(lambda k: (radical_inverse(k) + 0.5) % 1.0, n)


def golden_order(n: int) -> list[int]:
    """Positions in the order of the golden-ratio (Kronecker) sequence frac(k * 0.618...)."""
    return _order_from_points(lambda k: (k * GOLDEN) % 1.0, n)


def ascending_order(n: int) -> list[int]:
    """Positions in grid order: the reference code's evaluation order (for comparison only)."""
    return list(range(n))


def random_order(n: int, seed: int = 0) -> list[int]:
    """A seeded random permutation: unbiased, but prefixes may clump."""
    import torch  # here, not at the top: the command line reads ORDERS before torch is needed

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


#: name -> order(n) giving a permutation of range(n)
ORDERS: dict[str, Callable[[int], list[int]]] = {
    "stratified": van_der_corput_order,
    "golden": golden_order,
    "random": random_order,
    "ascending": ascending_order,
}


def ordered_grid(grid: list[int], order: str = "stratified") -> list[int]:
    """The grid's timesteps permuted by the named order."""
    if order not in ORDERS:
        raise UserInputError(f"unknown timestep order {order!r}; choose one of {', '.join(ORDERS)}")
    return [grid[i] for i in ORDERS[order](len(grid))]
