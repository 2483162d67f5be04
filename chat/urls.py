from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.home, name="home"),
    path("new/", views.conversation_new, name="conversation_new"),
    path("c/<int:conversation_id>/", views.conversation_detail, name="conversation"),
    path("c/<int:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("c/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("c/<int:conversation_id>/settings/", views.conversation_settings, name="conversation_settings"),
    path("c/<int:conversation_id>/export/", views.conversation_export, name="conversation_export"),
    path("import/", views.conversation_import, name="conversation_import"),
    path("profile/export/", views.export_all, name="export_all"),
    path("profile/delete/", views.account_delete, name="account_delete"),
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    # Django's LogoutView accepts POST only, so a link or prefetch cannot log anyone out.
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("status/", views.model_status, name="model_status"),
    path("profile/", views.profile, name="profile"),
    path("profile/keys/", views.api_key_new, name="api_key_new"),
    path("profile/keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
]
