from django.urls import path

from django_http_app.views import async_view, sync_view

urlpatterns = [path("sync", sync_view), path("async", async_view)]
