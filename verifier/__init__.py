"""tallystick.verifier: the offline core, for auditors and for every other Tallystick part.

Verify a delegation chain and a log inclusion proof with nothing but public keys::

    >>> from tallystick.verifier import hdp, merkle
    >>> from tallystick.verifier.keys import PrivateKey
    >>> issuer = PrivateKey.from_seed(bytes(32))
    >>> token = hdp.issue_root(key=issuer, principal_id="alice@example.com", session_id="s1",
    ...     intent="Summarise the Q3 report", issued_at_ms=1_700_000_000_000,
    ...     token_id="123e4567-e89b-42d3-a456-426614174000")
    >>> token = hdp.extend(token, key=issuer, agent_id="searcher", action_summary="search",
    ...     timestamp_ms=1_700_000_000_500)
    >>> hdp.verify(token.to_json(), public_key=issuer.public_key).hop_count
    1
    >>> tree = merkle.MerkleTree()
    >>> leaves = [merkle.hash_leaf(token.to_json().encode()), merkle.hash_leaf(b"next entry")]
    >>> tree.extend(leaves)
    range(0, 2)
    >>> merkle.verify_inclusion(leaf_index=0, tree_size=2, leaf_hash=leaves[0],
    ...     proof=tree.inclusion_proof(0, 2), root_hash=tree.root())

Modules:

- :mod:`~tallystick.verifier.errors`: every rejection, with a stable ``code``.
- :mod:`~tallystick.verifier.canonical`: strict JSON parsing and RFC 8785 canonical bytes.
- :mod:`~tallystick.verifier.keys`: Ed25519 keys, key ids and signed key documents.
- :mod:`~tallystick.verifier.hdp`: HDP delegation tokens (draft-03) and the Tallystick profile.
- :mod:`~tallystick.verifier.aip`: AIP capability tokens, compact (JWT) and chained (Biscuit).
- :mod:`~tallystick.verifier.merkle`: RFC 9162 Merkle trees, inclusion and consistency proofs.
- :mod:`~tallystick.verifier.checkpoint`: C2SP signed notes and log checkpoints.
- :mod:`~tallystick.verifier.logentry`: the exact bytes and kinds of log entries.
- :mod:`~tallystick.verifier.logbundle`: offline verification of an exported log bundle.
- :mod:`~tallystick.verifier.usage`: provider usage objects in one normalized view, OTel names.
- :mod:`~tallystick.verifier.pricing`: the price table; unknown models are unknown, never free.
- :mod:`~tallystick.verifier.invoice`: provider usage exports (OpenAI, per-request CSV).
- :mod:`~tallystick.verifier.billing`: reconciling an invoice with the signed records.
- :mod:`~tallystick.verifier.provenance`: an entry's chain back to the human principal.
- :mod:`~tallystick.verifier.report`: a self-contained HTML report of an exported log.
- :mod:`~tallystick.verifier.coin`: CoIn reasoning-token audits: leaves, signed head, challenge,
  evidence.

``tallystick.verifier._internal`` holds machinery with no compatibility promise.
"""

from . import (
    aip,
    billing,
    canonical,
    checkpoint,
    coin,
    errors,
    hdp,
    invoice,
    keys,
    logbundle,
    logentry,
    merkle,
    pricing,
    provenance,
    report,
    usage,
)

__all__ = [
    "__version__",
    "aip",
    "billing",
    "canonical",
    "checkpoint",
    "coin",
    "errors",
    "hdp",
    "invoice",
    "keys",
    "logbundle",
    "logentry",
    "merkle",
    "pricing",
    "provenance",
    "report",
    "usage",
]

__version__ = "0.1.0"
