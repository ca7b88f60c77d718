from django.urls import path

from submissions import views

urlpatterns = [
    path("submit/", views.submit, name="submit"),
    path("mine/", views.mine, name="my-submissions"),
    path("<uuid:public_id>/status.json", views.status, name="submission-status"),
    path("<uuid:public_id>/cancel/", views.cancel, name="submission-cancel"),
    path("<uuid:public_id>/rerun/", views.rerun, name="submission-rerun"),
    path("<uuid:public_id>/resume/", views.resume, name="submission-resume"),
    path("<uuid:public_id>/visibility/", views.set_visibility, name="submission-visibility"),
    path("<uuid:public_id>/withdraw/", views.withdraw, name="submission-withdraw"),
]
