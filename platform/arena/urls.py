"""URL map: pages, the admin, and the versioned REST API with its OpenAPI schema and offline docs."""

from csp.constants import SELF
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from accounts.api import ObtainTokenView
from adversaries import views as attack_views
from adversaries.api import AttackViewSet
from leaderboards import views as leaderboard_views
from leaderboards.api import TrackViewSet
from submissions.api import QuotaView, SubmissionViewSet

router = DefaultRouter()
router.register("submissions", SubmissionViewSet, basename="api-submission")
router.register("tracks", TrackViewSet, basename="api-track")
router.register("attacks", AttackViewSet, basename="api-attack")

urlpatterns = [
    path("", leaderboard_views.home, name="home"),
    path("tracks/<slug:slug>/", leaderboard_views.track_leaderboard, name="leaderboard"),
    path("tracks/<slug:slug>/leaderboard.csv", leaderboard_views.export_csv, name="leaderboard-csv"),
    path("tracks/<slug:slug>/leaderboard.json", leaderboard_views.export_json, name="leaderboard-json"),
    path("tracks/<slug:slug>/attacks/", attack_views.track_attacks, name="track-attacks"),
    path("submissions/<uuid:public_id>/", leaderboard_views.model_page, name="submission-detail"),
    path("attacks/", include("adversaries.urls")),
    path("submissions/", include("submissions.urls")),
    path("accounts/", include("accounts.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/quota/", QuotaView.as_view(), name="api-quota"),
    path("api/v1/", include(router.urls)),
    path("api/v1/token/", ObtainTokenView.as_view(), name="api-obtain-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up code as a script file: no inline script for the CSP.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    # Redoc builds its search index in a worker it creates from a blob: URL; only this page allows that.
    path("api/redoc/", csp_update({"worker-src": [SELF, "blob:"]})(SpectacularRedocView.as_view(url_name="api-schema")),
         name="api-redoc"),
]
