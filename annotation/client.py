"""The connection to a Label Studio server through label-studio-sdk, with errors that never show
the API token.

The token comes from ``$LABEL_STUDIO_API_KEY`` only (a legacy token, or a personal access token
that the SDK refreshes). It is never printed, logged, put into an exception or a repr: every
message that leaves this module goes through :func:`scrub`, and SDK exceptions are re-raised
``from None`` so their chains (which hold requests) are not shown either.

Errors:

* :class:`TokenError` (an ``InputError``: exit code 2): no token, or the server refuses it;
* :class:`LabelStudioError` (exit code 1): the server answered with an error;
* :class:`ServerUnreachable` (a ``LabelStudioError``): no answer (refused, reset, timed out).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, TypeVar

from refcoco_edit.errors import InputError

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
T = TypeVar("T")


class TokenError(InputError):
    """No API token, or Label Studio refused it (exit code 2)."""


class LabelStudioError(RuntimeError):
    """Label Studio answered a request with an error. ``status_code`` is the HTTP status, if any."""

    def __init__(self, message: str, status_code: Optional[int] = None):
        super().__init__(message)
        self.status_code = status_code


class ServerUnreachable(LabelStudioError):
    """Label Studio did not answer (connection refused or reset, timeout, a truncated answer)."""


def get_token(environ: Optional[dict] = None) -> str:
    """The API token from ``$LABEL_STUDIO_API_KEY``; TokenError when it is not set."""
    env = os.environ if environ is None else environ
    token = (env.get(TOKEN_ENV) or "").strip()
    if not token:
        raise TokenError(f"set ${TOKEN_ENV} to a Label Studio API token (Account & Settings -> Access Token)")
    return token


def normalize_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing slash; InputError otherwise."""
    u = (url or "").strip().rstrip("/")
    if not (u.startswith("http://") or u.startswith("https://")) or len(u.split("://", 1)[1]) == 0:
        raise InputError(f"--url {url!r}: expected http(s)://host[:port] of a Label Studio server")
    return u


def _detail(body: Any) -> str:
    """A short text of an error body (JSON detail or text)."""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("detail", "validation_errors", "message", "error") if body.get(k)]
        return ": ".join(parts) if parts else str(body)
    text = str(body or "").strip()
    if text.startswith("<"):  # an HTML error page
        return "(an HTML error page)"
    return text[:300]


class Connection:
    """A label-studio-sdk client for one server, with token-safe error translation."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 120.0):
        self.url = normalize_url(url)
        self._token = token if token is not None else get_token()
        self._timeout = timeout
        self._client: Any = None

    def __repr__(self) -> str:
        return f"Connection(url={self.url!r})"

    def scrub(self, text: str) -> str:
        """``text`` with the token replaced by ``***``."""
        return scrub(text, self._token)

    @property
    def client(self) -> Any:
        """The SDK client (created on first use)."""
        if self._client is None:
            from label_studio_sdk.client import LabelStudio

            self._client = self.call("connecting", lambda: LabelStudio(base_url=self.url, api_key=self._token,
                                                                       timeout=self._timeout))
        return self._client

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one SDK call; translate its failures into our errors (without the token)."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            status = e.status_code
            detail = self.scrub(_detail(e.body))
            if status == 401:
                raise TokenError(f"Label Studio at {self.url} refused the API token from ${TOKEN_ENV} "
                                 f"(HTTP 401: {detail}) while {what}") from None
            if status == 403:
                raise TokenError(f"Label Studio at {self.url} does not allow this token's user to do this "
                                 f"(HTTP 403: {detail}) while {what}") from None
            raise LabelStudioError(f"Label Studio at {self.url} answered HTTP {status} while {what}: {detail}",
                                   status) from None
        except (httpx.TransportError, httpx.StreamError) as e:
            raise ServerUnreachable(
                f"Label Studio at {self.url} did not answer while {what} ({type(e).__name__}: "
                f"{self.scrub(str(e)) or 'no detail'}); is the server running?") from None
        except ValueError as e:  # JSON or schema errors: something that is not the Label Studio API answered
            raise LabelStudioError(f"Label Studio at {self.url} gave an unexpected answer while {what}: "
                                   f"{self.scrub(str(e))[:300]}") from None

    def whoami(self) -> Any:
        """The token's user (checks the token before anything else is done)."""
        return self.call("checking the API token", lambda: self.client.users.whoami())


def scrub(text: str, token: Optional[str]) -> str:
    """Replace every occurrence of ``token`` in ``text`` by ``***``."""
    if token and text:
        return text.replace(token, "***")
    return text
