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
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tallystick.verifier._cli import EXIT_OK, EXIT_REJECTED, SubcommandGroups, UsageError
from tallystick.verifier._progress import progress_for
from tallystick.verifier.errors import MalformedInput

__all__ = ["cmd_judge", "register"]


def register(groups: SubcommandGroups) -> None:
    """Add ``judge`` to the ``audit`` command group."""
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
