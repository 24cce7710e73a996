"""Fault-injection harness, shared by test_faults.py (local runs) and test_ray.py (--use-ray).

train.py's test hook TRAINER_FAULT_INJECT="STEP:RANK:MODE:MARKER" stops worker RANK after
step STEP and everything that step writes (MODE exit, kill or raise), once: it writes
MARKER ("fault at step S") first, and the run that continues (resumed by hand, or restarted
by Ray) appends "resumed at step R". The steps lost are S - R: the steps trained again."""
import re


def fault(step: int, mode: str, marker, rank: int = 0) -> str:
    """The value of train.FAULT_ENV that injects the fault."""
    return f"{step}:{rank}:{mode}:{marker}"


def fault_and_resume_steps(marker) -> tuple[int, list[int]]:
    """(S, [R, ...]) from MARKER: the step of the fault and the step of each later start."""
    text = open(marker).read()
    fault_step = [int(s) for s in re.findall(r"^fault at step (\d+)$", text, re.M)]
    assert len(fault_step) == 1, text           # the hook fires once
    return fault_step[0], [int(s) for s in re.findall(r"^resumed at step (\d+)$", text, re.M)]


def steps_lost(marker) -> int:
    """S - R for a run that faulted once and was continued once."""
    s, resumed = fault_and_resume_steps(marker)
    assert len(resumed) == 1, resumed
    return s - resumed[0]
