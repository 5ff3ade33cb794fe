"""Load: what is sent and when.

- :mod:`.loops`: the closed loop (N requests in flight) and the open loop (a planned rate);
- :mod:`.prompts`: the seeded synthetic workload;
- :mod:`.plans`: ramps and the SLO capacity search, which steer a session phase by phase;
- :mod:`.turnstile`: one heavy step per event-loop iteration, so a wave of ends cannot stall it.
"""
