from django.contrib import admin
from django.urls import include, path

from chat.api import api as chat_api

urlpatterns = [
    path("admin/", admin.site.urls),
    # Pages first: a ninja API mounted at "" also claims "/".
    path("", include("chat.urls")),
    path("", chat_api.urls),  # POST /chat, POST /reset
]
