"""The cores: what the Teacher, the Critic and the RewardModel do with a request, whichever door it came through.

A core validates its inputs (an `ItemError` naming the field), calls the backend or the domain, records metrics,
decides where the work runs (inline, or off the event loop), and returns plain dataclasses. The doors (gRPC, HTTP)
only convert their wire format to and from these.
"""
