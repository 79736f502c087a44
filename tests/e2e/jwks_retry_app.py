"""``realtime.examples.auth``'s application, served with ``--jwks-url``'s retry of a key set
that could not be fetched at start-up every second instead of every 10 s
(``realtime.jwks.MISS_INTERVAL``, read when the server starts, after the application is
imported). tests/e2e/test_jwks_url.py's restarted worker serves it (``--app
tests.e2e.jwks_retry_app:application`` with the repository on ``PYTHONPATH``), so that its
next fetch after the provider comes back is a second away, not ten. Nothing else differs.
"""

from __future__ import annotations

from realtime import jwks
from realtime.examples.auth import application

jwks.MISS_INTERVAL = 1.0

__all__ = ["application"]
