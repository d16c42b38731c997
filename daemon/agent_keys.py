"""The keys tallystickd signs delegations with: one issuer key and one key per agent.

::

    DATA_DIR/issuer.key          the principal's (issuer's) key, created on first use, 0600
    DATA_DIR/issuer.pub          its public key, one line of unpadded base64url
    DATA_DIR/agents/<id>.key     each configured agent's own key, created on first start, 0600

The issuer key signs HDP roots and hops and AIP root blocks; an agent's key co-signs the HDP
hops and signs the AIP delegation blocks of that agent, and only of that agent: the daemon
picks it by the caller's transport identity. No key is ever sent to an agent. Each file is
written to a temporary name, fsynced and renamed, so a crash leaves either no key or a whole one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from tallystick.verifier.errors import IdentityUnresolvable
from tallystick.verifier.keys import PrivateKey, PublicKey, load_private_key

from .files import replace_bytes, replace_private_key

__all__ = ["ISSUER_KEY_FILE", "ISSUER_PUB_FILE", "AgentKeys"]

ISSUER_KEY_FILE: Final = "issuer.key"
ISSUER_PUB_FILE: Final = "issuer.pub"
_AGENTS_DIR: Final = "agents"
_PUB_MODE: Final = 0o644


def _create(path: Path) -> PrivateKey:
    """A fresh key at ``path`` (0600), durable before it is returned."""
    key = PrivateKey.generate()
    replace_private_key(path, key)
    return key


def _load_or_create(path: Path) -> PrivateKey:
    """:raises KeyInvalid: the file exists but is not an Ed25519 PEM key."""
    if path.exists():
        return load_private_key(path)
    return _create(path)


def _write_pub(path: Path, public_key: PublicKey) -> None:
    replace_bytes(path, (public_key.to_b64url() + "\n").encode("ascii"), mode=_PUB_MODE)


class AgentKeys:
    """The issuer key (loaded or created on first use) and every configured agent's key."""

    def __init__(self, data_dir: Path, agents: Mapping[str, PrivateKey]) -> None:
        """Use :meth:`open`."""
        self._data_dir = data_dir
        self._agents = dict(agents)
        self._issuer: PrivateKey | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path, agents: Iterable[str]) -> AgentKeys:
        """Load each agent's key from ``DATA_DIR/agents/<id>.key``, creating missing ones.

        :raises KeyInvalid: a key file that is not an Ed25519 PEM key.
        """
        keys: dict[str, PrivateKey] = {}
        folder = data_dir / _AGENTS_DIR
        for agent in sorted(agents):
            if not folder.exists():
                folder.mkdir()
                folder.chmod(0o711)  # as the daemon makes it: agents reach their socket only
            keys[agent] = _load_or_create(folder / f"{agent}.key")
        return cls(data_dir, keys)

    @property
    def agents(self) -> frozenset[str]:
        """The configured agent ids."""
        return frozenset(self._agents)

    def issuer(self) -> PrivateKey:
        """The issuer key, created with ``issuer.pub`` on first use.

        :raises KeyInvalid: ``issuer.key`` exists but cannot be loaded.
        """
        with self._lock:
            if self._issuer is None:
                path = self._data_dir / ISSUER_KEY_FILE
                key = _load_or_create(path)
                pub = self._data_dir / ISSUER_PUB_FILE
                if not pub.exists():
                    _write_pub(pub, key.public_key)
                self._issuer = key
            return self._issuer

    def agent(self, agent: str) -> PrivateKey:
        """The key of a configured agent.

        :raises IdentityUnresolvable: not a configured agent (``delegation.unknown_agent``).
        """
        key = self._agents.get(agent)
        if key is None:
            raise IdentityUnresolvable(
                f"agent {agent[:80]!r}: not a configured agent", code="delegation.unknown_agent"
            )
        return key

    def public_keys(self) -> dict[str, PublicKey]:
        """Every agent's public key, by agent id."""
        return {agent: key.public_key for agent, key in self._agents.items()}
