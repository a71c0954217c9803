"""The controller's keeper decides the engine group's size: the idle guard and the
autoscaler, step by step on a clock the test controls."""

from __future__ import annotations

import pytest

from bootstrap.ipfleet_node import keeper as keeper_module


@pytest.fixture(scope="module")
def keeper():
    return keeper_module


def policy(keeper, idle=10.0, autoscale=False, minimum=0, per_engine=2, cooldown=60):
    return keeper.Policy(
        idle_minutes=idle,
        min_engine_nodes=minimum,
        autoscale=autoscale,
        tasks_per_engine=per_engine,
        cooldown_seconds=cooldown,
    )


def seen(keeper, outstanding=0, completed=0, clients=0, engines=4, desired=2, minimum=0, maximum=4):
    return keeper.Observation(outstanding, completed, clients, engines, desired, minimum, maximum, in_service=desired)


def test_idle_guard_takes_the_group_to_its_floor_then_a_client_brings_it_back(keeper):
    p, memory = policy(keeper, idle=10), keeper.Memory(last_activity=0.0)
    assert keeper.decide(p, 60, seen(keeper, outstanding=3), memory) == (None, "ok")
    assert keeper.decide(p, 120, seen(keeper, completed=3), memory) == (None, "ok")  # they finished
    # Ten minutes after the last task, not before.
    assert keeper.decide(p, 120 + 599, seen(keeper, completed=3), memory)[0] is None
    target, why = keeper.decide(p, 120 + 600, seen(keeper, completed=3), memory)
    assert target == 0 and why.startswith("idle for 10 min")
    # Idle, it stays down; a client connecting wakes it to the size it had.
    assert keeper.decide(p, 2000, seen(keeper, completed=3, desired=0, engines=0), memory) == (None, "idle")
    target, why = keeper.decide(p, 2005, seen(keeper, completed=3, clients=1, desired=0, engines=0), memory)
    assert (target, why) == (2, "woken: a client or a task arrived")
    assert memory.idled_from is None


def test_idle_guard_keeps_the_floor_and_can_be_turned_off(keeper):
    memory = keeper.Memory(last_activity=0.0)
    assert keeper.decide(policy(keeper, idle=1, minimum=1), 61, seen(keeper), memory)[0] == 1
    assert keeper.decide(policy(keeper, idle=0), 10**6, seen(keeper), keeper.Memory(last_activity=0.0)) == (None, "ok")


def test_engines_leaving_an_idle_group_do_not_wake_it(keeper):
    # The idle guard's own scale-in: the nodes drain, their engines unregister and the
    # counts the hub reports fall. Falling is not activity; only a new completion is.
    p, memory = policy(keeper, idle=1), keeper.Memory(last_activity=0.0)
    assert keeper.decide(p, 30, seen(keeper, completed=200), memory) == (None, "ok")
    assert keeper.decide(p, 90, seen(keeper, completed=200), memory)[0] == 0
    for at, done in ((95, 120), (100, 0)):  # a node gone, then all
        assert keeper.decide(p, at, seen(keeper, completed=done, engines=0, desired=0), memory) == (None, "idle")
    assert keeper.decide(p, 105, seen(keeper, completed=3, engines=0, desired=0), memory)[0] == 2


def test_hub_counts_outstanding_on_registered_engines_and_completed_on_all(keeper):
    # The hub's answers as ipyparallel 9 gives them: engine 2 departed holding 5 tasks.
    answers = {
        "queue_request": {
            "unassigned": 1,
            "0": {"queue": 0, "tasks": 2, "completed": 40},
            "1": {"queue": 1, "tasks": 0, "completed": 35},
            "2": {"queue": 0, "tasks": 5, "completed": 25},
            "status": "ok",
        },
        "connection_request": {"engines": {"0": "uuid-0", "1": "uuid-1"}, "status": "ok"},
    }
    hub = keeper.Hub.__new__(keeper.Hub)
    hub.ask = lambda msg_type, content: answers[msg_type]
    assert hub.work() == (1 + 2 + 1, 40 + 35 + 25, 2)


def test_a_user_scaling_an_idle_group_takes_it_over(keeper):
    p, memory = policy(keeper, idle=1), keeper.Memory(last_activity=0.0)
    assert keeper.decide(p, 61, seen(keeper), memory)[0] == 0
    # `ipfleet scale STACK 3` while idle: the keeper forgets the idle size and does not undo it.
    assert keeper.decide(p, 70, seen(keeper, desired=3), memory) == (None, "ok")
    assert memory.idled_from is None
    # The idle clock starts again from that scale, so the new nodes idle out a full period later.
    assert keeper.decide(p, 129, seen(keeper, desired=3), memory)[0] is None
    assert keeper.decide(p, 130, seen(keeper, desired=3), memory)[0] == 0


def test_autoscaler_follows_the_queue_within_bounds_and_cools_down(keeper):
    p = policy(keeper, idle=0, autoscale=True, per_engine=2, cooldown=60)
    memory = keeper.Memory(last_activity=0.0)
    # 2 engines per node (4 engines on 2 nodes); 40 tasks want 10 nodes, the maximum is 4.
    target, why = keeper.decide(p, 100, seen(keeper, outstanding=40), memory)
    assert (target, why) == (4, "autoscale: 40 tasks outstanding")
    memory.last_change = 100
    # The queue empties: not at once, only once it has stayed low for a cool-down.
    assert keeper.decide(p, 110, seen(keeper, desired=4, engines=8), memory)[0] is None
    assert keeper.decide(p, 165, seen(keeper, desired=4, engines=8), memory)[0] is None
    assert keeper.decide(p, 171, seen(keeper, desired=4, engines=8), memory)[0] == 0
    memory.last_change = 171
    # Work again: out sooner than in (a third of the cool-down), to what the queue needs.
    assert keeper.decide(p, 180, seen(keeper, outstanding=5, desired=0, engines=0), memory)[0] is None
    assert keeper.decide(p, 191, seen(keeper, outstanding=5, desired=0, engines=0), memory)[0] == 2


def test_autoscaler_never_goes_below_the_group_minimum(keeper):
    p = policy(keeper, idle=0, autoscale=True, minimum=1, cooldown=10)
    memory = keeper.Memory(last_activity=0.0)
    assert keeper.decide(p, 100, seen(keeper, desired=3), memory)[0] is None
    assert keeper.decide(p, 111, seen(keeper, desired=3), memory)[0] == 1
