"""A Merkle tree over the events, hashed as RFC 6962 / RFC 9162 section 2.1 say.

    leaf hash  = SHA-256(0x00 || leaf data)          (leaf data: the event's canonical bytes)
    node hash  = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256()                           (the empty tree)
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n]))      k: the largest power of two below n

`Frontier` is the appending side: the roots of the perfect subtrees the tree's size decomposes
into (one per set bit of the size, largest first), so an append costs one leaf hash and, on
average, one node hash, and the state is O(log n). `root_at` and `inclusion_path` are the proving
side: they need every leaf hash up to the tree's size. `verify_inclusion` is RFC 9162 section
2.1.3.2's algorithm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()
# Perfect subtrees of 2**SINK_LEVEL leaves and more are kept (table tree_nodes, about one row per 512
# events), so a proof reads at most a couple of thousand events, not the whole log.
SINK_LEVEL = 10


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Frontier:
    """The incremental state of a tree: its size and the roots of its perfect subtrees, left to right."""

    __slots__ = ("size", "nodes")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if len(nodes) != bin(size).count("1"):
            raise ValueError(f"a tree of size {size} has {bin(size).count('1')} subtrees, not {len(nodes)}")
        self.size = size
        self.nodes = list(nodes)

    def append(self, leaf: bytes, sink: list[tuple[int, int, bytes]] | None = None) -> None:
        """Add one leaf hash: merge equal-sized subtrees, as a binary counter carries. Into ``sink``,
        every perfect subtree this completes of at least 2**SINK_LEVEL leaves, as (level, index, hash):
        the subtree of leaves [index * 2**level, (index + 1) * 2**level)."""
        h, size, nodes, level = leaf, self.size, self.nodes, 0
        while size & 1:
            h = node_hash(nodes.pop(), h)
            size >>= 1
            level += 1
            if sink is not None and level >= SINK_LEVEL:
                sink.append((level, self.size >> level, h))
        nodes.append(h)
        self.size += 1

    def root(self) -> bytes:
        """MTH of the leaves so far: the subtrees folded from the right."""
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1]
        for left in reversed(self.nodes[:-1]):
            r = node_hash(left, r)
        return r

    def copy(self) -> Frontier:
        return Frontier(self.size, self.nodes)

    def to_json(self) -> list[str]:
        return [n.hex() for n in self.nodes]

    @classmethod
    def from_json(cls, size: int, nodes: Sequence[str]) -> Frontier:
        return cls(size, [bytes.fromhex(n) for n in nodes])


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over ``leaves`` (leaf hashes), without recursion."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges [a, b) whose subtree hashes make PATH(index, D[0:size]), from the leaf up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    low, high = 0, size  # the subtree D[low:high] still holding the leaf
    siblings = []
    while high - low > 1:
        k = _split(high - low)
        if index < low + k:
            siblings.append((low + k, high))
            high = low + k
        else:
            siblings.append((low, low + k))
            low = low + k
    return siblings[::-1]


def inclusion_path(leaves: Sequence[bytes] | None, index: int, size: int | None = None,
                   subtree: Callable[[int, int], bytes] | None = None) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1: the sibling hashes from the leaf up, from
    ``leaves`` or from ``subtree(a, b)``, the hash of the subtree of leaves [a, b)."""
    if size is None:
        assert leaves is not None
        size = len(leaves)
    if subtree is None:
        assert leaves is not None and size <= len(leaves)
        subtree = lambda a, b: root_of(leaves[a:b])  # noqa: E731
    return [subtree(a, b) for a, b in inclusion_ranges(index, size)]


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does ``path`` lead from ``leaf`` (its hash) at ``index`` to ``root``?"""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The leaf ranges [a, b) whose subtree hashes make PROOF(old, D[0:new]), in the proof's order."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new} leaves")
    if old in (0, new):
        return []
    ranges: list[tuple[int, int]] = []
    low, high, whole = 0, new, True  # SUBPROOF(m, D[low:high], whole), m = old - low
    while True:
        n, m = high - low, old - low
        if m == n:
            if not whole:
                ranges.append((low, high))
            break
        k = _split(n)
        if m <= k:
            ranges.append((low + k, high))
            high = low + k
        else:
            ranges.append((low, low + k))
            low, whole = low + k, False
    return ranges[::-1]


def consistency_path(leaves: Sequence[bytes] | None, old: int, new: int | None = None,
                     subtree: Callable[[int, int], bytes] | None = None) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 9162 section 2.1.4.1: that the tree of ``old`` leaves is a prefix
    of the tree of ``new``. Empty when old is 0 or old == new."""
    if new is None:
        assert leaves is not None
        new = len(leaves)
    if subtree is None:
        assert leaves is not None
        if new > len(leaves):
            raise ValueError(f"no consistency proof from {old} to {new} leaves")
        subtree = lambda a, b: root_of(leaves[a:b])  # noqa: E731
    return [subtree(a, b) for a, b in consistency_ranges(old, new)]


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2: does ``path`` show the tree (old, old_root) is a prefix of (new, new_root)?"""
    if old > new:
        return False
    if old == new:
        return not path and old_root == new_root
    if old == 0:
        return not path  # the empty tree is a prefix of every tree
    if not path:
        return False
    proof = list(path)
    if old & (old - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        proof.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
