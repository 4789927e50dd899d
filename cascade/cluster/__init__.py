"""Many processes and machines on NATS JetStream (docs/cluster.md, design.md
"The cluster"): a node (`node`) owns partitions under leases (`lease`,
`members`, `assign`), runs each as an engine over a fenced stream journal
(`partition`, `stream_journal`, `snapshot_store`), and answers the engine's
API for the whole cluster (`front`, `ops`, `wire`, `template_store`,
`inbox_relay`, `clock`, `allowance`); `runtime` is what the server starts,
`workers` the `--workers N` supervisor, `natsd` local NATS servers, `demo`
`./run cluster`. `cascade` imports this package only in cluster mode.
"""

from __future__ import annotations
