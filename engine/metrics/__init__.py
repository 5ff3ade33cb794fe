"""Metrics: every number soaktop shows, defined once.

- :mod:`.stats`, :mod:`.histogram`: metric definitions and the fixed-size ITL histogram;
- :mod:`.summary`: the whole run and each phase, event by event (live and from a record),
  as the typed results of :mod:`.results`;
- :mod:`.live`, :mod:`.history`: the dashboard's sliding window and its curves, fixed memory;
- :mod:`.drift`: the soak verdict; :mod:`.compare`: two runs side by side, beyond noise?;
- :mod:`.client_health`, :mod:`.fidelity`: is the client itself to be trusted?;
- :mod:`.exporter`: the live numbers for Prometheus.
"""
