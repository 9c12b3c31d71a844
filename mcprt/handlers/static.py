"""The demo's static files, served with a Content-Security-Policy."""

from __future__ import annotations

import tornado.web


class StaticHandler(tornado.web.StaticFileHandler):
    """The demo's files, with a policy that lets only our own scripts run (at / and under /static/)."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; "
                        "connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                        "frame-ancestors 'none'")
        self.set_header("X-Content-Type-Options", "nosniff")

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        return super().get_absolute_path(root, path or "index.html")
