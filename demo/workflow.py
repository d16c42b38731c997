"""The end-to-end demo (``make demo``): agents spend money, the bill is checked offline.

What it runs, all on this machine:

1. ``tallystickd`` (a subprocess) with three agents, each on its own socket; a CoIn provider
   server (:class:`~tallystick.daemon.coin.provider_server.ProviderServer`, loopback, a fresh
   key); and :class:`~demo.llm_server.LLMServer`, an OpenAI-compatible server on loopback that
   answers from ``../shared/data/reasoning_traces/dev.jsonl`` with the reasoning hidden and
   billed, as a cooperating provider: each answer, streamed or not, commits to its hidden
   reasoning at the provider server and carries the offer;
2. a principal (alice) authorizes a session once; the orchestrator plans with one LLM call and
   hands the work to two sub-agents, each on a worker thread, passing the token in the
   ``HDP-Token`` header: the researcher first, then (with the research done) the writer; each
   sub-agent adds its own signed hop; the researcher calls the LLM and a ``web_search`` tool,
   the writer calls the LLM with a streamed answer. Every call goes through the real
   ``openai`` client, wrapped by :func:`tallystick.sdk.wrap.wrap`, and each offer is audited
   by the agent's sidecar in the background (:class:`~tallystick.sdk.wrap.CoinAuditor`);
3. the LLM server cheats twice: it pads the hidden reasoning of one researcher call with
   copies of itself (billed honestly: the bill agrees with the log, only the audit tells), and
   over-bills the other researcher call on its invoice (a per-request CSV);
4. the daemon stops (SIGTERM), the log is exported and checked OFFLINE with the ``tallystick``
   CLI: ``billing reconcile`` against the invoice (the over-billed call, and the padded call's
   failed audit), ``provenance`` of the over-billed call and ``report --html``.

``python -m demo.workflow OUT_DIR`` prints a few lines on what was found; ``run`` returns the
same facts for tests/test_demo_e2e.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from openai import OpenAI
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.provider_server import ProviderServer
from tallystick.daemon.coin.tokenizer import default_tokenizer
from tallystick.sdk.client import Client
from tallystick.sdk.context import authorize, delegate, run_in_context, use
from tallystick.sdk.http import from_headers, headers
from tallystick.sdk.recount import Recounter
from tallystick.sdk.tools import tool
from tallystick.sdk.wrap import CoinAuditor, CoinAuditOutcome, wrap
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.keys import PrivateKey

from demo.llm_server import DEFAULT_TRACES, LLMServer, Trace, load_traces

__all__ = ["DemoResult", "run"]

PRINCIPAL = "alice@example.com"
SESSION = "demo-q3-summary"
AGENTS = ("orchestrator", "researcher", "writer")
MODEL = "o4-mini"
#: What each sub-agent's hop says it does (its action summary; prompts are never logged).
ROLES = {"researcher": "gather the Q3 figures", "writer": "draft the summary"}
#: The local server counts with cl100k_base, the one encoding available offline.
RECOUNT = Recounter({MODEL: "cl100k_base"})
#: The orchestrator's hop in the session's chain: both sub-agents' hops hang under it.
ORCHESTRATOR_HOP = 1
#: Output tokens the LLM server adds to one researcher call on its invoice.
OVERBILLED_TOKENS = 1_500
#: The orchestrator's one call, then each sub-agent's calls in order.
PLAN = "Plan a three-step summary of a quarterly report."
WORK = {
    "researcher": (
        "What is 17% of 2,340?",
        "List three causes of seasonal revenue swings.",
    ),
    "writer": ("Write one paragraph summarising a revenue increase.",),
}
#: The call whose hidden reasoning the provider pads (a math trace of 845 tokens: three whole
#: blocks, written twice) and the call it over-bills on its invoice.
INFLATED_PROMPT, OVERBILLED_PROMPT = WORK["researcher"]
#: The dev trace (its ``id`` in dev.jsonl) that answers each prompt. The audit routes a call to
#: a calibration domain by its prompt and judges the reasoning's length and relevance against
#: it: a long math trace answering the planning prompt reads as an over-long safety reply and
#: fails honestly. These pairs score at most 1.6 honest (thresholds: safety 3.06, math 4.87);
#: the padded one 6.7 (duplicate_blocks and repeated_spans).
ANSWERED_BY = {
    PLAN: "star1-11806",
    INFLATED_PROMPT: "skyt1-correct-5K-32B-ck140-aime24-7",
    OVERBILLED_PROMPT: "skyt1-correct-5K-14B-amc23-2",
    WORK["writer"][0]: "star1-18536",
}
#: The demo provider's note key name: the origin line of the heads it signs.
PROVIDER_ORIGIN = "llm.demo.local/coin"
#: Seconds to wait for an agent's audits (the daemon loads its embedding model on the first).
AUDIT_WAIT_S = 300.0


@dataclass(frozen=True)
class DemoResult:
    """What the demo found, for the printed summary and the test."""

    out_dir: Path
    recorded_calls: int
    #: Each agent's LLM calls (the providers' request ids), in call order.
    request_ids: Mapping[str, tuple[str, ...]]
    overbilled_request_id: str
    #: The call whose hidden reasoning the provider padded.
    inflated_request_id: str
    #: The outcome of each CoIn audit (every call, the writer's stream included), by call
    #: request id.
    coin_audits: Mapping[str, CoinAuditOutcome]
    reconcile: dict[str, Any]
    reconcile_exit: int
    provenance_entry: int
    provenance: dict[str, Any]
    provenance_exit: int
    report: Path


@contextlib.contextmanager
def _daemon(data_dir: Path) -> Iterator[Path]:
    """``tallystickd`` on ``data_dir`` until the block ends (SIGTERM: drain, final checkpoint)."""
    config = data_dir.parent / "tallystickd.toml"
    lines = [f'data_dir = "{data_dir}"', 'log_level = "warning"']
    for agent in AGENTS:
        lines += [f"[agents.{agent}]", f'principals = ["{PRINCIPAL}"]']
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tallystick.daemon", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        for line in daemon.stdout:
            if line.strip() == "ready":
                break
        else:
            raise RuntimeError(f"tallystickd exited with {daemon.wait()} before it was ready")
        yield data_dir
    finally:
        daemon.terminate()
        if daemon.wait(timeout=60) != 0:
            raise RuntimeError(f"tallystickd exited with {daemon.returncode}")


@contextlib.contextmanager
def _provider(cache_dir: Path) -> Iterator[ProviderServer]:
    """The cooperating provider's CoIn server on loopback, under a key made for this run."""
    engine = EmbeddingEngine(cache_dir=cache_dir)
    signer = NoteSigner(PROVIDER_ORIGIN, PrivateKey.generate())
    with ProviderServer(engine, default_tokenizer(), signer) as server:
        yield server


