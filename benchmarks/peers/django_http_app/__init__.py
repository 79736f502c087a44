"""Django's own views over HTTP (benchmarks/django_http.py): one sync view, one async view.

The same project behind three entry points, so each server runs what its users write:
``realtime_asgi`` (realtime's ProtocolTypeRouter, ours), ``channels_asgi`` (Channels'
ProtocolTypeRouter, Daphne) and ``asgi`` (the bare Django ASGI app, uvicorn).
"""
