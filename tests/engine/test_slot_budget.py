"""The front end's controller-slot rule: 429 only when there are fewer slots than sequences."""

from __future__ import annotations

import pytest

from vreason.server.controller.params import VReasonParams
from vreason.server.engine.controlled import SlotBudget
from vreason.server.engine.types import EngineClientError, GenerateRequest, SamplingOptions


def _req(n: int) -> GenerateRequest:
    return GenerateRequest("r", (), SamplingOptions(n=n), vreason=VReasonParams())


def test_fewer_slots_than_sequences_gives_429_and_release_frees():
    b = SlotBudget(slots=3, positions=64, max_num_seqs=8)
    assert b.admit(_req(2), {}, None) == 2
    with pytest.raises(EngineClientError) as e:
        b.admit(_req(2), {}, None)
    assert e.value.status == 429 and e.value.code == "vreason_busy"
    b.release(2)
    assert b.admit(_req(3), {}, None) == 3


def test_a_slot_per_sequence_lets_requests_queue_in_vllm():
    b = SlotBudget(slots=4, positions=64, max_num_seqs=4)
    for _ in range(5):
        b.admit(_req(2), {}, None)
    assert b.admitted == 10


def test_unavailable_and_oversized_n_are_400():
    b = SlotBudget(slots=2, positions=64, max_num_seqs=2)
    with pytest.raises(EngineClientError, match="not available") as e:
        b.check(_req(1), ("tensor parallelism",))
    assert e.value.status == 400 and e.value.param == "vreason"
    with pytest.raises(EngineClientError) as e:
        b.check(_req(3), ())
    assert e.value.param == "n" and e.value.code == "vreason_budget"
