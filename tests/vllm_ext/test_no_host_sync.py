"""The runner's per-step V-Reason code makes no host sync on a step without updates and at most
one on a step with updates (docs/design.md, "Host syncs").

On a GPU vLLM schedules asynchronously: the CPU prepares step N+1 while the device runs step N.
A blocking host<->device copy or a read of a device value (.item(), .tolist(), bool(tensor))
stalls the CPU until the device has drained, for the whole batch, plain requests too. CPU runs
never show it (async scheduling is off there), so this test runs the runner's planning
(`_vreason_plan`: `VReasonRuntime.plan_step`, with `OverlayPlan.for_rows`) and its controller step
(`sample_tokens`: `VReasonRuntime.control`, `controller_step`, `after_sampling`) on FAKE CUDA tensors (FakeTensorMode makes them on a
CPU-only machine) under a dispatch mode that records every host sync:
- a host->device copy (`aten._to_copy`, `aten.copy_`) without non_blocking or from memory that
  is not pinned (including the one that indexing a device tensor with a Python list makes),
- a blocking device->host copy, or a non-blocking one into memory that is not pinned,
- a read of a device value (`aten._local_scalar_dense`; a fake `.tolist()` dispatches one per
  element: a run of them is one read), and ops whose output size depends on device values,
- waiting on a CUDA event whose work has not completed (the events are stand-ins here: a sync
  completes every event recorded before it, as on one stream).
vLLM itself is replaced by stand-ins for the few runner attributes the mixin reads. The Triton
kernels (asynchronous launches on a device) cannot run on fake tensors: their torch references
(the same math, no host reads) run instead.
"""

from __future__ import annotations

import functools
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("vllm")

from vreason.kernels import controller_update, entropy_grad  # noqa: E402
from vreason.server.controller import ControllerSlab, TailWeights, VReasonParams, entropy  # noqa: E402
from vreason.server.controller import step as step_module  # noqa: E402
from vreason.server.vllm_ext.overlay import OverlayResult  # noqa: E402
from vreason.server.vllm_ext.runner import VReasonRunnerMixin  # noqa: E402
from vreason.server.keys import CHOICE_KEY, EXTRA_ARGS_KEY, REQUEST_TAG_KEY  # noqa: E402

aten = torch.ops.aten
HKV, HQ, D, HID, INTER, VOCAB = 2, 4, 8, 16, 24, 64
VIDEO, IMAGE, TEXT = 900, 901, 5
SCALAR_READ_VIEWS = {aten.unbind.int}  # what a fake .tolist() dispatches between its scalar reads
COPIES = {aten._to_copy.default, aten.copy_.default, aten.to.dtype_layout, aten.to.device, aten.to.dtype,
          aten.to.other}
SIZE_FROM_VALUES = {aten.nonzero.default, aten.masked_select.default, aten.equal.default,
                    aten.is_nonzero.default, aten._unique2.default, aten.unique_dim.default,
                    aten.unique_consecutive.default}


# -- the sync recorder ---------------------------------------------------------------------------

