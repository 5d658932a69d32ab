"""What the web frontend's browsers reach besides the JSON endpoints: CORS for configured origins,
the tracker script (``serving/web/tracker.js``) and the demo storefront (``serving/web/shop/``).

Both Serve apps (collector, recommender) install :class:`FrontendCors` on their FastAPI app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.middleware.cors import CORSMiddleware

from streamrec.runtime.config import FrontendConfig

WEB_DIR = Path(__file__).resolve().parent / "web"
TRACKER_JS = WEB_DIR / "tracker.js"
STOREFRONT_DIR = WEB_DIR / "shop"

# What a browser may send cross-origin: the publishable key, JSON or NDJSON, a gzipped batch.
_ALLOWED_HEADERS = ["authorization", "content-type", "content-encoding"]
# What the tracker reads back: its retry pacing and the collector's timing.
_EXPOSED_HEADERS = ["retry-after", "server-timing"]


def cors_for(app: Any, frontend: FrontendConfig) -> CORSMiddleware:
    """Starlette's own CORS middleware around ``app`` for the configured origins (none: no CORS
    headers at all, and every cross-origin preflight is refused)."""
    return CORSMiddleware(
        app,
        allow_origins=list(frontend.allowed_origins),
        allow_methods=["GET", "POST"],
        allow_headers=_ALLOWED_HEADERS,
        expose_headers=_EXPOSED_HEADERS,
        allow_credentials=False,  # the key travels in a header, never in cookies
        max_age=frontend.preflight_max_age_s,
    )


class FrontendCors:
    """CORS configured from the replica's settings, built on the first HTTP request.

    Serve pickles the FastAPI app when the deployment class is decorated, before any settings exist,
    so a middleware added there cannot be given its origins; this one asks the replica (which holds
    ``frontend: FrontendConfig``) once, then delegates to Starlette's ``CORSMiddleware``.
    Without a Serve replica (a unit test on the bare app) it passes requests through untouched.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._cors: Any = None

    def _build(self) -> Any:
        from ray import serve
        from ray.serve.exceptions import RayServeException

        try:
            frontend = serve.get_replica_context().servable_object.frontend
        except (RayServeException, AttributeError):
            return self.app
        return cors_for(self.app, frontend)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._cors is None:
            self._cors = self._build()
        await self._cors(scope, receive, send)
