"""The worker's V-Reason runtime without vLLM: one record per controlled request, from its
extra_args to its RequestEnd, and failures contained to the request they belong to."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vreason.server.controller import ControllerSlab, TailWeights, VReasonParams
from vreason.server.vllm_ext.runtime import VReasonRuntime
from vreason.server.keys import CHOICE_KEY, EXTRA_ARGS_KEY, REQUEST_TAG_KEY
from vreason.server.messages import FAILED, NO_SLOT

HKV, HQ, D, HID, INTER, VOCAB = 2, 4, 8, 16, 24, 64
VIDEO, IMAGE, TEXT = 900, 901, 5


class Channel:
    def __init__(self):
        self.rows, self.ends = [], []

    def send(self, rows, ends) -> None:
        self.rows += rows
        self.ends += ends


def request(prompt, vreason=None, choice=0):
    extra = None if vreason is None else {EXTRA_ARGS_KEY: vreason, REQUEST_TAG_KEY: "tag", CHOICE_KEY: choice}
    return SimpleNamespace(prompt_token_ids=prompt, sampling_params=SimpleNamespace(extra_args=extra))


def runtime(slots=2, positions=8) -> VReasonRuntime:
    rt = VReasonRuntime(torch.device("cpu"), check=False, compilation=lambda: "eager")
    rt.trace.pusher = Channel()
    g = torch.Generator().manual_seed(0)
    r = lambda *s, std=0.3: torch.randn(*s, generator=g) * std  # noqa: E731
    tail = TailWeights(o_proj=r(HID, HQ * D), post_norm=1 + r(HID, std=0.1), gate_up=r(2 * INTER, HID),
                       down=r(HID, INTER), final_norm=1 + r(HID, std=0.1), lm_head=r(VOCAB, HID), eps=1e-6)
    rt.start(ControllerSlab(slots, positions, HKV, D, torch.float32, "cpu"), tail, video_token_id=VIDEO,
             image_token_id=IMAGE)
    return rt


def test_plain_and_disabled_requests_are_read_once_and_never_planned():
    rt = runtime()
    requests = {"p": request([TEXT] * 3), "off": request([VIDEO, TEXT], {"enabled": False})}
    assert rt.plan_step([(0, "p"), (1, "off")], requests) is None
    assert rt.requests == {} and rt.uncontrolled == {"p", "off"}
    assert rt.plan_step([(0, "p"), (1, "off")], {}) is None  # not read again
    rt.finish(["p", "off"])
    assert rt.uncontrolled == set() and rt.trace.pusher.ends == []


def test_one_record_from_extra_args_to_its_end():
    rt = runtime()
    requests = {"a": request([TEXT, VIDEO, VIDEO], {"trace": True}, choice=1)}
    plan = rt.plan_step([(0, "a")], requests)
    rec = rt.requests["a"]
    assert (rec.tag, rec.choice, rec.params) == ("tag", 1, VReasonParams(trace=True))
    assert rec.controller.runs == [(1, 2)] and plan.loads[0][0] is rec.controller
    assert rt.stats().active_slots == 1
    rt.finish(["a"])
    (end,) = rt.trace.pusher.ends
    assert (end.tag, end.choice, end.code, end.positions) == ("tag", 1, None, 2)
    assert rt.requests == {} and rt.slab.free_slots() == rt.slab.slots


def test_unreadable_options_and_no_slot_end_that_request_alone():
    rt = runtime(slots=1, positions=2)
    requests = {"bad": request([VIDEO], {"lr": -1.0}), "big": request([VIDEO] * 3, {}),
                "ok": request([VIDEO, VIDEO], {})}
    rt.plan_step([(0, "bad"), (1, "big"), (2, "ok")], requests)
    assert [r.req_id for _, r in rt.rows] == ["ok"]
    codes = [e.code for e in rt.trace.ends]
    assert codes == [FAILED, NO_SLOT] and rt.totals["failed"] == 1 and rt.totals["refused_no_slot"] == 1
    assert rt.uncontrolled == {"bad", "big"}
    rt.fail("ok", RuntimeError("boom"))
    assert rt.rows == [] and rt.slab.free_slots() == 1 and rt.trace.ends[-1].error == "RuntimeError: boom"


def test_test_knobs_are_read_only_with_the_test_flag():
    rt = runtime()
    rt.plan_step([(0, "k")], {"k": request([VIDEO], {"force_alpha": 1})})
    (end,) = rt.trace.ends
    assert end.code == FAILED and "unknown vreason option" in end.error and rt.hooks is None
    rt = runtime()
    rt.enable_test_knobs()
    rt.plan_step([(0, "k")], {"k": request([VIDEO], {"force_alpha": 1})})
    assert rt.trace.ends == [] and rt.requests["k"].params.force_alpha == 1 and rt.hooks is not None


def test_a_step_like_the_last_reuses_its_plan_and_a_change_builds_a_new_one():
    """The plan's index tensors are rebuilt only when the rows attending change (a request joins,
    leaves, moves in the batch or starts overlaying) or a V0 load is due."""
    rt = runtime(slots=2)
    requests = {"a": request([TEXT, VIDEO, VIDEO], {"update_every": 1}),
                "b": request([VIDEO, TEXT], {"update_every": 1})}
    first = rt.plan_step([(0, "a")], requests)  # loads a's V0
    assert first.loads and rt.plan_step([(0, "a")], requests) is not first  # until the forward loads it
    rt.requests["a"].controller.loaded = True  # what layer L's attention does with the plan's load
    again = rt.plan_step([(0, "a")], requests)
    assert rt.plan_step([(0, "a")], requests) is again  # nothing changed
    moved = rt.plan_step([(1, "a")], requests)
    assert moved is not again and moved.rows.tolist() == [1]
    joined = rt.plan_step([(0, "b"), (1, "a")], requests)  # b's load
    rt.requests["b"].controller.loaded = True
    steady = rt.plan_step([(0, "b"), (1, "a")], requests)
    assert rt.plan_step([(0, "b"), (1, "a")], requests) is steady
    assert joined is not steady and not steady.loads and steady.rows.tolist() == [0, 1]
    assert steady.slots.tolist() == [rt.requests["b"].controller.slot, rt.requests["a"].controller.slot]
    rt.requests["a"].controller.updates = 1  # a starts overlaying: its flag is part of the plan
    assert rt.plan_step([(0, "b"), (1, "a")], requests) is not steady
