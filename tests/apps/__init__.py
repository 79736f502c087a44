"""Small applications the end-to-end tests serve with ``--app tests.apps.MODULE:ATTR``."""
