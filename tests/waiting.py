"""Waiting, in tests, for what happens in the background (a write after the client left)."""

import time


def wait_for(condition, timeout=15.0):
    """Wait for an event the test cannot observe directly (a background write)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
