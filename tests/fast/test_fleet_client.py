"""How `ipfleet.client()` asks a controller which waiting tasks it lost: in bulk, from
what it asked only, and one by one from a controller that cannot answer in bulk."""

from __future__ import annotations

import pytest

from bootstrap.ipfleet_node import wire
from ipfleet import fleet_client
from ipfleet.fleet_client import FleetClient


def client_asking(answer):
    """A FleetClient whose requests to the controller are ANSWER(msg_type, content)."""
    made = FleetClient.__new__(FleetClient)
    made.asked = []

    def ask(msg_type, content, timeout):
        made.asked.append((msg_type, list((content or {}).get("msg_ids", []))))
        return answer(msg_type, content)

    made._ask = ask
    return made


def test_twenty_five_thousand_waiting_tasks_take_three_requests(monkeypatch):
    lost = {f"task-{i}" for i in range(0, 25_000, 7)}
    rc = client_asking(lambda _t, c: {"status": "ok", "unknown": [m for m in c["msg_ids"] if m in lost]})
    ids = [f"task-{i}" for i in range(25_000)]
    assert rc._unknown_to_controller(ids, 5) == sorted(lost, key=ids.index)
    assert [t for t, _ in rc.asked] == [wire.TASK_STATUS_REQUEST] * 3
    assert max(len(batch) for _, batch in rc.asked) == fleet_client.STATUS_BATCH


def test_a_reply_cannot_add_tasks_to_send_again():
    rc = client_asking(lambda _t, c: {"status": "ok", "unknown": ["not-asked", 7, c["msg_ids"][0]]})
    assert rc._unknown_to_controller(["a", "b"], 5) == ["a"]


@pytest.mark.parametrize(
    "reply", [{"status": "ok"}, {"status": "ok", "unknown": "a"}, {"status": "error", "evalue": "x"}]
)
def test_a_reply_that_says_nothing_usable_is_an_error(reply):
    rc = client_asking(lambda _t, _c: reply)
    with pytest.raises(RuntimeError):
        rc._unknown_to_controller(["a"], 5)


def test_a_controller_without_the_bulk_answer_is_asked_one_by_one():
    known = {"b"}

    def answer(msg_type, content):
        if msg_type == wire.TASK_STATUS_REQUEST:
            return {"status": "error", "ename": "KeyError", "evalue": f"Bad Message Type: {msg_type!r}"}
        first = next((m for m in content["msg_ids"] if m not in known), None)
        return {"status": "ok"} if first is None else {"status": "error", "evalue": f"'No such message: {first}'"}

    rc = client_asking(answer)
    assert rc._unknown_to_controller(["a", "b", "c"], 5) == ["a", "c"]
    assert [t for t, _ in rc.asked] == [wire.TASK_STATUS_REQUEST, "result_request", "result_request", "result_request"]


def test_a_reply_cannot_name_another_batchs_task(monkeypatch):
    monkeypatch.setattr(fleet_client, "STATUS_BATCH", 2)
    rc = client_asking(lambda _t, c: {"status": "ok", "unknown": ["a", "c"]})  # whatever was asked
    assert rc._unknown_to_controller(["a", "b", "c", "d"], 5) == ["a", "c"]
