"""Every rejection Tallystick makes, as one typed hierarchy with stable codes.

::

    TallystickError                    code "tallystick.error"
    ├── MalformedInput                 bad bytes, JSON, base64, sizes, schema
    │   └── KeyInvalid                 a key that cannot be loaded or used
    ├── UnsupportedVersion             a version or algorithm this verifier does not speak
    ├── SignatureInvalid               a signature that does not verify
    ├── IdentityUnresolvable           no trusted key for the claimed issuer
    ├── ChainBroken                    a delegation chain whose structure is wrong
    ├── PolicyViolation                a well-formed chain that grants too much
    │   ├── ScopeInsufficient
    │   ├── DepthExceeded
    │   └── BudgetExceeded
    ├── Expired                        outside its validity window
    ├── Revoked                        a revoked token or key
    ├── ReplayDetected                 a token id seen before, or for another audience
    ├── ProofInvalid                   a Merkle inclusion or consistency proof that fails
    └── CheckpointInvalid              a signed note or checkpoint that fails

A ``code`` is a dotted string such as ``"hdp.signature_invalid"`` or
``"merkle.root_mismatch"``. Codes never change once released; tests assert them.
``step`` names the numbered verification step that failed, where the protocol
numbers its steps (HDP 0-5, AIP V1-V7).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BudgetExceeded",
    "ChainBroken",
    "CheckpointInvalid",
    "DepthExceeded",
    "Expired",
    "IdentityUnresolvable",
    "KeyInvalid",
    "MalformedInput",
    "PolicyViolation",
    "ProofInvalid",
    "ReplayDetected",
    "Revoked",
    "ScopeInsufficient",
    "SignatureInvalid",
    "TallystickError",
    "UnsupportedVersion",
]


class TallystickError(Exception):
    """Base of every Tallystick rejection; carries a stable machine-readable ``code``."""

    default_code: ClassVar[str] = "tallystick.error"

    def __init__(self, message: str, *, code: str | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        self.step: int | None = step

    @property
    def detail(self) -> str:
        """The human-readable message, in the form "what: why"."""
        return str(self)


class MalformedInput(TallystickError):
    """The input could not be parsed or does not match its schema."""

    default_code = "input.malformed"


class KeyInvalid(MalformedInput):
    """A key file or key text that cannot be loaded, or has the wrong length."""

    default_code = "key.invalid"


class UnsupportedVersion(TallystickError):
    """A protocol version or algorithm this verifier does not implement."""

    default_code = "input.unsupported_version"


class SignatureInvalid(TallystickError):
    """A signature that does not verify under the expected key."""

    default_code = "signature.invalid"


class IdentityUnresolvable(TallystickError):
    """No trusted key is known for the identity the input claims."""

    default_code = "identity.unresolvable"


class ChainBroken(TallystickError):
    """A delegation chain whose structure is inconsistent.

    ``hop`` is the 1-based index of the hop or block that failed, when known.
    """

    default_code = "chain.broken"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        step: int | None = None,
        hop: int | None = None,
    ) -> None:
        super().__init__(message, code=code, step=step)
        self.hop = hop


class PolicyViolation(TallystickError):
    """A well-formed, authentic chain that asks for more than it was granted."""

    default_code = "policy.violation"


class ScopeInsufficient(PolicyViolation):
    """A tool, domain or scope outside what the chain grants."""

    default_code = "policy.scope_insufficient"


class DepthExceeded(PolicyViolation):
    """More delegation hops than the root allows."""

    default_code = "policy.depth_exceeded"


class BudgetExceeded(PolicyViolation):
    """A budget ceiling that widens, or is negative."""

    default_code = "policy.budget_exceeded"


class Expired(TallystickError):
    """Used outside its validity window (expired, or not yet valid)."""

    default_code = "time.expired"


class Revoked(TallystickError):
    """A token or key that has been revoked."""

    default_code = "revoked"


class ReplayDetected(TallystickError):
    """A token id presented twice, or to an audience it was not issued for."""

    default_code = "replay.detected"


class ProofInvalid(TallystickError):
    """A Merkle inclusion or consistency proof that does not verify."""

    default_code = "merkle.proof_invalid"


class CheckpointInvalid(TallystickError):
    """A signed note or checkpoint that cannot be parsed or does not verify."""

    default_code = "checkpoint.invalid"
