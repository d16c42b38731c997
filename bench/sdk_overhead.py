"""What the SDK wrapper adds to an LLM call, and how long an exported log takes to verify.

One run:

1. ``demo.llm_server`` on loopback in its own process, as a provider is (it answers from the
   reasoning traces), and a real
   ``tallystickd`` subprocess with one agent; the real ``openai`` client calls
   ``chat.completions.create`` N times unwrapped, N times wrapped by
   :func:`tallystick.sdk.wrap.wrap` recording through a ``BackgroundRecorder`` (queued, sent in
   batches) and N times wrapped recording through the sidecar ``Client`` itself (each call
   waits until its record is durable), in alternating blocks so that drift hits all alike.
   Added latency = wrapped minus plain, at p50 and p99 (each over all its calls). Afterwards
   the log must hold one ``call`` entry per wrapped call.
2. A log of 1e5 call entries (filled in process with ``Log.append_batch``), exported to a
   bundle, then ``verify_bundle`` on it (median of runs) and ``tallystick log verify``.

Run: ``.venv/bin/python bench/sdk_overhead.py [--calls N] [--quick]``. Not a test: numbers
depend on the machine (the client, the server and the daemon share its cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import fill_log, percentile
from openai import OpenAI
from record import DaemonProcess
from tallystick.daemon.log import Log, export_data_dir
from tallystick.sdk.background import BackgroundRecorder
from tallystick.sdk.client import Client
from tallystick.sdk.wrap import wrap
from tallystick.verifier.keys import load_public_key
from tallystick.verifier.logbundle import Bundle, verify_bundle

AGENT = "bench"
BLOCK = 250  # calls per block; the clients' blocks alternate
WARM_UP = 50
PROMPT = [{"role": "user", "content": "What is 17% of 2,340?"}]


@contextlib.contextmanager
def _llm_server() -> Iterator[str]:
    """``demo.llm_server`` in its own process, as a provider is; yields its ``base_url``."""
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "demo.llm_server", "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "serving on http://127.0.0.1:PORT/v1 (...)"
        if not line.startswith("serving on "):
            raise RuntimeError(f"demo.llm_server did not start: {line!r}")
        yield line.split()[2]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _timed(call: Callable[[], Any], count: int, into: list[float]) -> None:
    for _ in range(count):
        started = time.perf_counter()
        call()
        into.append(time.perf_counter() - started)


def measure_wrapper(root: Path, calls: int) -> dict[str, Any]:
    data_dir = root / "var"
    flags = ("--agent", AGENT, "--log-level", "warning")
    daemon = DaemonProcess(data_dir, root / "tallystickd.log", *flags)
    daemon.start()
    try:
        with (
            _llm_server() as base_url,
            Client(daemon.addresses[AGENT]) as sidecar,
            BackgroundRecorder(sidecar) as background,
        ):

            def client(recorder: Any = None) -> Any:
                llm = OpenAI(base_url=base_url, api_key="bench", max_retries=0)
                return llm if recorder is None else wrap(llm, recorder=recorder)

            clients = {
                "plain": client(),
                "wrapped, background recorder": client(background),
                "wrapped, durable per call": client(sidecar),
            }
            times: dict[str, list[float]] = {name: [] for name in clients}
            for llm in clients.values():  # warm every path: connections, imports
                _timed(lambda llm=llm: _chat(llm), WARM_UP, [])
            while len(times["plain"]) < calls:
                for name, llm in clients.items():
                    _timed(lambda llm=llm: _chat(llm), BLOCK, times[name])
            background.flush()
    finally:
        daemon.stop()
    with Log.open(data_dir) as log:
        recorded = log.size
    wrapped = sum(len(values) + WARM_UP for name, values in times.items() if name != "plain")
    return {"times": times, "recorded": recorded, "expected": wrapped}


def _chat(llm: Any) -> Any:
    return llm.chat.completions.create(model="o4-mini", messages=PROMPT)


def measure_verify(root: Path, size: int, runs: int) -> dict[str, float]:
    data_dir = root / "fill"
    fill_s = fill_log(data_dir, size)
    bundle_path = root / "fill.bundle"
    started = time.perf_counter()
    export_data_dir(data_dir, bundle_path)
    export_s = time.perf_counter() - started
    key = load_public_key(str(data_dir / "log.pub"))
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        report = verify_bundle(Bundle.from_path(bundle_path), log_key=key)
        seconds.append(time.perf_counter() - started)
        if not report.valid:
            raise RuntimeError(f"the bundle does not verify: {report.damage}")
    cli = Path(sys.executable).parent / "tallystick"
    started = time.perf_counter()
    subprocess.run(
        [str(cli), "log", "verify", str(bundle_path), "--log-key", str(data_dir / "log.pub")],
        check=True,
        capture_output=True,
    )
    return {
        "fill_s": fill_s,
        "export_s": export_s,
        "verify_s": statistics.median(seconds),
        "cli_s": time.perf_counter() - started,
        "bundle_mb": bundle_path.stat().st_size / 1e6,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=int, default=10_000, help="wrapped calls (and as many plain)"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 calls, a 1e4-entry bundle")
    args = parser.parse_args(argv)
    calls, size = (1_000, 10_000) if args.quick else (args.calls, 100_000)
    root = Path(tempfile.mkdtemp(prefix="tsb-sdk-"))  # short: Unix socket paths fit 107 bytes
    try:
        wrapper = measure_wrapper(root, calls)
        verify = measure_verify(root, size, runs=3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    times = wrapper["times"]
    print("SDK wrapper overhead (bench/sdk_overhead.py)")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"calls: {len(times['plain']):,} per row, openai chat.completions.create against "
        f"demo.llm_server on loopback, rows alternating in blocks of {BLOCK}; wrapped calls "
        "record through tallystickd on a Unix socket"
    )
    print()
    print(
        f"{'':<34} {'p50 ms':>10} {'p99 ms':>10} {'added p50':>10} {'added p99':>10} {'x plain':>8}"
    )
    rows = {
        name: (percentile(values, 0.5), percentile(values, 0.99)) for name, values in times.items()
    }
    plain50, plain99 = rows["plain"]
    for name, (p50, p99) in rows.items():
        added = (
            ""
            if name == "plain"
            else f"{(p50 - plain50) * 1e3:>10.3f} {(p99 - plain99) * 1e3:>10.3f}"
        )
        print(
            f"{name:<34} {p50 * 1e3:>10.3f} {p99 * 1e3:>10.3f} {added:>21} {p50 / plain50:>7.2f}x"
        )
    added50 = rows["wrapped, background recorder"][0] - plain50
    verdict = "MET" if added50 <= 0.25e-3 else "NOT MET"
    print(
        f"target: p50 added <= 0.25 ms (wrapped with a BackgroundRecorder): "
        f"{verdict} ({added50 * 1e3:.3f} ms)"
    )
    present = "yes" if wrapper["recorded"] == wrapper["expected"] else "NO"
    print(
        f"log entries after the run: {wrapper['recorded']:,} "
        f"(= {wrapper['expected']:,} wrapped calls incl. warm-up: {present})"
    )
    print()
    print(
        f"bundle of {size:,} call entries ({verify['bundle_mb']:.1f} MB; filled in "
        f"{verify['fill_s']:.1f} s, exported in {verify['export_s']:.1f} s)"
    )
    print(f"  verify_bundle, median of 3: {verify['verify_s']:.2f} s")
    print(f"  tallystick log verify (process, imports included): {verify['cli_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
