"""The adaptive batching policy as plain code: the online cost model, the arrival rate, and each rule
of the hold/release decision, on deterministic inputs (app/batch_policy.py)."""

from __future__ import annotations

import math

import pytest

from app.batch_policy import AdaptiveDelay, ArrivalRate, BatchCostModel, CpuLoad

FIXED, PER_ROW = 200e-6, 5e-6  # a light graph: the fixed cost per batch dominates small batches


def taught(fixed: float = FIXED, per_row: float = PER_ROW, concurrent: int = 1, **kwargs) -> AdaptiveDelay:
    policy = AdaptiveDelay(target_s=0.020, **kwargs)
    for rows in list(range(1, 33)) * 2:
        policy.observe(rows, fixed + per_row * rows, concurrent)
    return policy


def steady(policy: AdaptiveDelay, rows_per_s: float, until: float) -> None:
    """Arrivals of one row at ``rows_per_s`` for the second before ``until``."""
    for i in range(int(rows_per_s)):
        policy.arrived(until - 1.0 + (i + 1) / rows_per_s, 1)


# ---------------------------------------------------------------------------------------- cost model


def test_cost_model_recovers_fixed_and_per_row_cost() -> None:
    cost = BatchCostModel()
    assert cost.predict(8) is None  # cold
    for rows in range(1, 33):
        cost.observe(rows, FIXED + PER_ROW * rows)
    fixed, per_row = cost.terms()
    assert fixed == pytest.approx(FIXED, rel=1e-6) and per_row == pytest.approx(PER_ROW, rel=1e-6)
    assert cost.predict(64) == pytest.approx(FIXED + 64 * PER_ROW)


def test_cost_model_follows_a_machine_that_slows_down() -> None:
    cost = BatchCostModel(half_life=64)
    for rows in list(range(1, 33)) * 4:
        cost.observe(rows, FIXED + PER_ROW * rows)
    for rows in list(range(1, 33)) * 20:  # ten half-lives of batches twice as slow
        cost.observe(rows, 2 * (FIXED + PER_ROW * rows))
    assert cost.predict(16) == pytest.approx(2 * (FIXED + 16 * PER_ROW), rel=0.01)


def test_one_batch_size_seen_predicts_on_the_safe_side() -> None:
    # All batches full: the fixed and per-row parts cannot be told apart. No smaller batch is predicted
    # cheaper than what ran, and a larger one costs at least proportionally more.
    cost = BatchCostModel()
    for _ in range(20):
        cost.observe(32, 0.001)
    assert cost.terms() is None
    assert cost.predict(4) == pytest.approx(0.001)
    assert cost.predict(64) == pytest.approx(0.002)


def test_cost_model_keeps_a_fit_per_concurrency_and_falls_back_to_the_nearest() -> None:
    cost = BatchCostModel()
    for rows in range(1, 33):
        cost.observe(rows, FIXED + PER_ROW * rows, concurrent=1)
        cost.observe(rows, 2 * (FIXED + PER_ROW * rows), concurrent=2)
    assert cost.predict(10, concurrent=2) == pytest.approx(2 * cost.predict(10, concurrent=1))
    assert cost.predict(10, concurrent=3) == cost.predict(10, concurrent=2)


def test_noisy_fits_never_predict_negative_costs() -> None:
    cost = BatchCostModel()
    for rows in range(1, 33):  # bigger batches measured faster: called flat
        cost.observe(rows, 0.002 - rows * 1e-5)
    fixed, per_row = cost.terms()
    assert fixed > 0 and per_row == 0
    through_origin = BatchCostModel()
    for rows in range(1, 33):  # a line that crosses below zero: fitted through the origin
        through_origin.observe(rows, max(1e-6, (rows - 10) * 1e-4))
    fixed, per_row = through_origin.terms()
    assert fixed == 0 and per_row > 0


# ---------------------------------------------------------------------------------------- arrival rate


def test_arrival_rate_settles_on_a_steady_rate_and_forgets_silence() -> None:
    rate = ArrivalRate(time_constant_s=0.2)
    assert rate.rows_per_s(0.0) == 0
    for i in range(1, 2001):  # 2,000 rows/s for one second
        rate.add(i / 2000, 1)
    assert rate.rows_per_s(1.0) == pytest.approx(2000, rel=0.01)
    assert rate.rows_per_s(2.0) < 0.01 * 2000  # five time constants of silence


def test_cpu_load_is_the_busy_share_of_the_cores() -> None:
    load = CpuLoad(cores=2, time_constant_s=0.5)
    load.update(wall=0.0, cpu=0.0)
    for step in range(1, 41):  # 1.5 of 2 cores busy for 4 s
        load.update(wall=step * 0.1, cpu=step * 0.15)
    assert load.busy == pytest.approx(0.75, abs=0.01)
    for step in range(41, 81):  # then idle
        load.update(wall=step * 0.1, cpu=6.0)
    assert load.busy < 0.01
    assert load.update(wall=8.01, cpu=7.0) == load.busy  # readings closer than min_interval_s wait


