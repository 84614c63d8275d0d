"""The stage2 transition table and the loop that drives it, with fake step functions (no root)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from transitions import MachineError

import stage2
from stage2.machine import Context, InjectedFault, Stage2, Step, mermaid, run
from stage2.states import BEFORE_WRITE, FORWARD, TERMINAL_FAILURES, State, transition_table
from wrtcore.errors import WriteError

RUNNING = [s for s in FORWARD if s not in (State.IDLE, State.REBOOTING)]
AFTER_WRITE = [State.VERIFYING, State.SAVING_CONFIG, State.FINALIZING]
PRE_FLASH = [s for s in RUNNING if s in BEFORE_WRITE]  # validating .. releasing_root
TRIGGERS = ("advance", "abort", "fail_after_write", "reboot")


def ctx() -> Context:
    return Context(image="/tmp/sysupgrade.img", backup=None, env={})


def fire(state: State, trigger: str) -> State:
    """Fire ``trigger`` on a fresh machine in ``state``; the state reached (MachineError propagates)."""
    model = Stage2(ctx(), initial=state)
    getattr(model, trigger)()
    return model.state


def legal(state: State, trigger: str) -> bool:
    try:
        fire(state, trigger)
    except MachineError:
        return False
    return True


# --- the table ------------------------------------------------------------------------------------------


def test_forward_path_is_the_documented_order() -> None:
    assert FORWARD[0] is State.IDLE and FORWARD[-1] is State.REBOOTING
    assert FORWARD.index(State.PIVOTING) < FORWARD.index(State.RELEASING_ROOT) < FORWARD.index(State.FLASHING)
    assert set(FORWARD) | TERMINAL_FAILURES == set(State)
    assert set(FORWARD[: FORWARD.index(State.FLASHING)]) == BEFORE_WRITE


@pytest.mark.parametrize("src", FORWARD[:-2], ids=lambda s: s.value)
def test_every_forward_step_is_legal(src: State) -> None:
    assert fire(src, "advance") is FORWARD[FORWARD.index(src) + 1]


def test_finalizing_reaches_rebooting_only_by_reboot() -> None:
    assert fire(State.FINALIZING, "reboot") is State.REBOOTING
    assert not legal(State.FINALIZING, "advance")


@pytest.mark.parametrize("src", list(State), ids=lambda s: s.value)
def test_abort_only_before_writing_and_from_flashing(src: State) -> None:
    expected = src in PRE_FLASH or src is State.FLASHING
    assert legal(src, "abort") == expected
    if expected:
        assert fire(src, "abort") is State.ABORTED


@pytest.mark.parametrize("src", list(State), ids=lambda s: s.value)
def test_fail_after_write_only_from_flashing_on(src: State) -> None:
    expected = src in (State.FLASHING, *AFTER_WRITE)
    assert legal(src, "fail_after_write") == expected
    if expected:
        assert fire(src, "fail_after_write") is State.FAILED_AFTER_WRITE


@pytest.mark.parametrize("src", [State.ABORTED, State.FAILED_AFTER_WRITE], ids=lambda s: s.value)
@pytest.mark.parametrize("trigger", ["advance", "abort", "fail_after_write"])
def test_broken_stays_broken(src: State, trigger: str) -> None:
    model = Stage2(ctx(), initial=src)
    with pytest.raises(MachineError):
        getattr(model, trigger)()
    assert model.state is src
    model.reboot()
    assert model.state is State.REBOOTING


@pytest.mark.parametrize("src", list(State), ids=lambda s: s.value)
def test_reboot_only_from_finalizing_and_the_failure_states(src: State) -> None:
    assert legal(src, "reboot") == (src in (State.FINALIZING, *TERMINAL_FAILURES))


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_rebooting_is_final(trigger: str) -> None:
    assert not legal(State.REBOOTING, trigger)


def test_no_auto_transitions() -> None:
    model = Stage2(ctx())
    assert not hasattr(model, "to_FLASHING") and not hasattr(model, "to_REBOOTING")
    triggers = {t["trigger"] for t in transition_table()}
    assert triggers == set(TRIGGERS)


# --- run() with fake steps ----------------------------------------------------------------------------


def recording(visited: list[State], fail_in: State | None = None,
              exc: Callable[[], BaseException] = lambda: RuntimeError("boom")) -> dict[State, Step]:
    def make(state: State) -> Step:
        def step(c: Context) -> None:
            visited.append(state)
            if state is fail_in:
                raise exc()
        return step
    return {s: make(s) for s in State}


def test_full_run_visits_every_forward_state_in_order() -> None:
    c, visited = ctx(), list[State]()
    assert run(c, recording(visited)) is State.REBOOTING
    assert visited == list(FORWARD[1:])
    assert c.report.outcome not in ("aborted", "failed_after_write")
    assert c.report.failed_state is None and c.report.error is None and c.report.written is False


def test_timeline_records_each_state_with_its_predecessor() -> None:
    c = ctx()
    run(c, {})
    assert [e["state"] for e in c.report.timeline] == [s.value for s in FORWARD[1:]]
    for entry in c.report.timeline:
        assert entry["previous_duration"] >= 0 and entry["t"] > 0


def test_notify_gets_every_transition() -> None:
    events: list[dict[str, object]] = []
    c = ctx()
    c.notify = events.append
    run(c, {})
    assert [e["state"] for e in events] == [s.value for s in FORWARD[1:]]
    assert all(e["event"] == "transition" and e["result"] == "ok" for e in events)
    assert events[-1]["trigger"] == "reboot" and events[0]["trigger"] == "advance"


def test_resuming_after_the_pivot_starts_at_pivoting() -> None:
    c, visited = ctx(), list[State]()
    assert run(c, recording(visited), initial=State.PIVOTING) is State.REBOOTING
    assert visited == list(FORWARD[FORWARD.index(State.RELEASING_ROOT):])


@pytest.mark.parametrize("failing", PRE_FLASH, ids=lambda s: s.value)
def test_failure_before_flashing_aborts_then_reboots(failing: State) -> None:
    c, visited = ctx(), list[State]()
    assert run(c, recording(visited, failing, lambda: OSError(5, "no"))) is State.REBOOTING
    assert visited == [*FORWARD[1 : FORWARD.index(failing) + 1], State.ABORTED, State.REBOOTING]
    assert c.report.outcome == "aborted"
    assert c.report.failed_state == failing.value
    assert c.report.error == "OSError: [Errno 5] no"
    assert c.report.written is False
    assert [e["state"] for e in c.report.timeline][-2:] == ["aborted", "rebooting"]


@pytest.mark.parametrize("failing", AFTER_WRITE, ids=lambda s: s.value)
def test_failure_after_the_write_is_failed_after_write(failing: State) -> None:
    c, visited = ctx(), list[State]()
    assert run(c, recording(visited, failing)) is State.REBOOTING
    assert visited[-3:] == [failing, State.FAILED_AFTER_WRITE, State.REBOOTING]
    assert State.ABORTED not in visited
    assert c.report.outcome == "failed_after_write"
    assert c.report.failed_state == failing.value
    assert c.report.written is True
    assert c.report.error == "RuntimeError: boom"


class Refused(Exception):
    written = False
    offset = 0


def test_flash_error_with_nothing_written_aborts() -> None:
    c, visited = ctx(), list[State]()
    run(c, recording(visited, State.FLASHING, lambda: Refused("image larger than target")))
    assert visited[-2:] == [State.ABORTED, State.REBOOTING]
    assert c.report.outcome == "aborted" and c.report.written is False
    assert c.report.failed_state == "flashing" and c.report.offset == 0


def test_flash_write_error_after_bytes_written_is_failed_after_write() -> None:
    c, visited = ctx(), list[State]()
    err = WriteError("write failed: Input/output error", offset=4 << 20, written=True)
    run(c, recording(visited, State.FLASHING, lambda: err))
    assert visited[-2:] == [State.FAILED_AFTER_WRITE, State.REBOOTING]
    assert c.report.outcome == "failed_after_write"
    assert c.report.written is True and c.report.offset == 4 << 20
    assert c.report.error == "WriteError: write failed: Input/output error at offset 4194304"


def test_flash_write_error_with_written_false_from_write_error_aborts() -> None:
    c = ctx()
    err = WriteError("image larger than target", offset=1 << 20, written=False)
    run(c, recording([], State.FLASHING, lambda: err))
    assert c.report.outcome == "aborted" and c.report.offset == 1 << 20 and c.report.written is False


def test_flash_failure_after_the_step_recorded_a_write_is_failed_after_write() -> None:
    """A plain exception (no ``written``) after the step itself noted written bytes is not an abort."""
    def flash(c: Context) -> None:
        c.report.written = True
        raise RuntimeError("lost the device")

    c = ctx()
    run(c, {State.FLASHING: flash})
    assert c.report.outcome == "failed_after_write"


@pytest.mark.parametrize("state", [State.TERMINATING, State.FLASHING, State.SAVING_CONFIG],
                         ids=lambda s: s.value)
def test_fault_injection_raises_in_that_state_instead_of_its_step(state: State) -> None:
    c, visited = ctx(), list[State]()
    c.fault_state = state.value
    run(c, recording(visited))
    assert state not in visited  # the fault is raised before the step runs
    assert c.report.failed_state == state.value
    assert c.report.error == f"InjectedFault: fault injected in state {state.value}"
    assert c.report.outcome == ("failed_after_write" if state is State.SAVING_CONFIG else "aborted")
    assert issubclass(InjectedFault, RuntimeError)


@pytest.mark.parametrize("failure_state", [State.ABORTED, State.FAILED_AFTER_WRITE], ids=lambda s: s.value)
def test_failure_inside_the_failure_step_still_reaches_rebooting(failure_state: State) -> None:
    first = State.VALIDATING if failure_state is State.ABORTED else State.VERIFYING
    visited: list[State] = []

    def boom(c: Context) -> None:
        visited.append(failure_state)
        raise RuntimeError("cannot persist the report")

    steps = recording(visited, first)
    steps[failure_state] = boom
    c = ctx()
    assert run(c, steps) is State.REBOOTING
    assert visited[-2:] == [failure_state, State.REBOOTING]
    # the first error is the one reported
    assert c.report.failed_state == first.value and c.report.error == "RuntimeError: boom"


def test_interrupt_in_a_step_does_not_cut_the_run_short() -> None:
    c, visited = ctx(), list[State]()
    assert run(c, recording(visited, State.TERMINATING, KeyboardInterrupt)) is State.REBOOTING
    assert visited[-2:] == [State.ABORTED, State.REBOOTING]
    assert c.report.error == "KeyboardInterrupt: "


def test_a_failing_reboot_step_is_not_swallowed() -> None:
    def reboot(c: Context) -> None:
        raise OSError(1, "reboot refused")

    c = ctx()
    with pytest.raises(OSError, match="reboot refused"):
        run(c, {State.REBOOTING: reboot})
    assert c.report.failed_state is None


# --- the timeline: refused triggers leave no trace, entries chain by state value -----------------


def test_refused_trigger_leaves_the_timeline_alone() -> None:
    c = ctx()
    model = Stage2(c, initial=State.ABORTED)
    with pytest.raises(MachineError):
        model.advance()
    assert c.report.timeline == []


def test_timeline_from_names_the_previous_entry() -> None:
    c = ctx()
    run(c, {})
    timeline = c.report.timeline
    assert [e["from"] for e in timeline[1:]] == [e["state"] for e in timeline[:-1]]


# --- the committed diagram ----------------------------------------------------------------------------


def test_committed_diagram_is_current() -> None:
    committed = Path(stage2.__file__).parent / "machine.mmd"
    assert committed.read_text() == mermaid(), (
        "stage2/machine.mmd is stale; regenerate it with: python -c \"from stage2.machine import mermaid; "
        "open('stage2/machine.mmd','w').write(mermaid())\"")


def test_diagram_draws_every_transition() -> None:
    drawn = mermaid()
    for row in transition_table():
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for src in sources:
            assert isinstance(src, State) and isinstance(row["dest"], State)
            assert f"{src.name} --> {row['dest'].name}: {row['trigger']}" in drawn
