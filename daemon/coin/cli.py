"""``tallystick audit judge TRACES.jsonl [--seed S] [--json]``: audit traces end to end.

Registered through the ``tallystick.cli`` entry point (``register``) under ``audit``. For each
line ``{"id", "prompt", "reasoning", "answer"}`` (optionally ``"domain"``) it plays an honest
provider that commits to exactly that reasoning as its hidden tokens, then runs the whole
protocol as the auditor (commit, hold the head, challenge, open, verify, semantic checks,
length prior; :mod:`tallystick.daemon.coin.judge`) and prints one line per trace. With
``--json`` each line is a JSON object::

    {"id": str, "verdict": "pass" | "fail", "score": float | null,
     "opened_leaves": int, "reported_tokens": int | null}

``score`` is the calibrated semantic score (the largest robust z-score of the checks; the
audit fails above its domain's threshold); it is null, and ``verdict`` is ``"fail"``, when
the protocol itself rejected the commitment. Every line is validated before any work starts.
``--seed`` makes the nonces, keys and salts reproducible and fixes the heads' time at 0, so
a run repeats exactly (for benchmarks; real audits draw them from ``os.urandom``). Progress
shows on a terminal. Exit codes: 0 every trace passed, 1 at least one failed, 2 unreadable
input (with the first bad line's number and a ``coin.trace_malformed`` code).

``tallystick audit provider --key PATH [--listen HOST:PORT] [--origin NAME] [--public-url URL]``
serves the provider's side of CoIn audits (:mod:`tallystick.daemon.coin.provider_server`) until
SIGINT or SIGTERM. ``--key`` is an Ed25519 key: a PKCS#8 PEM (``tallystick keygen``; the heads
are signed under ``--origin``) or a C2SP note signing key ``PRIVATE+KEY+<name>+<id>+<key>``
(signed under its own name). A key file that group or others may access is refused. It prints
the provider's verifier key (``vkey <text>``) and where it listens (``listening <url>``), one
line each; exit codes: 0 stopped by a signal, 2 a bad key, address or option.
"""

from __future__ import annotations

import argparse
import json
import signal
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tallystick.verifier._cli import EXIT_OK, EXIT_REJECTED, SubcommandGroups, UsageError
from tallystick.verifier._progress import progress_for
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.coin import CoinOffer
from tallystick.verifier.errors import KeyInvalid, MalformedInput

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_ORIGIN",
    "cmd_judge",
    "cmd_provider",
    "load_provider_signer",
    "register",
]

#: Where ``audit provider`` listens unless told: loopback only.
DEFAULT_LISTEN: Final = "127.0.0.1:8790"
#: The key name (the heads' origin) of a PEM provider key without ``--origin``.
DEFAULT_ORIGIN: Final = "tallystick.provider/coin"
_SKEY_PREFIX: Final = "PRIVATE+KEY+"
#: Wildcard listen addresses, which no client can reach the server at (recognized, not bound).
_ALL_INTERFACES: Final = frozenset({"0.0.0.0", "::"})  # noqa: S104
_MAX_KEY_BYTES: Final = 64 << 10


def register(groups: SubcommandGroups) -> None:
    """Add ``judge`` and ``provider`` to the ``audit`` command group."""
    judge = groups["audit"].add_parser(
        "judge",
        help="audit traces end to end: honest commitment, challenge, openings, semantic checks",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 every trace passed, 1 at least one failed, 2 unreadable input.",
    )
    judge.add_argument("traces", metavar="TRACES.jsonl", help="one JSON trace a line, or -")
    judge.add_argument("--seed", type=int, metavar="S", help="reproducible nonces, keys and salts")
    judge.add_argument("--json", action="store_true", help="print one JSON object a line")
    judge.set_defaults(handler=cmd_judge)

    provider = groups["audit"].add_parser(
        "provider",
        help="serve the provider's side of audits: commit to hidden reasoning, open on challenge",
        description="A cooperating provider's CoIn server: POST /coin/v1/commit and "
        "POST /coin/v1/open, JSON over HTTP/1.1, commitments held in memory.",
        epilog="Exit codes: 0 stopped by SIGINT or SIGTERM, 2 a bad key, address or option.",
    )
    provider.add_argument(
        "--key",
        required=True,
        metavar="PATH",
        help="Ed25519 key: PKCS#8 PEM or a C2SP PRIVATE+KEY+... line (mode 0600 or stricter)",
    )
    provider.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    provider.add_argument(
        "--origin",
        metavar="NAME",
        help=f"key name for a PEM key, the heads' origin (default {DEFAULT_ORIGIN})",
    )
    provider.add_argument(
        "--public-url",
        metavar="URL",
        help="base URL clients reach this server at (behind a TLS proxy), for openings_url",
    )
    provider.set_defaults(handler=cmd_provider)


def _read_lines(spec: str) -> list[str]:
    try:
        if spec == "-":
            return sys.stdin.buffer.read().decode("utf-8").splitlines()
        return Path(spec).read_bytes().decode("utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {spec}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise MalformedInput(
            f"traces: not UTF-8 at byte {exc.start}", code="coin.trace_malformed"
        ) from exc


