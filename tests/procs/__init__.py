"""Programs the tests run as real subprocesses (``python -m tests.procs.<name>``)."""
