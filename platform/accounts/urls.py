from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views
from accounts.lockout import AddressThrottledLoginView

urlpatterns = [
    path("login/", AddressThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", views.SignupView.as_view(), name="signup"),
    path("token/", views.api_token, name="api-token"),
]
