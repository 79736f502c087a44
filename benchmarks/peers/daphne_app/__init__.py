"""Peer (b): Daphne + Channels with the in-memory channel layer (a tiny Django project)."""
