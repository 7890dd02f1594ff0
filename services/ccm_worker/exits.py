"""Exit codes of ``ccm-tally worker`` (documented in the README, "Fail-stop").

A supervisor (Kubernetes, compose ``restart: unless-stopped``, :mod:`ccm_worker.process`)
restarts the worker whatever the code; the code says why it stopped. A restarted worker
resumes from the committed offsets and rebuilds its ledgers from the committed changelog, so
no exit loses or double-counts input.
"""

from __future__ import annotations

OK = 0  # stopped on SIGTERM/SIGINT after finishing and committing the batch in flight
CRASHED = 1  # faust stopped the app on an error it could not handle (logged)
BROKER_UNAVAILABLE = 69  # EX_UNAVAILABLE: no broker answered within CCM_BROKER_WAIT_SECONDS
BATCH_FAILED = 70  # EX_SOFTWARE: a batch could not be written; nothing of it was committed
FENCED = 71  # another worker's transactional producer fenced ours: it owns our partitions now
STALLED = 75  # EX_TEMPFAIL: input waited but committed offsets did not move (stall watchdog)
