"""twistd plugin for realtime.

Only ServiceMakers live here: twistd imports this module while it builds its list of
subcommands, *before* it installs the reactor chosen with ``--reactor``, so importing
anything that touches the reactor here would break ``--reactor=asyncio``.
"""

from twisted.application.service import ServiceMaker

realtime = ServiceMaker(
    "realtime",
    "realtime.tap",
    "Realtime WebSocket service (Channels-style consumers on Twisted and Autobahn)",
    "realtime",
)

runworker = ServiceMaker(
    "realtime-runworker",
    "realtime.worker",
    "Consume named channels of a shared channel layer (Channels' runworker)",
    "realtime-runworker",
)
