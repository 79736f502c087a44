"""The one thing setup.cfg cannot say: realtime._sendeach, the fan-out's member loop in C.

Optional: without a C compiler (or Python's headers) the build goes on without it, and
realtime/_fanout.py falls back to the Python loop (same behaviour, more CPU per delivery).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("realtime._sendeach", ["realtime/_sendeach.c"], optional=True)])