def _cast(traces: tuple[Trace, ...]) -> tuple[Trace, ...]:
    """``traces`` with the trace each demo prompt is answered by (:data:`ANSWERED_BY`) asked
    that prompt.

    :raises ValueError: a trace the demo needs is not in ``traces``.
    """
    by_id = {trace.id: trace for trace in traces}
    missing = sorted(set(ANSWERED_BY.values()) - set(by_id))
    if missing:
        raise ValueError(f"traces: the demo answers from {missing}, not in the file")
    return tuple(replace(by_id[i], prompt=prompt) for prompt, i in ANSWERED_BY.items()) + traces


def _agent_client(data_dir: Path, agent: str) -> Client:
    return Client(f"unix:{data_dir / 'agents' / f'{agent}.sock'}")


def _audited(auditor: CoinAuditor) -> list[CoinAuditOutcome]:
    """The auditor's outcomes once its audits are done.

    :raises RuntimeError: they were not done within :data:`AUDIT_WAIT_S`.
    """
    if not auditor.wait(AUDIT_WAIT_S):
        raise RuntimeError(f"coin audits still running after {AUDIT_WAIT_S:.0f} s")
    return auditor.outcomes()


def _ask(llm: Any, prompt: str, *, stream: bool = False) -> str:
    """One chat call; returns the provider's request id (the response id)."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        return str(llm.chat.completions.create(model=MODEL, messages=messages).id)
    chunks = list(llm.chat.completions.create(model=MODEL, messages=messages, stream=True))
    return str(chunks[0].id)


def _sub_agent(
    data_dir: Path,
    base_url: str,
    agent: str,
    incoming: Mapping[str, str],
    handed_back: queue.Queue[dict[str, str]],
    prompts: tuple[str, ...],
) -> tuple[list[str], list[CoinAuditOutcome]]:
    """A sub-agent: accept the token from the HTTP headers, add its hop, do its calls; their
    request ids and the outcomes of their audits.

    An HDP chain grows one version at a time, so the sub-agent answers with its extended token
    (in the headers it would send back) before it starts working: the orchestrator hands the
    next sub-agent that version.
    """
    with _agent_client(data_dir, agent) as sidecar:
        received = from_headers(sidecar, incoming)
        auditor = CoinAuditor(sidecar)
        llm = wrap(
            OpenAI(base_url=base_url, api_key="demo", max_retries=0),
            recorder=sidecar,
            recount=RECOUNT,
            coin_audit=auditor,
        )

        @tool("web_search", client=sidecar)
        def web_search(query: str) -> str:
            return f"3 results for {query!r}"

        summary = f"{agent}: {ROLES[agent]}"
        with use(received), delegate(sidecar, summary, parent_hop=ORCHESTRATOR_HOP):
            handed_back.put(headers())
            ids = [_ask(llm, prompt, stream=agent == "writer") for prompt in prompts]
            if agent == "researcher":
                web_search("Q3 revenue by region")
            audits = _audited(auditor)
            sidecar.flush()
    return ids, audits


def _tallystick(*args: str) -> tuple[int, str]:
    """Run the offline ``tallystick`` CLI of this environment; its exit code and stdout."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tallystick"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout


