"""Counting the Python work a parser does, so a test can show it is linear without timing anything."""
from __future__ import annotations

import sys
from typing import Callable


def python_steps(fn: Callable, *args, expected: tuple[type[BaseException], ...] = ()) -> int:
    """How many Python lines `fn(*args)` executes in every frame it calls (work done in C, such as str.find or a
    regex, counts as one step); an exception in `expected` ends the count as a refusal would."""
    steps = 0

    def tracer(frame, event, arg):
        nonlocal steps
        if event == "line":
            steps += 1
        return tracer
    sys.settrace(tracer)
    try:
        fn(*args)
    except expected:
        pass
    finally:
        sys.settrace(None)
    return steps
