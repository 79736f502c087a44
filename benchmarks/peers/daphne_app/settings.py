"""The smallest Django settings Daphne + Channels need for the bench protocol."""

SECRET_KEY = "benchmark-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
DATABASES: dict = {}
USE_TZ = True
ROOT_URLCONF = None
ASGI_APPLICATION = "daphne_app.asgi.application"
# What a Channels user gets out of the box, capacity and expiry left at their defaults.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