def run(out_dir: Path, traces: Path = DEFAULT_TRACES) -> DemoResult:
    """Run the whole demo under ``out_dir`` (created; must not hold an earlier run's log).

    :raises RuntimeError: the daemon or a CLI step failed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "var"
    with (
        _provider(out_dir / "provider-cache") as provider,
        LLMServer(_cast(load_traces(traces)), coin_provider_url=provider.url) as server,
        _daemon(data_dir),
    ):
        server.inflate_reasoning(INFLATED_PROMPT)
        with _agent_client(data_dir, "orchestrator") as sidecar:
            auditor = CoinAuditor(sidecar)
            llm = wrap(
                OpenAI(base_url=server.base_url, api_key="demo", max_retries=0),
                recorder=sidecar,
                recount=RECOUNT,
                coin_audit=auditor,
            )
            with (
                authorize(
                    sidecar,
                    PRINCIPAL,
                    SESSION,
                    "Summarise the Q3 report",
                    authorized_tools=["web_search"],
                    agents=AGENTS,
                ),
                delegate(sidecar, "orchestrator: plan the Q3 summary", agent_type="orchestrator"),
            ):
                request_ids: dict[str, tuple[str, ...]] = {"orchestrator": (_ask(llm, PLAN),)}
                latest = headers()
                audits: list[CoinAuditOutcome] = []
                with ThreadPoolExecutor(1) as pool:
                    for agent, prompts in WORK.items():
                        handed_back: queue.Queue[dict[str, str]] = queue.Queue(maxsize=1)
                        future = run_in_context(
                            pool,
                            _sub_agent,
                            data_dir,
                            server.base_url,
                            agent,
                            latest,
                            handed_back,
                            prompts,
                        )
                        latest = handed_back.get(timeout=60)
                        # The writer drafts from the research; and the provenance of a call is
                        # the chain as logged before it: the researcher's calls stay under the
                        # researcher's hop, not the writer's.
                        ids, outcomes = future.result()
                        request_ids[agent] = tuple(ids)
                        audits += outcomes
                audits += _audited(auditor)
            sidecar.flush()
        inflated, overbilled = request_ids["researcher"]
        server.overbill(overbilled, OVERBILLED_TOKENS)
        invoice = out_dir / "invoice.csv"
        server.write_csv(invoice)

    bundle, log_key = out_dir / "log.bundle", data_dir / "log.pub"
    code, _ = _tallystick("log", "export", "--data-dir", str(data_dir), "--out", str(bundle))
    if code != 0:
        raise RuntimeError(f"tallystick log export exited with {code}")
    reconcile_exit, text = _tallystick(
        "billing",
        "reconcile",
        str(bundle),
        "--invoice",
        str(invoice),
        "--log-key",
        str(log_key),
        "--json",
    )
    reconcile = json.loads(text)
    entry = next(
        int(index)
        for finding in reconcile["findings"]
        if finding.get("request_id") == overbilled
        for index in finding["entries"]
    )
    provenance_exit, text = _tallystick(
        "provenance", str(bundle), "--entry", str(entry), "--log-key", str(log_key), "--json"
    )
    report = out_dir / "report.html"
    code, _ = _tallystick(
        "report",
        str(bundle),
        "--log-key",
        str(log_key),
        "--html",
        str(report),
        "--invoice",
        str(invoice),
    )
    if code not in (0, 1):
        raise RuntimeError(f"tallystick report exited with {code}")
    return DemoResult(
        out_dir=out_dir,
        recorded_calls=int(reconcile["recorded_calls"]),
        request_ids=request_ids,
        overbilled_request_id=overbilled,
        inflated_request_id=inflated,
        coin_audits={str(outcome.call_request_id): outcome for outcome in audits},
        reconcile=reconcile,
        reconcile_exit=reconcile_exit,
        provenance_entry=entry,
        provenance=json.loads(text),
        provenance_exit=provenance_exit,
        report=report,
    )


def summary(result: DemoResult) -> str:
    """A few readable lines on what the demo found."""
    reconcile, chain = result.reconcile, result.provenance
    lines = [
        f"recorded {result.recorded_calls} LLM calls and the delegations behind them in a "
        f"signed log of {reconcile['log_size']} entries ({result.out_dir / 'var'})",
        f"billing reconcile against {result.out_dir / 'invoice.csv'}: "
        + (
            "the bill matches"
            if reconcile["matches"]
            else f"{len(reconcile['findings'])} finding(s)"
        ),
    ]
    lines += [f"  - {finding['kind']}: {finding['detail']}" for finding in reconcile["findings"]]
    audits = result.coin_audits
    failed = {
        request_id: outcome.verdict
        for request_id, outcome in audits.items()
        if outcome.verdict is None or not outcome.verdict.consistent
    }
    lines.append(
        f"CoIn audits of the hidden reasoning of {len(audits)} call(s): "
        f"{len(audits) - len(failed)} consistent, {len(failed)} failed"
    )
    for request_id, verdict in failed.items():
        if verdict is None:
            why = f"not done ({audits[request_id].error_code})"
        elif verdict.score is None:
            why = f"the openings did not verify ({verdict.error_code})"
        else:
            checks = sorted({flag.split("@", 1)[0] for flag in verdict.flagged})
            why = f"score {verdict.score:.2f}, flagged {', '.join(checks)}"
        lines.append(f"  - request {request_id}: {why}")
    hops = " -> ".join(hop["agent_id"] for hop in chain["hops"])
    lines += [
        f"provenance of entry {result.provenance_entry} (the over-billed call): "
        f"{chain['principal']} -> {hops}, scope {chain['scopes']}, {chain['status']}",
        f"report: {result.report}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="where the log, bundle, invoice and report go")
    parser.add_argument(
        "--traces",
        type=Path,
        default=DEFAULT_TRACES,
        help="a dev.jsonl-shaped file that holds the traces the demo answers from",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args(argv)
    if args.out_dir.exists():
        shutil.rmtree(args.out_dir)  # a fresh log each run: the demo's, never a user's
    result = run(args.out_dir, args.traces)
    if args.json:
        print(json.dumps({"reconcile": result.reconcile, "provenance": result.provenance}))
    else:
        print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
