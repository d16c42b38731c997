"""Recording off the caller's path, against a REAL tallystickd: order, refusals, outages."""

from __future__ import annotations

import asyncio
import time

import pytest
from tallystick.sdk.background import AsyncBackgroundRecorder, BackgroundRecorder, RejectedCall
from tallystick.sdk.client import AsyncClient, Client, Policy

from .conftest import Sidecar, make_call


def test_queued_calls_reach_the_log_in_order(sidecar: Sidecar, policy: Policy) -> None:
    models = [f"m{number}" for number in range(600)]
    with Client(sidecar.address("alice"), policy=policy) as client:
        with BackgroundRecorder(client, batch=64) as recorder:
            assert all(recorder.record(make_call(model)) is None for model in models)
            recorder.flush()
            assert [entry.body["model"] for entry in sidecar.calls()] == models
        assert recorder.rejected == []
    assert {entry.agent for entry in sidecar.calls()} == {"alice"}


def test_a_full_queue_waits_for_room_and_drops_nothing(sidecar: Sidecar, policy: Policy) -> None:
    with (
        Client(sidecar.address("bob"), policy=policy) as client,
        BackgroundRecorder(client, batch=1, max_queued=2) as recorder,
    ):
        for number in range(50):
            recorder.record(make_call(f"m{number}"))
    assert [entry.body["model"] for entry in sidecar.calls()] == [f"m{n}" for n in range(50)]


def test_refused_calls_are_kept_and_raised_on_flush(sidecar: Sidecar, policy: Policy) -> None:
    # The shared socket records nothing: every call is refused, one at a time after the batch.
    with Client(sidecar.address(None), policy=policy) as client:
        recorder = BackgroundRecorder(client, batch=8)
        for number in range(3):
            recorder.record(make_call(f"m{number}"))
        with pytest.raises(RejectedCall) as caught:
            recorder.flush()
        assert caught.value.code == "auth.no_agent_identity"
        assert [rejected.call.model for rejected in recorder.rejected] == ["m0", "m1", "m2"]
        recorder.flush()  # reported once
        recorder.close()
    assert sidecar.calls() == []


def test_an_outage_goes_to_the_clients_spool_and_nothing_is_lost(
    sidecar: Sidecar, policy: Policy
) -> None:
    with (
        Client(sidecar.address("carol"), policy=policy) as client,
        BackgroundRecorder(client) as recorder,
    ):
        recorder.record(make_call("before"))
        recorder.flush()
        sidecar.stop()
        for number in range(5):
            recorder.record(make_call(f"down{number}"))
        recorder.flush()  # spooled by the client's policy
        assert client.pending == 5
        sidecar.start()
        assert client.flush() == 5
    models = [entry.body["model"] for entry in sidecar.calls()]
    assert models == ["before", *(f"down{n}" for n in range(5))]


def test_the_async_recorder_delivers_in_order(sidecar: Sidecar, policy: Policy) -> None:
    async def main() -> None:
        async with (
            AsyncClient(sidecar.address("alice"), policy=policy) as client,
            AsyncBackgroundRecorder(client, batch=16) as recorder,
        ):
            for number in range(100):
                assert await recorder.record(make_call(f"a{number}")) is None
            await recorder.flush()
            assert len(sidecar.calls()) == 100

    asyncio.run(main())
    assert [entry.body["model"] for entry in sidecar.calls()] == [f"a{n}" for n in range(100)]


def test_sizes_are_checked(sidecar: Sidecar, policy: Policy) -> None:
    with Client(sidecar.address("alice"), policy=policy) as client, pytest.raises(ValueError):
        BackgroundRecorder(client, batch=0)


def test_a_full_batch_goes_out_without_waiting_and_flush_cuts_the_linger_short(
    sidecar: Sidecar, policy: Policy
) -> None:
    with (
        Client(sidecar.address("alice"), policy=policy) as client,
        BackgroundRecorder(client, batch=4, linger_s=3600) as recorder,
    ):
        for number in range(4):
            recorder.record(make_call(f"full{number}"))
        deadline = time.monotonic() + 30
        while len(sidecar.calls()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sidecar.calls()) == 4  # a full batch did not wait an hour
        recorder.record(make_call("partial"))
        started = time.monotonic()
        recorder.flush()
        assert time.monotonic() - started < 30
    assert [entry.body["model"] for entry in sidecar.calls()][-1] == "partial"
