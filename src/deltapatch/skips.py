"""Λ's layout: which position each skip h_i → h_j of a k-block stage holds.

Shared by the gates (delta.py) and the base start (baseinit.py), so neither imports the other's
module for it; the order is the stored one (patch files and served Λ use it).
"""

from __future__ import annotations


def num_skips(k: int) -> int:
    return k * (k + 1) // 2


def skip_index(i: int, j: int) -> int:
    """Position of skip h_i → h_j (0 ≤ i < j ≤ k) in Λ: skips into h_1 first, then into h_2, …"""
    return (j - 1) * j // 2 + i


def existing_skips(k: int) -> list[int]:
    """Positions of the backbone's own shortcuts h_{j-1} → h_j in Λ."""
    return [skip_index(j - 1, j) for j in range(1, k + 1)]