def cmd_judge(args: argparse.Namespace) -> int:
    """Judge every trace of ``args.traces``; see the module docstring.

    :raises MalformedInput: a bad line (``coin.trace_malformed``), before any trace is judged.
    :raises UsageError: an unreadable file.
    """
    import numpy as np
    from tallystick.verifier.checkpoint import NoteSigner
    from tallystick.verifier.keys import PrivateKey

    from .embedding import EmbeddingEngine
    from .judge import Auditor, judge_trace, read_traces, seeded_nonces
    from .tokenizer import default_tokenizer

    traces = read_traces(_read_lines(args.traces))
    rng = np.random.default_rng(args.seed)
    key = PrivateKey.generate() if args.seed is None else PrivateKey.from_seed(rng.bytes(32))
    signer = NoteSigner("judge.provider/coin", key)
    nonces: Callable[[], bytes] | None = None
    if args.seed is not None:
        nonces = seeded_nonces(args.seed)
    failed = 0
    with progress_for(as_json=args.json) as progress:
        progress.stage("loading the embedding model")
        auditor = Auditor(EmbeddingEngine(), default_tokenizer())
        progress.stage("judging")
        for done, trace in enumerate(traces):
            progress.update(done, len(traces))
            outcome = judge_trace(
                auditor,
                trace,
                signer=signer,
                draw_nonce=nonces,
                trace_secret=None if args.seed is None else rng.bytes(32),
                time_s=None if args.seed is None else 0,
            )
            failed += not outcome.passed
            line = {
                "id": trace.id,
                "verdict": "pass" if outcome.passed else "fail",
                "score": None if outcome.score is None else round(outcome.score, 4),
                "opened_leaves": outcome.opened_leaves,
                "reported_tokens": outcome.reported_tokens,
            }
            if args.json:
                print(json.dumps(line, ensure_ascii=False), flush=True)
            else:
                score = "-" if line["score"] is None else f"{line['score']:.3f}"
                print(
                    f"{trace.id}\t{line['verdict']}\tscore {score}\t"
                    f"opened {outcome.opened_leaves}\ttokens {outcome.reported_tokens}",
                    flush=True,
                )
        progress.update(len(traces), len(traces))
    return EXIT_REJECTED if failed else EXIT_OK


# -- audit provider -----------------------------------------------------------------------------


def load_provider_signer(path: Path, origin: str | None) -> NoteSigner:
    """The provider's note signer from a key file that only its owner may access.

    :raises UsageError: the file cannot be read, or group or others may access it.
    :raises KeyInvalid: not a PEM Ed25519 key nor a C2SP note signing key, or ``origin``
        differs from a C2SP key's own name.
    """
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"--key: {path} may be accessed by group or others (mode "
                f"{stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}"
            )
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--key: cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_BYTES:
        raise KeyInvalid(f"--key: {path} is too large for a key")
    if data.startswith(_SKEY_PREFIX.encode()):
        signer = NoteSigner.from_skey(data.decode("ascii", errors="replace").strip())
        if origin is not None and origin != signer.name:
            raise KeyInvalid(
                f"--origin {origin!r} differs from the key's own name {signer.name!r}",
                code="note.bad_skey",
            )
        return signer
    from tallystick.verifier.keys import PrivateKey

    return NoteSigner(origin or DEFAULT_ORIGIN, PrivateKey.from_pem(data))


def _listen_address(spec: str) -> tuple[str, int]:
    host, sep, port_text = spec.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--listen: expected HOST:PORT, got {spec!r}")
    return host, int(port_text)


def cmd_provider(args: argparse.Namespace) -> int:
    """Serve the provider's side of audits until SIGINT or SIGTERM; see the module docstring.

    :raises UsageError: an unreadable or exposed key file, a bad ``--listen``, or an address
        that cannot be bound.
    :raises TallystickError: a malformed key or ``--public-url``.
    """
    signer = load_provider_signer(Path(args.key), args.origin)  # before the slow model load
    host, port = _listen_address(args.listen)
    if host in _ALL_INTERFACES and args.public_url is None:
        raise UsageError(
            f"--listen {args.listen}: offers must name an address clients reach; "
            "pass --public-url (the URL of the TLS proxy in front of this server)"
        )
    from .embedding import EmbeddingEngine
    from .provider_server import OPEN_PATH, ProviderServer
    from .tokenizer import default_tokenizer

    if args.public_url is not None:  # refuse a URL offers cannot carry before the model loads
        CoinOffer("-", signer.vkey, b"", args.public_url.rstrip("/") + OPEN_PATH)

    print("loading the embedding model", file=sys.stderr, flush=True)
    engine = EmbeddingEngine()
    try:
        server = ProviderServer(
            engine, default_tokenizer(), signer, host=host, port=port, public_url=args.public_url
        )
    except OSError as exc:
        raise UsageError(f"--listen: cannot listen on {args.listen}: {exc.strerror}") from exc
    stop = threading.Event()
    previous = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with server:
            print(f"vkey {signer.vkey}", flush=True)
            print(f"listening {server.url}", flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
    print("stopped", file=sys.stderr, flush=True)
    return EXIT_OK