def test_an_idle_pool_waits_only_while_the_process_is_cpu_bound() -> None:
    policy = AdaptiveDelay(target_s=0.020, cpu=CpuLoad(cores=1, time_constant_s=0.1))
    policy.idle_pool_waits(0.0, 0.0)
    assert not any(policy.idle_pool_waits(t / 10, t / 50) for t in range(1, 20))  # 20% busy
    assert policy.idle_pool_waits(3.0, 0.38 + 1.1)  # then all of the core for 1.1 s: saturated


# ---------------------------------------------------------------------------------------- decisions


def test_full_and_cold_batches_leave_at_once() -> None:
    assert taught().decide(now=10.0, oldest=10.0, rows=32, max_rows=32).reason == "full"
    cold = AdaptiveDelay(target_s=0.020)
    steady(cold, 5000, until=10.0)
    decision = cold.decide(now=10.0, oldest=10.0, rows=1, max_rows=32)
    assert (decision.reason, decision.release_at) == ("cold", 10.0)


def test_a_light_graph_waits_until_the_batch_is_expected_full() -> None:
    policy = taught()
    steady(policy, 5000, until=10.0)
    decision = policy.decide(now=10.0, oldest=10.0, rows=2, max_rows=32)
    rate = policy.arrivals.rows_per_s(10.0)
    assert decision.reason == "wait_full"
    assert decision.release_at == pytest.approx(10.0 + 30 / rate)


def test_a_slow_arrival_rate_waits_only_as_long_as_the_budget_allows() -> None:
    policy = taught()
    steady(policy, 200, until=10.0)  # 30 more rows would take 150 ms: far past the budget
    decision = policy.decide(now=10.0, oldest=9.999, rows=2, max_rows=32)
    assert decision.reason == "wait_budget"
    grown = 2 + policy.arrivals.rows_per_s(10.0) * (decision.release_at - 10.0)
    completion = decision.release_at - 9.999 + FIXED + PER_ROW * grown
    assert completion <= policy.budget_s + 1e-9  # the oldest finishes within the budget
    assert completion == pytest.approx(policy.budget_s, abs=PER_ROW)  # and waits as long as it may


def test_a_compute_bound_graph_never_waits() -> None:
    policy = taught(fixed=1e-6, per_row=500e-6)  # the cost per row is flat in the batch size
    steady(policy, 5000, until=10.0)
    assert policy.decide(now=10.0, oldest=10.0, rows=2, max_rows=32).reason == "no_gain"


def test_no_arrivals_expected_means_no_wait() -> None:
    policy = taught()
    decision = policy.decide(now=10.0, oldest=10.0, rows=3, max_rows=32)
    assert (decision.reason, decision.release_at) == ("no_gain", 10.0)


def test_a_spent_budget_leaves_at_once() -> None:
    policy = taught()
    steady(policy, 200, until=10.0)
    # Queued 9.9 ms ago: past the 10 ms budget once its run is added, not yet past the 20 ms target.
    decision = policy.decide(now=10.0, oldest=10.0 - 0.0099, rows=2, max_rows=32)
    assert (decision.reason, decision.release_at) == ("late", 10.0)


def test_overload_waits_for_the_largest_batch_but_no_longer_than_one_run() -> None:
    policy = taught()
    steady(policy, 5000, until=10.0)
    # The oldest is past the target already: only throughput is left to win.
    decision = policy.decide(now=10.0, oldest=9.97, rows=31, max_rows=32)
    rate = policy.arrivals.rows_per_s(10.0)
    assert decision.reason == "overload"
    assert decision.release_at == pytest.approx(10.0 + 1 / rate)
    slow = taught()
    steady(slow, 10, until=10.0)  # a full batch is seconds away: one run's length at most
    decision = slow.decide(now=10.0, oldest=9.97, rows=3, max_rows=32)
    assert decision.release_at == pytest.approx(10.0 + FIXED + 32 * PER_ROW)


def test_every_planned_wait_finishes_the_oldest_within_the_budget() -> None:
    policy = taught()
    for rate in (50, 500, 5000):
        steady(policy, rate, until=10.0)
        for waited_ms in (0, 2, 5, 9):
            for rows in (1, 4, 16, 31):
                oldest = 10.0 - waited_ms / 1000
                decision = policy.decide(now=10.0, oldest=oldest, rows=rows, max_rows=32)
                if decision.release_at <= 10.0 or decision.reason == "overload":
                    continue
                grown = min(32, rows + policy.arrivals.rows_per_s(10.0) * (decision.release_at - 10.0))
                assert decision.release_at - oldest + FIXED + PER_ROW * grown <= policy.budget_s + 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_s": 0},
        {"target_s": -1},
        {"target_s": 0.02, "margin": 1},
        {"target_s": 0.02, "min_gain": -0.1},
    ],
)
def test_bad_parameters_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        AdaptiveDelay(**kwargs)


def test_decisions_are_deterministic() -> None:
    a, b = taught(), taught()
    for policy in (a, b):
        steady(policy, 1000, until=10.0)
    assert a.decide(10.0, 9.998, 5, 32) == b.decide(10.0, 9.998, 5, 32)
    assert not math.isnan(a.decide(10.0, 9.998, 5, 32).release_at)
