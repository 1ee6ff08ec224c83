"""Fair shares between flows (gateway.fairness): deficit round robin, weights, priority."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fairness import BATCH_WEIGHT, INTERACTIVE_WEIGHT, FairShare, Flow
from gateway.queues import BATCH, INTERACTIVE, QueueName


def q(tenant: str, klass: str = BATCH, key: str = "local:-") -> QueueName:
    return QueueName("generate", key, tenant, klass)


def drain(fair: FairShare, lags: dict[QueueName, int], slots: int, rounds: int) -> list[dict[QueueName, int]]:
    """`rounds` allocations of `slots`, the lags going down as entries are read."""
    out = []
    for _ in range(rounds):
        got = fair.allocate(fair.flows(lags), slots)
        for name, n in got.items():
            lags[name] -= n
        out.append(got)
    return out


def test_one_slot_at_a_time_goes_round_the_tenants():
    fair = FairShare()
    lags = {q("a"): 100, q("b"): 100, q("c"): 100}
    served = [next(iter(got)) for got in drain(fair, lags, 1, 9)]
    assert [x.tenant for x in served] == ["a", "b", "c"] * 3


def test_a_tenants_single_task_is_read_in_the_first_turn_after_it_arrives():
    fair = FairShare()
    lags = {q("big"): 10_000}
    drain(fair, lags, 8, 5)  # the big tenant has had the key to itself
    lags[q("small")] = 1
    got = fair.allocate(fair.flows(lags), 8)
    assert got[q("small")] == 1 and got[q("big")] == 7


def test_weights_set_the_shares_and_nothing_is_lost_to_rounding():
    fair = FairShare({"gold": 3.0})
    lags = {q("gold"): 10_000, q("plain"): 10_000}
    total = Counter()
    for got in drain(fair, lags, 5, 200):
        assert sum(got.values()) == 5
        total.update({k.tenant: v for k, v in got.items()})
    assert abs(total["gold"] / total["plain"] - 3.0) < 0.05


def test_interactive_work_gets_its_weight_and_batch_work_still_moves():
    fair = FairShare()
    lags = {q("a", INTERACTIVE): 10_000, q("a", BATCH): 10_000, q("b", BATCH): 10_000}
    total = Counter()
    for got in drain(fair, lags, 3, 300):
        total.update({(k.tenant, k.klass): v for k, v in got.items()})
    per_batch_flow = INTERACTIVE_WEIGHT / BATCH_WEIGHT
    assert abs(total[("a", INTERACTIVE)] / total[("a", BATCH)] - per_batch_flow) < 0.1
    assert total[("b", BATCH)] > 0 and abs(total[("a", BATCH)] - total[("b", BATCH)]) <= 1, "no starvation"


def test_a_flow_never_gets_more_than_it_holds_and_an_empty_one_keeps_no_credit():
    fair = FairShare({"rich": 10.0})
    got = fair.allocate([Flow(q("rich"), 2, 10.0), Flow(q("poor"), 50, 1.0)], 20)
    assert got[q("rich")] == 2 and got[q("poor")] == 18
    # `rich` ran empty: its deficit is gone; back with work it starts from nothing.
    fair.allocate([Flow(q("rich"), 0, 10.0), Flow(q("poor"), 50, 1.0)], 3)
    assert fair._deficit.get(q("rich")) is None


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([0.5, 1.0, 2.0]), st.booleans()), min_size=1,
                max_size=6), st.integers(0, 40), st.integers(1, 8))
def test_allocation_is_bounded_by_slots_and_lags_and_uses_every_slot_it_can(flows, slots, rounds):
    fair = FairShare()
    lags = {q(f"t{i}", INTERACTIVE if inter else BATCH): lag for i, (lag, _, inter) in enumerate(flows)}
    weights = {q(f"t{i}", INTERACTIVE if inter else BATCH): w for i, (_, w, inter) in enumerate(flows)}
    for _ in range(rounds):
        got = fair.allocate([Flow(name, lags[name], weights[name]) for name in lags], slots)
        assert sum(got.values()) == min(slots, sum(lags.values())), "every slot used while work waits"
        for name, n in got.items():
            assert 0 < n <= lags[name]
            lags[name] -= n


def test_many_tenants_each_get_a_turn_within_one_pass():
    rng = random.Random(7)
    fair = FairShare()
    lags = {q(f"t{i}"): rng.randint(1, 50) for i in range(40)}
    got = fair.allocate(fair.flows(lags), 40)
    assert set(got) == set(lags) and set(got.values()) == {1}
