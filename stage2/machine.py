"""The stage2 state machine (transitions) and the loop that drives it.

The machine only knows which moves are legal; the work of each state is a step function handed in
by the caller (before the pivot: ``stage2.before``, after it: ``stage2.afterpivot``). Every transition is
logged and journaled from one place (``_finalize``). A step that raises sends the machine to
``aborted`` when nothing was written yet, else to ``failed_after_write``; both end in ``rebooting``.
Broken stays broken: from a failure state the only legal trigger is ``reboot``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transitions import EventData, Machine, MachineError

from stage2.report import Report
from stage2.states import BEFORE_WRITE, TERMINAL_FAILURES, State, transition_table
from wrtcore import log


class InjectedFault(RuntimeError):
    """Raised on entering the state named by ``Context.fault_state`` (fault injection for tests)."""


@dataclass
class Context:
    """What the steps share. Mutable on purpose: steps record their results here."""

    image: str
    backup: str | None
    env: dict[str, str]
    command: str | None = None
    report: Report = field(default_factory=Report)
    fault_state: str | None = None
    requested_at: float = field(default_factory=time.time)
    notify: Callable[[dict[str, Any]], None] = lambda event: None
    stop_services: Callable[[], list[dict[str, Any]]] = lambda: []
    spare_pids: tuple[int, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)  # step-to-step values (plan, target devices, ...)


Step = Callable[[Context], None]


class Stage2:
    """The model; its triggers (advance, abort, fail_after_write, reboot) are bound by transitions."""

    state: State

    if TYPE_CHECKING:
        def advance(self) -> bool: ...
        def abort(self) -> bool: ...
        def fail_after_write(self) -> bool: ...
        def reboot(self) -> bool: ...

    def __init__(self, ctx: Context, initial: State = State.IDLE) -> None:
        self.ctx = ctx
        self._entered_at = time.monotonic()
        self.machine = Machine(
            model=self, states=State, transitions=transition_table(), initial=initial,
            auto_transitions=False, queued=True, send_event=True,
            finalize_event=self._finalize,
        )

    def _finalize(self, event: EventData) -> None:
        if not event.result or event.transition is None:
            return  # a refused trigger changes nothing: no timeline entry, no timer restart
        now = time.monotonic()
        src = State[event.transition.source].value
        dst = self.state.value
        duration = round(now - self._entered_at, 4)
        self._entered_at = now
        self.ctx.report.timeline.append({"state": dst, "from": src, "t": round(time.time(), 4),
                                         "previous_duration": duration})
        record = {"event": "transition", "trigger": event.event.name, "from": src, "state": dst,
                  "duration": duration, "result": "ok" if event.result else "refused"}
        log.get().info("transition", **{k: v for k, v in record.items() if k != "event"})
        self.ctx.notify(record)


def run(ctx: Context, steps: Mapping[State, Step], initial: State = State.IDLE) -> State:
    """Drive the machine from ``initial`` through the steps until a step does not return (the pivot
    exec, the reboot) or the machine reaches ``rebooting``. Returns the last state only when the
    ``rebooting`` step itself returned (tests that stop short of a real reboot)."""
    model = Stage2(ctx, initial)
    while model.state is not State.REBOOTING:
        if model.state in TERMINAL_FAILURES or model.state is State.FINALIZING:
            model.reboot()
        else:
            model.advance()
        _run_step(model, steps)
    return model.state


def _run_step(model: Stage2, steps: Mapping[State, Step]) -> None:
    state = model.state
    ctx = model.ctx
    step = steps.get(state)
    try:
        if ctx.fault_state == state.value:
            raise InjectedFault(f"fault injected in state {state.value}")
        if step is not None:
            step(ctx)
    except BaseException as exc:  # every failure is recorded; PID 1 must go on to the reboot
        if state is State.REBOOTING:
            raise
        _fail(model, state, exc)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            log.get().warning("interrupt ignored during upgrade", state=state.value)
        _run_step(model, steps)


def _fail(model: Stage2, state: State, exc: BaseException) -> None:
    ctx = model.ctx
    report = ctx.report
    if state in TERMINAL_FAILURES:
        # a failure while reporting a failure: keep the first error, go on to the reboot
        log.get().error("failure while handling failure", state=state.value, error=str(exc))
        model.reboot()
        return
    offset = getattr(exc, "offset", None)
    if offset is not None:
        report.offset = int(offset)
    if getattr(exc, "written", None) is True:
        report.written = True
    report.failed_state = state.value
    report.error = f"{type(exc).__name__}: {exc}"
    log.get().error("step failed", state=state.value, error=report.error, written=report.written,
                    offset=report.offset)
    nothing_written = state in BEFORE_WRITE or (state is State.FLASHING and not report.written)
    try:
        if nothing_written:
            report.outcome = "aborted"
            model.abort()
        else:
            report.written = True
            report.outcome = "failed_after_write"
            model.fail_after_write()
    except MachineError:
        model.reboot()


def mermaid() -> str:
    """The machine drawn by transitions itself, in its initial state (committed as stage2/machine.mmd)."""
    from transitions.extensions import GraphMachine

    holder = type("Diagram", (), {})()
    GraphMachine(model=holder, states=State, transitions=transition_table(), initial=State.IDLE,
                 auto_transitions=False, graph_engine="mermaid")
    return str(holder.get_graph().draw(None))
