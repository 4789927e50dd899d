"""The request key under which the front middleware stamps when a request
that may carry a signal reached the server (engine clock time; see app.py)."""

__all__ = ["ARRIVAL"]

ARRIVAL = "cascade.arrival"
