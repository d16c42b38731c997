"""RFC 9162 Merkle trees: hashing, an append-only tree, proof building and proof verification.

The hash is SHA-256 with domain bytes: a leaf is ``SHA-256(0x00 || data)`` and an interior node
``SHA-256(0x01 || left || right)``; the empty tree's root is ``SHA-256("")``. Nothing is ever
duplicated to pad the tree (RFC 9162 §2.1.1).

Two floors, as in the rest of the verifier:

- Recipes: :func:`verify_inclusion`, :func:`verify_consistency` and the subtree variants from
  draft-ietf-plants-merkle-tree-certs §4. They return ``None`` or raise.
- For implementers: :func:`root_from_inclusion_proof` returns the root a proof implies, which is
  only meaningful once it is compared with a trusted root. :class:`ProofBuilder` assembles roots
  and proofs from any store of perfect-subtree nodes (:class:`NodeReader`); :class:`MerkleTree` is
  the in-memory store, and the daemon backs the same builder with SQLite.

Policies beyond the RFC text, which the transparency-dev/merkle vectors require:

- every hash (leaf, root, proof element) is exactly 32 bytes, otherwise ``MalformedInput``
  with code ``merkle.bad_hash``;
- sizes and indices are unsigned 64-bit integers;
- a consistency proof *from* size 0 is always refused (``merkle.empty_first_tree``), because it
  carries no information. A caller that starts from nothing (a witness whose stored size is 0)
  special-cases that before calling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from .errors import MalformedInput, ProofInvalid

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "NodeReader",
    "ProofBuilder",
    "hash_children",
    "hash_leaf",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
    "verify_subtree_consistency",
    "verify_subtree_inclusion",
]

#: Every hash in the tree is a SHA-256 digest.
HASH_SIZE = 32
#: Root of the empty tree, ``SHA-256("")`` with no prefix byte (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
#: Sizes and indices are uint64 on the wire (RFC 9162 §2.1.3.2; Go uses uint64 throughout).
_UINT64_LIMIT = 1 << 64


def hash_leaf(data: bytes) -> bytes:
    """The leaf hash ``SHA-256(0x00 || data)`` of one log entry's exact bytes."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """The interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# -- input checks ------------------------------------------------------------------------------


def _require_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise MalformedInput(f"{what}: must be {HASH_SIZE} bytes", code="merkle.bad_hash")
    return value


def _require_proof(proof: object) -> tuple[bytes, ...]:
    if not isinstance(proof, list | tuple):
        raise MalformedInput("proof: must be a list of hashes", code="merkle.bad_hash")
    return tuple(proof)


def _require_hashes(hashes: tuple[bytes, ...]) -> None:
    for position, value in enumerate(hashes):
        _require_hash(value, f"proof[{position}]")


