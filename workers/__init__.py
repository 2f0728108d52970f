"""Background workers: ``python -m workers``.

One process runs four loops, each calling the domain code in
``service.domain``:

* relay (``RELAY_INTERVAL_SECONDS``, default 2): queue unassigned tickets that
  are neither queued nor reserved (a push lost to a crash or an outage);
* reaper (``REAPER_INTERVAL_SECONDS``, default 1): return reservations whose
  lease ended to the queue, or drop them if the ticket was taken or deleted;
* reconcile (``RECONCILE_INTERVAL_SECONDS``, default 30): resync held sets that
  disagree with PostgreSQL, take stray ids out of the queue, reset wrong scores;
* rebuild (checked at the reaper's interval): if ``{tq}:epoch`` is missing,
  Redis lost its data, so rebuild it from PostgreSQL.

Running several worker processes at once is safe because every step is
idempotent: each locks the PostgreSQL rows it acts on and changes Redis with a
Lua script that re-checks what it relies on, so two processes doing the same
step change nothing one of them alone would not. On top of that each step
takes a short Redis lock (``SET NX PX`` with a random token, released by a
compare-and-delete script) only so that several processes do not all scan the
same tables at once; when a lock expires mid-step, a second process may run
the step concurrently, which costs work but never correctness.
"""
