"""The one client-error type of the server: a fault of the request, with what an OpenAI-style
error body needs (message, param, code) and the HTTP status to answer with.

It lives at the root of the package, importing nothing, so every layer that finds a client
fault (video loading, the engine, the HTTP front end) raises the same type and the front end
answers all of them with one handler (server/api/errors.py).
"""

from __future__ import annotations


class ClientError(Exception):
    """An error of one request, answered with HTTP ``status`` and the body
    ``{"error": {message, type, param, code}}``: a client fault (4xx), a request out of time
    (504), or a failure of this request alone (500, the engine's ``RequestFailed``).

    ``param`` names the offending request field (None: the request as a whole); ``code`` is a
    machine-readable reason.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request",
                 status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"