def _require_uint64(value: object, what: str, code: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedInput(f"{what}: must be an integer", code="merkle.bad_integer")
    if not 0 <= value < _UINT64_LIMIT:
        raise ProofInvalid(f"{what}: {value} is not an unsigned 64-bit integer", code=code)
    return value


def _require_size(value: object, what: str) -> int:
    return _require_uint64(value, what, "merkle.bad_size")


def _require_index(value: object, what: str) -> int:
    return _require_uint64(value, what, "merkle.index_out_of_range")


def _is_valid_subtree(start: int, end: int) -> bool:
    # draft-ietf-plants-merkle-tree-certs §4.1: start < end, and start is a multiple of the
    # smallest power of two >= end - start, so [start, end) is a (possibly ephemeral) node.
    return start < end and start % (1 << (end - start - 1).bit_length()) == 0


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162 §2.1.1: the largest power of two strictly less than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- verification ------------------------------------------------------------------------------


def _inclusion_steps(index: int, size: int) -> list[bool]:
    """For each proof element, leaf side first: True when it is a left sibling.

    This is the index walk of RFC 9162 §2.1.3.2 without the hashing, so its length is the exact
    proof length (``inner + border``), checked before any hashing.
    """
    fn, sn = index, size - 1
    steps: list[bool] = []
    while sn:
        if fn & 1 or fn == sn:
            steps.append(True)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            steps.append(False)
        fn, sn = fn >> 1, sn >> 1
    return steps


def root_from_inclusion_proof(
    *, leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` implies for ``leaf_hash`` at ``leaf_index`` (for implementers).

    Hazardous on its own: the result proves nothing until it is compared with a trusted root.
    Use :func:`verify_inclusion` unless you need the root itself.

    :raises MalformedInput: a hash that is not 32 bytes, or a non-integer index or size.
    :raises ProofInvalid: ``leaf_index >= tree_size``, a size outside uint64, or a proof of the
        wrong length.
    """
    index = _require_index(leaf_index, "leaf index")
    size = _require_size(tree_size, "tree size")
    node = _require_hash(leaf_hash, "leaf hash")
    hashes = _require_proof(proof)
    if index >= size:
        raise ProofInvalid(
            f"inclusion proof: leaf index {index} is not below tree size {size}",
            code="merkle.index_out_of_range",
        )
    steps = _inclusion_steps(index, size)
    if len(hashes) != len(steps):
        raise ProofInvalid(
            f"inclusion proof: {len(hashes)} hashes, expected {len(steps)}",
            code="merkle.proof_length",
        )
    _require_hashes(hashes)
    for sibling_is_left, sibling in zip(steps, hashes, strict=True):
        node = hash_children(sibling, node) if sibling_is_left else hash_children(node, sibling)
    return node


def verify_inclusion(
    *,
    leaf_index: int,
    tree_size: int,
    leaf_hash: bytes,
    proof: Sequence[bytes],
    root_hash: bytes,
) -> None:
    """Check that ``leaf_hash`` is leaf ``leaf_index`` of the tree of ``tree_size``, ``root_hash``.

    :raises MalformedInput: a hash that is not 32 bytes, or a non-integer index or size.
    :raises ProofInvalid: out-of-range index or size, wrong proof length, or root mismatch
        (``merkle.root_mismatch``).
    """
    expected = _require_hash(root_hash, "root hash")
    computed = root_from_inclusion_proof(
        leaf_index=leaf_index, tree_size=tree_size, leaf_hash=leaf_hash, proof=proof
    )
    if computed != expected:
        raise ProofInvalid(
            "inclusion proof: computed root does not match", code="merkle.root_mismatch"
        )


def _consistency_steps(start: int, end: int, size: int) -> tuple[bool, list[tuple[bool, bool]]]:
    """The index walk of the subtree consistency verifier, without the hashing.

    Returns whether the first proof element is the seed node, and for each later element
    ``(is_left_sibling, also_folds_into_subtree_root)``. It follows
    draft-ietf-plants-merkle-tree-certs §4.4.3, which is RFC 9162 §2.1.4.2 generalised from
    ``[0, first)`` to any subtree ``[start, end)``; ``fn``/``sn`` walk the subtree's first and
    last leaf and ``tn`` the tree's last leaf.
    """
    fn, sn, tn = start, end - 1, size - 1
    if sn == tn:
        while fn != sn:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    else:
        while fn != sn and sn & 1:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    seeded_from_proof = fn != sn
    steps: list[tuple[bool, bool]] = []
    while tn:
        if sn & 1 or sn == tn:
            steps.append((True, fn < sn))
            while not sn & 1:
                fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
        else:
            steps.append((False, False))
        fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    return seeded_from_proof, steps


def _root_from_consistency_proof(
    start: int, end: int, size: int, hashes: tuple[bytes, ...], subtree_hash: bytes
) -> bytes:
    seeded_from_proof, steps = _consistency_steps(start, end, size)
    expected_length = int(seeded_from_proof) + len(steps)
    if len(hashes) != expected_length:
        raise ProofInvalid(
            f"consistency proof: {len(hashes)} hashes, expected {expected_length}",
            code="merkle.proof_length",
        )
    _require_hashes(hashes)
    seed, rest = (hashes[0], hashes[1:]) if seeded_from_proof else (subtree_hash, hashes)
    first, second = seed, seed
    for (sibling_is_left, folds_first), sibling in zip(steps, rest, strict=True):
        if sibling_is_left:
            if folds_first:
                first = hash_children(sibling, first)
            second = hash_children(sibling, second)
        else:
            second = hash_children(second, sibling)
    if first != subtree_hash:
        raise ProofInvalid(
            f"consistency proof: computed root of [{start}, {end}) does not match",
            code="merkle.root_mismatch",
        )
    return second


def verify_consistency(
    *,
    first_size: int,
    second_size: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree of ``second_size`` extends that of ``first_size`` (RFC 9162 §2.1.4.2).

    Equal sizes need an empty proof and equal roots. ``first_size == 0`` is always refused: a
    caller that starts from an empty tree accepts the new tree without calling this.

    :raises MalformedInput: a hash that is not 32 bytes, or a non-integer size.
    :raises ProofInvalid: ``merkle.empty_first_tree``, ``merkle.bad_size`` (second < first or not
        uint64), ``merkle.proof_length`` or ``merkle.root_mismatch``.
    """
    first = _require_size(first_size, "first size")
    second = _require_size(second_size, "second size")
    hashes = _require_proof(proof)
    if first == 0:
        raise ProofInvalid(
            "consistency proof: refused from the empty tree", code="merkle.empty_first_tree"
        )
    if second < first:
        raise ProofInvalid(
            f"consistency proof: second size {second} is below first size {first}",
            code="merkle.bad_size",
        )
    if first == second:
        # Nothing is hashed: the claim is only that the two roots are the same value. The
        # reference vectors use short filler strings here and expect acceptance, so the 32-byte
        # rule applies to the hashes a computation consumes, not to this comparison.
        if hashes:
            raise ProofInvalid(
                "consistency proof: equal sizes take an empty proof", code="merkle.proof_length"
            )
        if not isinstance(first_root, bytes) or first_root != second_root:
            raise ProofInvalid(
                "consistency proof: equal sizes with different roots", code="merkle.root_mismatch"
            )
        return
    old_root = _require_hash(first_root, "first root")
    new_root = _require_hash(second_root, "second root")
    computed = _root_from_consistency_proof(0, first, second, hashes, old_root)
    if computed != new_root:
        raise ProofInvalid(
            "consistency proof: computed second root does not match", code="merkle.root_mismatch"
        )


def verify_subtree_inclusion(
    *,
    leaf_index: int,
    start: int,
    end: int,
    leaf_hash: bytes,
    proof: Sequence[bytes],
    subtree_hash: bytes,
) -> None:
    """Check that leaf ``leaf_index`` (a log index) is in the subtree ``[start, end)``.

    draft-ietf-plants-merkle-tree-certs §4.3: the ordinary inclusion proof of
    ``leaf_index - start`` in a tree of ``end - start`` leaves, against the subtree's hash.

    :raises MalformedInput: a hash that is not 32 bytes, or a non-integer index or bound.
    :raises ProofInvalid: ``merkle.bad_subtree``, ``merkle.index_out_of_range``,
        ``merkle.proof_length`` or ``merkle.root_mismatch``.
    """
    index = _require_index(leaf_index, "leaf index")
    first = _require_size(start, "subtree start")
    last = _require_size(end, "subtree end")
    if not _is_valid_subtree(first, last):
        raise ProofInvalid(f"subtree [{first}, {last}) is not valid", code="merkle.bad_subtree")
    if not first <= index < last:
        raise ProofInvalid(
            f"subtree inclusion: leaf index {index} is outside [{first}, {last})",
            code="merkle.index_out_of_range",
        )
    verify_inclusion(
        leaf_index=index - first,
        tree_size=last - first,
        leaf_hash=leaf_hash,
        proof=proof,
        root_hash=subtree_hash,
    )


def verify_subtree_consistency(
    *,
    start: int,
    end: int,
    tree_size: int,
    proof: Sequence[bytes],
    subtree_hash: bytes,
    root_hash: bytes,
) -> None:
    """Check that the subtree ``[start, end)``, ``subtree_hash``, is in the tree of ``tree_size``.

    draft-ietf-plants-merkle-tree-certs §4.4. With ``start == 0`` this is a consistency proof.
    An empty subtree (``start == end <= tree_size``) is accepted only with an empty proof and
    ``subtree_hash == EMPTY_ROOT``, as the reference vectors require; it proves nothing about
    the tree, so ``root_hash`` is not compared.

    :raises MalformedInput: a hash that is not 32 bytes, or a non-integer bound or size.
    :raises ProofInvalid: ``merkle.bad_subtree``, ``merkle.bad_size`` (end beyond the tree),
        ``merkle.proof_length`` or ``merkle.root_mismatch``.
    """
    first = _require_size(start, "subtree start")
    last = _require_size(end, "subtree end")
    size = _require_size(tree_size, "tree size")
    hashes = _require_proof(proof)
    if last > size:
        raise ProofInvalid(
            f"subtree consistency: end {last} is beyond tree size {size}", code="merkle.bad_size"
        )
    if first == last:
        if hashes:
            raise ProofInvalid(
                "subtree consistency: an empty subtree takes an empty proof",
                code="merkle.proof_length",
            )
        if subtree_hash != EMPTY_ROOT:
            raise ProofInvalid(
                "subtree consistency: an empty subtree's hash must be the empty root",
                code="merkle.root_mismatch",
            )
        return
    if not _is_valid_subtree(first, last):
        raise ProofInvalid(f"subtree [{first}, {last}) is not valid", code="merkle.bad_subtree")
    if first == 0 and last == size:
        # The subtree is the whole tree: as with equal-size consistency, nothing is hashed.
        if hashes:
            raise ProofInvalid(
                "subtree consistency: the whole tree takes an empty proof",
                code="merkle.proof_length",
            )
        if not isinstance(subtree_hash, bytes) or subtree_hash != root_hash:
            raise ProofInvalid(
                "subtree consistency: whole-tree subtree hash differs from the root",
                code="merkle.root_mismatch",
            )
        return
    node = _require_hash(subtree_hash, "subtree hash")
    tree_root = _require_hash(root_hash, "root hash")
    computed = _root_from_consistency_proof(first, last, size, hashes, node)
    if computed != tree_root:
        raise ProofInvalid(
            "subtree consistency: computed tree root does not match", code="merkle.root_mismatch"
        )


# -- building roots and proofs from stored nodes -----------------------------------------------


class NodeReader(Protocol):
    """A store of perfect-subtree hashes, keyed by ``(level, index)``.

    Node ``(level, index)`` covers leaves ``[index·2^level, (index+1)·2^level)``.

    Level 0 holds the leaf hashes. Implementations MUST return every node that is complete in
    the tree they hold, and MUST raise a :class:`~tallystick.verifier.errors.TallystickError` for
    one they do not hold.
    """

    def get_node(self, level: int, index: int) -> bytes:
        """The 32-byte hash of node ``(level, index)``."""
        ...


class ProofBuilder:
    """Roots and proofs for any tree size up to ``size``, from a :class:`NodeReader`'s nodes.

    Every call reads O(log n) stored nodes. Right-border nodes that are not complete at the
    requested size ("ephemeral" nodes) are folded from stored children, never stored.
    """

    __slots__ = ("_reader", "_size")

    def __init__(self, reader: NodeReader, *, size: int) -> None:
        """Build over ``reader``, which holds every complete node of a tree of ``size`` leaves."""
        self._reader = reader
        self._size = _require_size(size, "stored size")

    def _check_size(self, size: int, what: str) -> int:
        checked = _require_size(size, what)
        if checked > self._size:
            raise ProofInvalid(
                f"{what} {checked} is beyond the stored tree of {self._size}",
                code="merkle.bad_size",
            )
        return checked

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``, a valid subtree: stored nodes folded right to left."""
        nodes: list[bytes] = []
        while start < end:
            # The largest power of two <= the width; in a valid subtree, `start` is aligned to it.
            level = (end - start).bit_length() - 1
            nodes.append(self._reader.get_node(level, start >> level))
            start += 1 << level
        node = nodes.pop()
        while nodes:
            node = hash_children(nodes.pop(), node)
        return node

    def _path(self, index: int, start: int, end: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 ``PATH(index, D[start:end])``, leaf side first."""
        path: list[bytes] = []
        while end - start > 1:
            middle = start + _largest_power_of_two_below(end - start)
            if index < middle:
                path.append(self._range_hash(middle, end))
                end = middle
            else:
                path.append(self._range_hash(start, middle))
                start = middle
        path.reverse()
        return path

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree of ``size`` leaves (default: the stored size).

        :raises ProofInvalid: a size beyond the stored tree (``merkle.bad_size``).
        """
        checked = self._size if size is None else self._check_size(size, "tree size")
        return EMPTY_ROOT if checked == 0 else self._range_hash(0, checked)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion proof of leaf ``index`` in the tree of ``size``.

        The proof runs leaf side first.

        :raises ProofInvalid: ``index >= size`` or a size beyond the stored tree.
        """
        checked_size = self._check_size(size, "tree size")
        checked_index = _require_index(index, "leaf index")
        if checked_index >= checked_size:
            raise ProofInvalid(
                f"inclusion proof: leaf index {checked_index} is not below size {checked_size}",
                code="merkle.index_out_of_range",
            )
        return self._path(checked_index, 0, checked_size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof from ``old_size`` to ``new_size``.

        :raises ProofInvalid: ``old_size == 0`` (``merkle.empty_first_tree``), ``old_size >
            new_size`` or a size beyond the stored tree (``merkle.bad_size``).
        """
        new = self._check_size(new_size, "new size")
        old = _require_size(old_size, "old size")
        if old == 0:
            raise ProofInvalid(
                "consistency proof: refused from the empty tree", code="merkle.empty_first_tree"
            )
        if old > new:
            raise ProofInvalid(
                f"consistency proof: old size {old} is beyond new size {new}",
                code="merkle.bad_size",
            )
        return self._subtree_proof(0, old, new)

    def subtree_inclusion_proof(self, index: int, start: int, end: int) -> list[bytes]:
        """Inclusion proof of leaf ``index`` (a log index) in the subtree ``[start, end)``.

        :raises ProofInvalid: an invalid subtree, an index outside it, or an end beyond the tree.
        """
        last = self._check_size(end, "subtree end")
        first = _require_size(start, "subtree start")
        checked_index = _require_index(index, "leaf index")
        if not _is_valid_subtree(first, last):
            raise ProofInvalid(f"subtree [{first}, {last}) is not valid", code="merkle.bad_subtree")
        if not first <= checked_index < last:
            raise ProofInvalid(
                f"subtree inclusion: leaf index {checked_index} is outside [{first}, {last})",
                code="merkle.index_out_of_range",
            )
        return self._path(checked_index, first, last)

    def subtree_consistency_proof(self, start: int, end: int, size: int) -> list[bytes]:
        """Proof that the subtree ``[start, end)`` is part of the tree of ``size`` (draft §4.4.1).

        :raises ProofInvalid: an invalid subtree, or an end or size beyond the tree.
        """
        checked_size = self._check_size(size, "tree size")
        last = _require_size(end, "subtree end")
        first = _require_size(start, "subtree start")
        if not _is_valid_subtree(first, last):
            raise ProofInvalid(f"subtree [{first}, {last}) is not valid", code="merkle.bad_subtree")
        if last > checked_size:
            raise ProofInvalid(
                f"subtree consistency: end {last} is beyond tree size {checked_size}",
                code="merkle.bad_size",
            )
        return self._subtree_proof(first, last, checked_size)

    def _subtree_proof(self, start: int, end: int, size: int) -> list[bytes]:
        """``SUBTREE_PROOF(start, end, D[0:size])``; ``start == 0`` gives RFC 9162 ``PROOF``."""
        proof: list[bytes] = []
        low, high = 0, size
        # True while the subtree is one the verifier already holds the hash of (RFC 9162 "b").
        known = True
        while not (start == low and end == high):
            middle = low + _largest_power_of_two_below(high - low)
            if end <= middle:
                proof.append(self._range_hash(middle, high))
                high = middle
            elif middle <= start:
                proof.append(self._range_hash(low, middle))
                low = middle
            else:
                # The subtree straddles the split, so it starts at `low`; continue with its
                # right part, whose hash the verifier does not hold.
                proof.append(self._range_hash(low, middle))
                low = start = middle
                known = False
        if not known:
            proof.append(self._range_hash(low, high))
        proof.reverse()
        return proof


class MerkleTree:
    """An in-memory, append-only RFC 9162 tree that stores every perfect-subtree hash.

    Level ``l`` is one flat ``bytearray`` of 32-byte nodes, so appending is amortised O(1) and a
    root or proof for any size up to :attr:`size` is O(log n) (see :class:`ProofBuilder`).
    """

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        """An empty tree."""
        self._levels: list[bytearray] = [bytearray()]

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash (see :func:`hash_leaf`) and return its index.

        :raises MalformedInput: not 32 bytes.
        """
        _require_hash(leaf_hash, "leaf hash")
        levels = self._levels
        index = self.size
        levels[0] += leaf_hash
        level, position = 0, index
        # A right child completes its parent: merge upwards like a binary counter.
        while position & 1:
            parent = hashlib.sha256(_NODE_PREFIX + levels[level][-2 * HASH_SIZE :]).digest()
            level, position = level + 1, position >> 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += parent
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> range:
        """Append many leaf hashes, all or none, and return their indices.

        :raises MalformedInput: any of them is not 32 bytes (nothing is appended).
        """
        batch = list(leaf_hashes)
        for position, value in enumerate(batch):
            _require_hash(value, f"leaf hash {position}")
        first = self.size
        for value in batch:
            self.append(value)
        return range(first, self.size)

    def get_node(self, level: int, index: int) -> bytes:
        """The stored hash of the perfect subtree ``(level, index)`` (:class:`NodeReader`).

        :raises ProofInvalid: the node is not complete in this tree.
        """
        if 0 <= level < len(self._levels) and index >= 0:
            offset = index * HASH_SIZE
            nodes = self._levels[level]
            if offset + HASH_SIZE <= len(nodes):
                return bytes(nodes[offset : offset + HASH_SIZE])
        raise ProofInvalid(
            f"node ({level}, {index}) is not stored", code="merkle.index_out_of_range"
        )

    def _builder(self) -> ProofBuilder:
        return ProofBuilder(self, size=self.size)

    def root(self, size: int | None = None) -> bytes:
        """The root at ``size`` leaves (default: now).

        :raises ProofInvalid: a size beyond the tree.
        """
        return self._builder().root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``size``, leaf side first.

        :raises ProofInvalid: ``index >= size`` or a size beyond the tree.
        """
        return self._builder().inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``new_size``.

        :raises ProofInvalid: ``old_size == 0``, ``old_size > new_size`` or a size beyond the tree.
        """
        return self._builder().consistency_proof(old_size, new_size)

    def subtree_inclusion_proof(self, index: int, start: int, end: int) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the subtree ``[start, end)``.

        :raises ProofInvalid: an invalid subtree or index.
        """
        return self._builder().subtree_inclusion_proof(index, start, end)

    def subtree_consistency_proof(self, start: int, end: int, size: int) -> list[bytes]:
        """Proof that the subtree ``[start, end)`` is part of the tree of ``size``.

        :raises ProofInvalid: an invalid subtree, or an end or size beyond the tree.
        """
        return self._builder().subtree_consistency_proof(start, end, size)


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 9162 root of a list of leaf hashes (``EMPTY_ROOT`` for none).

    :raises MalformedInput: a leaf hash that is not 32 bytes.
    """
    tree = MerkleTree()
    tree.extend(leaf_hashes)
    return tree.root()
