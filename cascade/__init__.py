"""cascade: a notification sequencing server.

The engine (`cascade.engine`) holds every active send in memory as a small
state machine on a pykka shard; `cascade.http` is the aiohttp front door;
`cascade.snapshots` makes it durable.
"""

__version__ = "0.1.0"
