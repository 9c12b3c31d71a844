"""The demo's static files, served with a Content-Security-Policy."""

from __future__ import annotations

import json

import tornado.web

from ..protocol import ErrorCode, error_body


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

    def write_error(self, status_code: int, **kwargs) -> None:
        """A missing file (or a wrong method) in the one error shape of the API, not Tornado's HTML page."""
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
            status_code, ErrorCode.SERVER_ERROR if status_code >= 500 else ErrorCode.INVALID_MESSAGE)
        message = {404: f"no such file: {self.request.path}"}.get(status_code, self._reason)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": error_body(code, message, {"status": status_code})}))
