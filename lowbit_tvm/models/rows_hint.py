"""How many rows the linear layers traced in a block are scheduled for (decode steps: a few; prefill: hundreds).

A layer's forward runs once per exported function while the graph is traced, so the function being traced
(``decode`` or ``prefill``) sets the hint and the layers read it.
"""
import contextlib

_ROWS_HINT = [64]


@contextlib.contextmanager
def rows_hint(rows: int):
    """Schedule the layers traced inside this block for about ``rows`` rows."""
    _ROWS_HINT.append(rows)
    try:
        yield
    finally:
        _ROWS_HINT.pop()


def current_rows_hint() -> int:
    """The rows of the innermost ``rows_hint`` (64 outside any)."""
    return _ROWS_HINT[-1]
