from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from chat import account_views, document_views, share_views, views, voice_views

urlpatterns = [
    path("", views.home, name="home"),
    path("new/", views.conversation_start, name="conversation_start"),
    path("sidebar/", views.sidebar_page, name="sidebar_page"),
    path("c/<int:conversation_id>/", views.conversation_detail, name="conversation"),
    path("c/<int:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("c/<int:conversation_id>/flags/", views.conversation_flags, name="conversation_flags"),
    path("c/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("c/<int:conversation_id>/settings/", views.conversation_settings, name="conversation_settings"),
    path("c/<int:conversation_id>/export/", views.conversation_export, name="conversation_export"),
    path("c/<int:conversation_id>/share/", share_views.conversation_share, name="conversation_share"),
    path("s/<str:token>/", share_views.shared, name="shared"),
    path("s/<str:token>/continue/", share_views.shared_continue, name="shared_continue"),
    path("m/<int:message_id>/feedback/", views.message_feedback, name="message_feedback"),
    path("import/", views.conversation_import, name="conversation_import"),
    path("profile/theme/", views.theme_update, name="theme_update"),
    path("profile/export/", views.export_all, name="export_all"),
    path("profile/delete/", account_views.account_delete, name="account_delete"),
    path("signup/", account_views.signup, name="signup"),
    path("profile/sso-link/", account_views.sso_link, name="sso_link"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            redirect_authenticated_user=True, authentication_form=account_views.LoginForm
        ),
        name="login",
    ),
    # Django's LogoutView accepts POST only, so a link or prefetch cannot log anyone out.
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("profile/password/", account_views.PasswordChangeView.as_view(), name="password_change"),
    path("usage/", account_views.usage_page, name="usage"),
    path("documents/", document_views.documents_page, name="documents"),
    path("voice/dictation/", voice_views.dictation, name="dictation"),
    path("voice/read/<int:message_id>/", voice_views.read_aloud, name="read_aloud"),
    # Password reset by email (EMAIL_BACKEND; the console by default): Django's views, our pages.
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(template_name="registration/password_reset.html"),
        name="password_reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="registration/password_reset_sent.html"),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="registration/password_reset_confirm.html", post_reset_login=False
        ),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="registration/password_reset_complete.html"
        ),
        name="password_reset_complete",
    ),
    path("status/", views.model_status, name="model_status"),
    path("profile/", views.profile, name="profile"),
    path("profile/keys/", views.api_key_new, name="api_key_new"),
    path("profile/presets/", views.preset_new, name="preset_new"),
    path("profile/memory/", views.memory_new, name="memory_new"),
    path("profile/memory/<int:fact_id>/forget/", views.memory_forget, name="memory_forget"),
    path("profile/presets/<int:preset_id>/delete/", views.preset_delete, name="preset_delete"),
    path("profile/keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
]