class HostSyncs(TorchDispatchMode):
    """Records each host sync of the ops it sees (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.events: list[StubEvent] = []
        self._pinned: dict[int, weakref.ref] = {}
        self._reading = False  # inside a run of scalar reads (one .tolist())

    def sync(self, what: str) -> None:
        self.syncs.append(what)
        for e in self.events:  # everything queued before a sync has completed after it
            e.done = True

    def take(self) -> list[str]:
        out, self.syncs = self.syncs, []
        return out

    def event(self) -> StubEvent:
        e = StubEvent(self)
        self.events.append(e)
        return e

    def pinned(self, t) -> bool:
        ref = self._pinned.get(id(t))
        return ref is not None and ref() is t

    def _copy(self, src, dst_device, non_blocking: bool, src_pinned: bool, dst_pinned: bool, op) -> None:
        if src.device.type == "cpu" and dst_device.type == "cuda":
            if not non_blocking:
                self.sync(f"{op}: blocking host->device copy")
            elif not src_pinned:
                self.sync(f"{op}: host->device copy from pageable memory")
        elif src.device.type == "cuda" and dst_device.type == "cpu":
            if not non_blocking:
                self.sync(f"{op}: blocking device->host copy")
            elif not dst_pinned:
                self.sync(f"{op}: device->host copy into pageable memory")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten._local_scalar_dense.default, aten.item.default):
            x = args[0]
            if x.device.type == "cuda" and not self._reading:
                self.sync("read of a device value (.item()/.tolist()/bool())")
            self._reading = x.device.type == "cuda"
            # fake tensors have no values: finite, positive stand-ins let the step run on
            return True if x.dtype == torch.bool else 1 if not x.dtype.is_floating_point else 1.0
        if func.namespace != "prim" and func not in SCALAR_READ_VIEWS:
            self._reading = False
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func in SIZE_FROM_VALUES and any(t.device.type == "cuda" for t in tensors):
            self.sync(f"{func}: output size from device values")
        if func in COPIES:  # (under inference mode .to()/.cpu() reach the mode as aten.to.*)
            a = dict(zip([x.name for x in func._schema.arguments], args), **kwargs)
            non_blocking = bool(a.get("non_blocking", False))
            if func is aten.copy_.default:
                dst = a["self"]
                self._copy(a["src"], dst.device, non_blocking, self.pinned(a["src"]), self.pinned(dst), func)
            else:
                src = a["self"]
                dst = a["other"].device if "other" in a else torch.device(a.get("device") or src.device)
                self._copy(src, dst, non_blocking, self.pinned(src), bool(a.get("pin_memory")), func)
        out = func(*args, **kwargs)
        if kwargs.get("pin_memory") and isinstance(out, torch.Tensor):
            self._pinned[id(out)] = weakref.ref(out)
        return out


class StubEvent:
    """torch.cuda.Event as the code uses it; waiting on one not yet completed is a host sync."""

    def __init__(self, recorder: HostSyncs):
        self.recorder, self.done = recorder, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        if not self.done:
            self.recorder.sync("wait on an event not yet completed")


# -- vLLM's runner, as far as the mixin reads it ------------------------------------------------

class VllmRunnerStandIn:
    """The attributes of vLLM's GPU model runner the mixin's per-step code reads."""

    def __init__(self, device: str, prompts: dict[str, list[int]], params: dict[str, VReasonParams | None]):
        self.device = torch.device(device)
        hf_config = SimpleNamespace(video_token_id=VIDEO, image_token_id=IMAGE)
        self.model_config = SimpleNamespace(hf_config=hf_config)
        self.requests = {}
        for r, prompt in prompts.items():
            p = params[r]
            extra = None if p is None else {EXTRA_ARGS_KEY: p.to_dict(), REQUEST_TAG_KEY: f"tag-{r}",
                                            CHOICE_KEY: 0}
            self.requests[r] = SimpleNamespace(prompt_token_ids=prompt,
                                               sampling_params=SimpleNamespace(extra_args=extra))
        self.input_batch = SimpleNamespace(req_ids=[], num_reqs=0, req_id_to_index={})
        self.discard_request_mask = SimpleNamespace(np=np.zeros(64, dtype=bool))
        self.execute_model_state = None
        self.use_async_scheduling = False

    def schedule(self, req_ids: list[str]) -> None:
        self.input_batch.req_ids = list(req_ids)
        self.input_batch.num_reqs = len(req_ids)
        self.input_batch.req_id_to_index = {r: i for i, r in enumerate(req_ids)}

    def _update_states(self, scheduler_output):  # vLLM's bookkeeping: finished requests leave the batch
        self.schedule([r for r in self.input_batch.req_ids if r not in scheduler_output.finished_req_ids])

    def sample_tokens(self, grammar_output):  # vLLM's sampler (not under test)
        return None


class Runner(VReasonRunnerMixin, VllmRunnerStandIn):
    pass


class Channel:
    """Records what the runner sends on the V-Reason channel."""

    def __init__(self):
        self.rows, self.ends = [], []

    def send(self, rows, ends) -> None:
        self.rows += [(r.tag, r.choice, r.row) for r in rows]
        self.ends += ends


def make_runner(device: str, prompts, params, dtype=torch.float32, slots=4, positions=16) -> Runner:
    runner = Runner(device, prompts, params)
    runner.vreason.trace.pusher = runner.channel = Channel()
    slab = ControllerSlab(slots, positions, HKV, D, torch.bfloat16, runner.device)
    g = torch.Generator().manual_seed(0)
    r = lambda *s, std=0.3: (torch.randn(*s, generator=g) * std).to(runner.device, dtype)  # noqa: E731
    tail = TailWeights(o_proj=r(HID, HQ * D), post_norm=1 + r(HID, std=0.1),
                       gate_up=r(2 * INTER, HID), down=r(HID, INTER),
                       final_norm=1 + r(HID, std=0.1), lm_head=r(VOCAB, HID, std=1.0), eps=1e-6)
    runner.vreason.start(slab, tail, video_token_id=VIDEO, image_token_id=IMAGE)
    return runner


def forward(runner: Runner, seed: int):
    """What vLLM's forward and layer L's overlay leave for the runner (not under test): the
    plan's result, the logits and the aux residual. Returns the result and the step's logits."""
    plan = runner.vreason.plan
    dev = runner.device
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dev)  # noqa: E731
    result = None
    if plan is not None:
        for s, _, positions in plan.loads:
            s.load(rnd(HKV, positions.shape[0], D))
        k = plan.rows.shape[0]
        # decode: one query token per row, in batch order
        result = OverlayResult(last=plan.rows, o=rnd(k, HQ * D), a=torch.softmax(rnd(k, HQ, plan.p_max), -1))
    n = runner.input_batch.num_reqs
    logits = rnd(n, VOCAB)
    runner.execute_model_state = SimpleNamespace(logits=logits.clone(), aux_hidden_states=[rnd(n, HID)])
    return result, logits


def step(runner: Runner, seed: int, recorder: HostSyncs | None = None) -> tuple[list[str], torch.Tensor]:
    """One engine step: plan (before the forward), forward (stand-in), sample_tokens. Returns
    the host syncs of the runner's own code and the step's logits."""
    syncs = []
    if recorder is not None:
        with recorder:
            runner._vreason_plan()
        syncs += recorder.take()
    else:
        runner._vreason_plan()
    result, logits = forward(runner, seed)
    if recorder is not None:
        with recorder:
            runner.vreason.forward_done(result)
            runner.sample_tokens(None)
        syncs += recorder.take()
    else:
        runner.vreason.forward_done(result)
        runner.sample_tokens(None)
    runner.execute_model_state = None
    return syncs, logits


def finish(runner: Runner, req_ids) -> None:
    runner._update_states(SimpleNamespace(finished_req_ids=set(req_ids)))


@pytest.fixture
def torch_kernels(monkeypatch):
    monkeypatch.setattr(step_module, "entropy_grad", functools.partial(entropy_grad, backend="torch"))
    monkeypatch.setattr(step_module, "controller_update",
                        functools.partial(controller_update, backend="torch"))


@pytest.fixture(autouse=True)
def no_fake_constants(monkeypatch):
    """FakeTensorMode keeps one-element host tensors as real constants and runs ops on them for
    real (a CUDA copy of one, on a machine without CUDA, raises): every tensor stays fake here."""
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 0)


def test_fake_cuda_tensors_and_the_recorder_see_todays_offenders():
    """The recorder sees each kind of sync on fake CUDA tensors, on this CPU-only machine."""
    with FakeTensorMode():
        x = torch.zeros(4, 8, device="cuda")
        assert x.is_cuda
        rec = HostSyncs()
        for inference in (False, True):
            with rec, torch.inference_mode(inference):
                x[[0, 2]]  # indexing with a Python list copies it to the device, blocking
                torch.tensor([1, 2]).to("cuda")
                torch.tensor([1, 2]).to("cuda", non_blocking=True)  # pageable
                x[:, 0].tolist()  # one read
                x[0, 0].item()
                x.cpu()
            assert len(rec.take()) == 6, inference
        with rec:
            step_module.to_device(torch.tensor([1, 2]), x.device)
            x[step_module.rows_index([0, 2], x.device)]
            x[step_module.rows_index([1, 2, 3], x.device)]
            buf = torch.empty(4, pin_memory=True)
            buf.copy_(x[:, 0], non_blocking=True)
        assert rec.take() == []


@pytest.mark.parametrize("several", [False, True], ids=["1 row", "several rows"])
def test_no_host_sync_without_updates_and_at_most_one_with(several, torch_kernels, monkeypatch):
    traced = lambda **kw: VReasonParams(trace=True, **kw)  # noqa: E731
    video = [TEXT, VIDEO, VIDEO, VIDEO, TEXT]
    if several:  # a plain request between controlled ones; two video runs; a different update schedule
        prompts = {"c0": video, "plain": [TEXT] * 4, "c1": [VIDEO, VIDEO, TEXT, VIDEO, TEXT],
                   "c2": [TEXT, VIDEO, VIDEO, TEXT]}
        params = {"c0": traced(), "plain": None, "c1": traced(apply="next"), "c2": traced(update_every=3)}
    else:
        prompts, params = {"c0": video}, {"c0": traced()}
    controlled = [r for r in prompts if params[r] is not None]
    rec = HostSyncs()
    monkeypatch.setattr(step_module, "record_event", lambda device: rec.event())
    with FakeTensorMode():
        runner = make_runner("cuda", prompts, params, torch.bfloat16)  # the tail as served: bf16 weights
        runner.schedule(list(prompts))
        steps = 7
        for t in range(1, steps + 1):  # t = 1 is the forward that ends the prefills (V0 is loaded)
            updating = any(t % params[r].update_every == 0 for r in controlled)
            syncs, _ = step(runner, t, rec)
            if updating:
                assert len(syncs) <= 1, (t, syncs)
            else:
                assert syncs == [], (t, syncs)
        # the device catches up; the requests end (the rows of the last step are read then)
        for e in rec.events:
            e.done = True
        with rec:  # (it also gives the fake host copies their stand-in values)
            finish(runner, controlled)
    assert rec.take() == []
    ch = runner.channel
    for r in controlled:
        rows = [row for tag, _, row in ch.rows if tag == f"tag-{r}"]
        assert [row.t for row in rows] == list(range(1, steps + 1)), r  # complete, in order
        assert [row.updated for row in rows] == [t % params[r].update_every == 0 for t in range(1, steps + 1)]
        (end,) = [e for e in ch.ends if e.tag == f"tag-{r}"]
        assert end.rows_sent == steps and end.steps == steps and end.code is None


def run(runner: Runner, steps: int, seed: int = 0) -> list[torch.Tensor]:
    return [step(runner, seed + t)[1] for t in range(1, steps + 1)]


def rows_of(runner: Runner, r: str):
    return [row for tag, _, row in runner.channel.rows if tag == f"tag-{r}"]


def end_of(runner: Runner, r: str):
    (end,) = [e for e in runner.channel.ends if e.tag == f"tag-{r}"]
    return end


def test_cpu_rows_are_complete_in_order_and_one_step_late():
    """On CPU the values are read at once; a request's newest row waits for its next step (or
    its end), so nothing is lost or reordered."""
    prompts = {"a": [TEXT, VIDEO, VIDEO, TEXT], "p": [TEXT] * 3, "b": [VIDEO, TEXT, VIDEO, VIDEO]}
    params = {"a": VReasonParams(trace=True), "p": None, "b": VReasonParams(trace=True, update_every=3)}
    runner = make_runner("cpu", prompts, params)
    runner.schedule(list(prompts))
    logits = run(runner, 2)
    assert [row.t for row in rows_of(runner, "a")] == [1]
    assert rows_of(runner, "a")[0].entropy == pytest.approx(entropy(logits[0][:1]).item(), abs=1e-6)
    assert rows_of(runner, "b")[0].entropy == pytest.approx(entropy(logits[0][2:]).item(), abs=1e-6)
    run(runner, 4, seed=10)
    finish(runner, ["a", "b"])
    for r in ("a", "b"):
        rows = rows_of(runner, r)
        assert [row.t for row in rows] == list(range(1, 7))
        assert [row.updated for row in rows] == [t % params[r].update_every == 0 for t in range(1, 7)]
        end = end_of(runner, r)
        assert (end.rows_sent, end.steps, end.updates) == (6, 6, 6 // params[r].update_every)
    assert runner.vreason.totals["updates"] == 3 + 2 and runner.vreason.trace.reports == []
    assert runner.vreason.slab.free_slots() == runner.vreason.slab.slots


@pytest.mark.parametrize("stop_at", [2, 3], ids=["extra step without update", "extra step with update"])
def test_async_scheduling_takes_back_the_step_of_a_thrown_away_token(stop_at):
    """vLLM schedules step N+1 before token N is known: a request that stopped at N runs at N+1
    too, and its finish comes while it is still in that step's batch. Its step N+1 is not sent
    or counted. A request stopped by max_tokens is not scheduled again: all its rows count."""
    prompts = {"a": [TEXT, VIDEO, VIDEO, TEXT], "b": [VIDEO, VIDEO, TEXT]}
    params = {r: VReasonParams(trace=True) for r in prompts}
    runner = make_runner("cpu", prompts, params)
    runner.use_async_scheduling = True
    runner.schedule(["a", "b"])
    run(runner, stop_at + 1)  # "a" stopped at stop_at; its token stop_at + 1 is thrown away
    finish(runner, ["a"])  # known to the scheduler after it scheduled step stop_at + 1
    runner.schedule(["b"])
    run(runner, 1, seed=20)  # "b" reaches max_tokens at stop_at + 2
    runner.schedule([])  # so vLLM does not schedule it again; its finish comes next
    finish(runner, ["b"])
    end = end_of(runner, "a")
    assert [row.t for row in rows_of(runner, "a")] == list(range(1, stop_at + 1))
    assert (end.rows_sent, end.steps, end.updates) == (stop_at, stop_at, stop_at // 2)
    assert end.peak_step is None or end.peak_step <= stop_at
    end = end_of(runner, "b")
    assert [row.t for row in rows_of(runner, "b")] == list(range(1, stop_at + 3))
    assert (end.rows_sent, end.steps, end.updates) == (stop_at + 2, stop_at + 2, (stop_at + 2) // 2)
    assert runner.vreason.totals["updates"] == stop_at // 2 + (stop_at + 2) // 2
    assert runner.vreason.trace.reports == [] and runner.vreason.slab.free_slots() == runner.vreason.slab.slots


def test_without_async_scheduling_the_last_step_counts():
    prompts = {"a": [TEXT, VIDEO, VIDEO, TEXT]}
    runner = make_runner("cpu", prompts, {"a": VReasonParams(trace=True)})
    runner.schedule(["a"])
    run(runner, 3)
    finish(runner, ["a"])
    assert [row.t for row in rows_of(runner, "a")] == [1, 2, 3] and end_of(runner, "a").steps == 3
