from django.urls import path

from adversaries import views

urlpatterns = [
    path("submit/", views.submit, name="attack-submit"),
    path("<uuid:public_id>/", views.detail, name="attack-detail"),
]
