"""The dynamic batcher on real onnxruntime sessions: answers per caller, padding, idle dispatch,
queue limits, deadlines and failures confined to their batch."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.batch_policy import AdaptiveDelay, ArrivalRate
from app.core.repository_format import Batching, ModelConfig
from app.errors import DeadlineExceeded, InferenceFailed, QueueFull
from app.runner import COMPUTE_BOUND_ROW_S, BatchCost, Runner
from app.session import Session, SessionOptions
from tests.app.conftest import ZOO, reference_session


def make_runner(name: str, instances: int = 2, **batching) -> Runner:
    config = ModelConfig.model_validate_json((ZOO / name / "config.json").read_text())
    graph = config.graphs["model"]
    sessions = [
        Session(ZOO / name / "1" / graph.file, graph, SessionOptions("cpu", 1)) for _ in range(instances)
    ]
    return Runner(name, graph, sessions, Batching(**batching))


async def _with_runner(runner: Runner, body):
    runner.start()
    try:
        return await body(runner)
    finally:
        await runner.stop()


def test_concurrent_callers_get_their_own_rows() -> None:
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(int(rng.integers(1, 5)), 64)).astype(np.float32) for _ in range(120)]
    runner = make_runner("mlp-digits", max_batch_size=16, max_queue_delay_ms=5)

    async def body(r: Runner):
        return await asyncio.gather(*(r.infer({"input": x}) for x in requests))

    results = asyncio.run(_with_runner(runner, body))
    session = reference_session(ZOO, "mlp-digits")
    for x, (logits,) in zip(requests, results, strict=True):
        np.testing.assert_allclose(logits, session.run(None, {"input": x})[0], atol=1e-5)
    assert runner.requests_run == len(requests)
    assert runner.batches_run < len(requests) / 2  # callers really shared batches


def test_sequences_of_different_lengths_share_a_batch_and_match_alone() -> None:
    rng = np.random.default_rng(1)
    rows = [rng.integers(5, 15, size=(1, int(n))).astype(np.int64) for n in rng.integers(2, 40, size=40)]
    runner = make_runner("lstm-order", instances=1, max_batch_size=32, max_queue_delay_ms=20)

    async def body(r: Runner):
        return await asyncio.gather(
            *(r.infer({"tokens": t, "lengths": np.array([t.shape[1]], np.int64)}) for t in rows)
        )

    results = asyncio.run(_with_runner(runner, body))
    session = reference_session(ZOO, "lstm-order")
    for tokens, (logits,) in zip(rows, results, strict=True):
        alone = session.run(None, {"tokens": tokens, "lengths": np.array([tokens.shape[1]], np.int64)})[0]
        np.testing.assert_allclose(logits, alone, atol=1e-5)
    assert runner.batches_run < len(rows)


def test_idle_pool_dispatches_a_lone_request_at_once() -> None:
    # With a 2 s batching window, waiting for company would take 2 s; an idle pool must not wait.
    runner = make_runner("mlp-digits", max_queue_delay_ms=2000)

    async def body(r: Runner):
        started = time.perf_counter()
        await r.infer({"input": np.zeros((1, 64), np.float32)})
        return time.perf_counter() - started

    assert asyncio.run(_with_runner(runner, body)) < 1.0


def test_full_queue_rejects_while_admitted_requests_complete() -> None:
    runner = make_runner("lenet5-digits", instances=1, max_batch_size=1, max_queue_size=4)
    x = np.zeros((1, 1, 28, 28), np.float32)

    async def body(r: Runner):
        return await asyncio.gather(*(r.infer({"input": x}) for _ in range(40)), return_exceptions=True)

    results = asyncio.run(_with_runner(runner, body))
    rejected = [e for e in results if isinstance(e, QueueFull)]
    served = [e for e in results if isinstance(e, list)]
    assert rejected and served and len(rejected) + len(served) == 40
    assert rejected[0].headers["Retry-After"] == "1"


def test_deadline_passes_in_queue() -> None:
    runner = make_runner("lenet5-digits", instances=1, max_batch_size=1, timeout_ms=1)
    x = np.zeros((1, 1, 28, 28), np.float32)

    async def body(r: Runner):
        return await asyncio.gather(*(r.infer({"input": x}) for _ in range(30)), return_exceptions=True)

    results = asyncio.run(_with_runner(runner, body))
    assert any(isinstance(e, DeadlineExceeded) for e in results)
    assert all(isinstance(e, list | DeadlineExceeded) for e in results)


def test_failing_batch_fails_only_its_callers() -> None:
    # A token id outside the embedding table makes onnxruntime's Gather raise: a real inference error.
    runner = make_runner("lstm-order", instances=1, max_batch_size=1)
    good = {"tokens": np.array([[5, 6, 7]], np.int64), "lengths": np.array([3], np.int64)}
    bad = {"tokens": np.array([[5, 10_000, 7]], np.int64), "lengths": np.array([3], np.int64)}

    async def body(r: Runner):
        first = await asyncio.gather(r.infer(good), r.infer(bad), r.infer(good), return_exceptions=True)
        after = await r.infer(good)  # the runner keeps serving
        return first, after

    (before, failed, later), after = asyncio.run(_with_runner(runner, body))
    assert isinstance(failed, InferenceFailed) and "inference failed" in failed.message
    np.testing.assert_allclose(before[0], later[0])
    np.testing.assert_allclose(before[0], after[0])


@pytest.mark.parametrize("instances", [1, 3])
def test_stop_is_clean_with_requests_in_flight(instances) -> None:
    runner = make_runner("mlp-digits", instances=instances)

    async def body(r: Runner):
        tasks = [asyncio.ensure_future(r.infer({"input": np.zeros((2, 64), np.float32)})) for _ in range(10)]
        await asyncio.sleep(0)
        return tasks

    async def run():
        runner.start()
        tasks = await body(runner)
        await runner.stop()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, list | InferenceFailed) for r in results)


@pytest.mark.parametrize("split", [True, False])
def test_queued_rows_are_split_across_idle_instances(split: bool) -> None:
    """One instance busy, 32 rows queued: the other takes its share (16) and leaves the rest to the
    first one when it frees, instead of one batch of 32 while an instance finds nothing to take."""
    x = np.random.default_rng(3).normal(size=(1, 3, 32, 32)).astype(np.float32)
    runner = make_runner("resnet-shapes", max_batch_size=32, split_across_instances=split)

    async def body(r: Runner):
        first = asyncio.ensure_future(r.infer({"input": x}))  # an idle pool dispatches it at once
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(r.infer({"input": x})) for _ in range(32)]
        return await asyncio.gather(first, *rest)

    results = asyncio.run(_with_runner(runner, body))
    expected = reference_session(ZOO, "resnet-shapes").run(None, {"input": x})[0]
    for (logits,) in results:
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    sizes = sorted(runner.stats.by_batch_size)
    assert runner.stats.inference_count == 33
    if split:
        assert max(sizes) <= 17 and runner.stats.execution_count >= 3, runner.stats.by_batch_size
    else:
        assert 32 in sizes, runner.stats.by_batch_size


def test_batch_cost_rows_worth_waiting_for() -> None:
    """Plain arithmetic: the fewest rows within WORTH_WAITING (10%) of the marginal cost per row."""
    assert BatchCost(fixed_s=0.0, per_row_s=1e-3).rows_worth_waiting_for(32) == 1
    assert BatchCost(fixed_s=1e-3, per_row_s=1e-3).rows_worth_waiting_for(32) == 10
    assert BatchCost(fixed_s=1.0, per_row_s=1e-3).rows_worth_waiting_for(32) == 32  # never below the limit
    assert BatchCost(fixed_s=1e-3, per_row_s=0.0).rows_worth_waiting_for(16) == 16


def test_measured_cost_decides_the_split_unless_configured() -> None:
    """Unset, split_across_instances follows the run time measured at load: a ResNet row costs
    onnxruntime far more than an MLP row; configured either way, the model's word stands (off: not
    even measured)."""
    resnet, mlp = make_runner("resnet-shapes"), make_runner("mlp-digits")
    assert not resnet.split and resnet.needs_cost  # nothing measured yet: today's behaviour
    for runner in (resnet, mlp):
        cost = runner.measure_cost()
        assert cost.fixed_s >= 0 and cost.per_row_s >= 0
        assert runner.split == (cost.per_row_s >= COMPUTE_BOUND_ROW_S)
    assert resnet.cost.per_row_s > 10 * mlp.cost.per_row_s
    assert not make_runner("resnet-shapes", split_across_instances=False).needs_cost
    assert not make_runner("resnet-shapes", instances=1).needs_cost
    forced = make_runner("mlp-digits", split_across_instances=True)
    forced.measure_cost()
    assert forced.split


@pytest.mark.parametrize("split", [True, False])
def test_split_batches_queue_behind_running_ones(split: bool) -> None:
    """64 rows queued at once on two instances: split, each session also gets one batch queued behind
    its running one (its share of what is left: 32, 16, 8, 4 rows), started by its worker thread the
    moment the first ends; not split, at most one batch per session. Every caller gets its own rows."""
    x = np.random.default_rng(4).normal(size=(64, 1, 3, 32, 32)).astype(np.float32)
    runner = make_runner("resnet-shapes", max_batch_size=32, split_across_instances=split)
    busy: list[int] = []

    async def body(r: Runner):
        calls = [asyncio.ensure_future(r.infer({"input": row})) for row in x]
        while not all(c.done() for c in calls):
            busy.append(r._busy)
            await asyncio.sleep(0)
        return [c.result() for c in calls]

    results = asyncio.run(_with_runner(runner, body))
    expected = reference_session(ZOO, "resnet-shapes").run(None, {"input": x[:, 0]})[0]
    np.testing.assert_allclose(np.concatenate([logits for (logits,) in results]), expected, atol=1e-5)
    assert runner.stats.inference_count == 64
    if split:
        assert max(busy) == 4, busy
        assert sorted(runner.stats.by_batch_size)[-4:] == [4, 8, 16, 32], runner.stats.by_batch_size
    else:
        assert max(busy) <= 2, busy


def test_adaptive_batching_answers_every_caller_and_learns_the_batch_cost() -> None:
    rng = np.random.default_rng(4)
    requests = [rng.normal(size=(int(rng.integers(1, 5)), 64)).astype(np.float32) for _ in range(200)]
    runner = make_runner("mlp-digits", max_batch_size=16, max_queue_delay_ms="auto", latency_target_ms=50)

    async def body(r: Runner):
        answers = []
        for wave in range(10):  # waves of 20 callers: batches of several sizes, some with the pool busy
            chunk = requests[wave * 20 : (wave + 1) * 20]
            answers += await asyncio.gather(*(r.infer({"input": x}) for x in chunk))
        return answers

    results = asyncio.run(_with_runner(runner, body))
    session = reference_session(ZOO, "mlp-digits")
    for x, (logits,) in zip(requests, results, strict=True):
        np.testing.assert_allclose(logits, session.run(None, {"input": x})[0], atol=1e-5)
    assert runner.batches_run < len(requests)
    assert runner.policy.cost.predict(16) > 0  # learned from the batches that ran
    batch_cost = REGISTRY.get_sample_value(
        "serve_batch_cost_seconds", {"model": "mlp-digits", "term": "batch"}
    )
    assert batch_cost is not None and batch_cost >= 0


def test_adaptive_hold_ends_when_the_pool_goes_idle() -> None:
    """A batch waiting for company while another runs leaves the moment that one finishes: an idle pool
    never waits (a fixed delay only checks the pool when the batch starts forming)."""
    runner = make_runner("vit-shapes", max_queue_delay_ms="auto", latency_target_ms=4000)
    # Taught a light graph's cost (waiting pays) and a slow arrival rate (a full batch is seconds
    # away): the plan for a lone request behind a busy instance is to wait about the 2 s budget.
    # saturated=2: never CPU-bound (then an idle pool would wait too: the next test).
    runner.policy = AdaptiveDelay(4.0, arrivals=ArrivalRate(time_constant_s=10.0), saturated=2.0)
    for rows in range(1, 33):
        for concurrent in (1, 2):
            runner.policy.observe(rows, 0.010 + 1e-5 * rows, concurrent)
    big = np.zeros((32, 3, 32, 32), np.float32)  # ~30 ms on one thread

    async def body(r: Runner):
        first = asyncio.ensure_future(r.infer({"input": big}))  # an idle pool runs it at once
        while not REGISTRY.get_sample_value("serve_batches_in_flight", {"model": "vit-shapes"}):
            await asyncio.sleep(0)
        started = time.perf_counter()
        await r.infer({"input": big[:1]})  # holds for company while the first batch runs
        waited = time.perf_counter() - started
        await first
        return waited

    waited = asyncio.run(_with_runner(runner, body))
    planned = REGISTRY.get_sample_value("serve_batch_hold_seconds", {"model": "vit-shapes"})
    assert planned > 1.0  # the plan was to wait for company...
    assert waited < planned / 2  # ...but the first batch finished, and the pool idle dispatched it
    assert runner.batches_run == 2


def test_a_cpu_bound_process_holds_an_idle_pool_for_company() -> None:
    """When the process keeps its cores busy, an idle instance is no spare capacity: a lone request
    waits for company (here: the second row that fills the batch) instead of running alone."""
    runner = make_runner("mlp-digits", max_batch_size=2, max_queue_delay_ms="auto", latency_target_ms=4000)
    runner.policy = AdaptiveDelay(4.0, arrivals=ArrivalRate(time_constant_s=10.0), saturated=0.0)
    for rows in range(1, 33):
        for concurrent in (1, 2):
            runner.policy.observe(rows, 0.010 + 1e-5 * rows, concurrent)
    x = np.random.default_rng(5).normal(size=(2, 64)).astype(np.float32)

    async def body(r: Runner):
        first = asyncio.ensure_future(r.infer({"input": x[:1]}))
        await asyncio.sleep(0.05)  # the pool is idle all along
        second = await r.infer({"input": x[1:]})
        return await first, second

    (first, second) = asyncio.run(_with_runner(runner, body))
    assert runner.batches_run == 1  # one batch of both rows
    expected = reference_session(ZOO, "mlp-digits").run(None, {"input": x})[0]
    np.testing.assert_allclose(np.concatenate([first[0], second[0]]), expected, atol=1e-5)
