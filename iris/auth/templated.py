"""Seed 003's customised token request (``accessTokenRequest``): the request is rendered from
templates over ``authData``, and the answer is read through ``response_fields`` after the
``validations`` pass.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from jinja2 import TemplateError

from iris.auth.exchange import Grant, TokenAnswer, TokenHttpRequest
from iris.auth.grants import answer_fields, answer_json, make_grant, refusal
from iris.auth.templating import REQUEST_TEMPLATES, RESPONSE_TEMPLATES
from iris.config.auth import OAuth2Base, ResponseField, TokenRequestTemplate
from iris.core.logs import redact, register_secret
from iris.errors import TokenError

DEFAULT_FIELDS: dict[ResponseField, str] = {
    "accessToken": "{{ response.body.access_token }}",
    "expiresIn": "{{ response.body.expires_in }}",
    "refreshToken": "{{ response.body.refresh_token }}",
    "tokenType": "{{ response.body.token_type }}",
}


def auth_data(auth: OAuth2Base, refresh_token: str | None) -> dict[str, Any]:
    """What templates see as ``authData``: seed 003's names, then the config's own ``data``."""
    secret = auth.client_secret.get_secret_value() if auth.client_secret else None
    password = getattr(auth, "password", None)
    return {
        "clientId": auth.client_id,
        "clientSecret": secret,
        "scope": auth.scope_text,
        "accessTokenUrl": auth.token_url,
        "refreshTokenUrl": auth.refresh_token_url or auth.token_url,
        "username": getattr(auth, "username", None),
        "password": password.get_secret_value() if password is not None else None,
        "refreshToken": refresh_token,
        **auth.data,
    }


class TemplatedRequests:
    def __init__(self, auth: OAuth2Base, template: TokenRequestTemplate, allow_http: bool) -> None:
        self.auth = auth
        self._template = template
        self._allow_http = allow_http
        self._fields: dict[ResponseField, str] = {**DEFAULT_FIELDS, **template.response_fields}

    def build(self, refresh_token: str | None) -> TokenHttpRequest:
        data = {"authData": auth_data(self.auth, refresh_token)}
        t = self._template
        url = self._render("url", t.url, data) if t.url else self.auth.token_url
        assert url is not None  # checked when the config was loaded
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (scheme == "http" and self._allow_http):
            raise TokenError(f"token_request.url rendered to a {scheme or 'relative'} URL: "
                             "https:// is required", permanent=True, error="invalid_request")
        headers = {"Content-Type": t.content_type, "Accept": "application/json",
                   "Accept-Encoding": "gzip"}
        for name, source in t.headers.items():
            headers[name] = self._render(f"headers.{name}", source, data)
            register_secret(headers[name])  # a header may carry a credential
        body = self._render("body", t.body, data).encode()
        return TokenHttpRequest(url, t.method, headers, body)

    def parse(self, answer: TokenAnswer) -> Grant:
        json_body = answer_json(answer)
        form = answer_fields(answer)
        body: Any = json_body if json_body is not None else form
        context = {"response": {"status": answer.status, "headers": answer.headers,
                                "body": body if body is not None else _text(answer)}}
        fields = {name: self._read(name, source, context) for name, source in self._fields.items()}
        for name in ("accessToken", "refreshToken"):
            register_secret(fields[name], rotating=True)
        for check in self._template.validations:
            actual = self._read(f"validations {check.name!r}", check.actual, context).strip()
            expected = self._read(f"validations {check.name!r}", check.expected, context).strip()
            if actual != expected:
                error = refusal(answer, json_body, (
                    f"token_request validation {check.name!r} failed: expected "
                    f"{redact(expected)[:40]!r}, got {redact(actual)[:40]!r} "
                    f"(HTTP {answer.status})"))
                if 200 <= answer.status < 300:
                    error.permanent = True  # a 2xx that fails the partner's own checks
                raise error
        if not 200 <= answer.status < 300:
            raise refusal(answer, json_body)
        return make_grant(fields["accessToken"], fields["expiresIn"], fields["tokenType"],
                          fields["refreshToken"], self.auth.default_expires_in)

    @staticmethod
    def _render(where: str, source: str, data: dict[str, Any]) -> str:
        try:
            return REQUEST_TEMPLATES.from_string(source).render(data)
        except TemplateError as exc:
            raise TokenError(f"token_request.{where}: {redact(str(exc))[:120]}", permanent=True,
                             error="invalid_request") from None

    @staticmethod
    def _read(where: str, source: str, context: dict[str, Any]) -> str:
        try:
            return RESPONSE_TEMPLATES.from_string(source).render(context)
        except TemplateError as exc:
            raise TokenError(f"token_request.{where}: {redact(str(exc))[:120]}",
                             permanent=True) from None


def _text(answer: TokenAnswer) -> str:
    """An answer that is neither JSON nor a form: its text."""
    return answer.body.decode("utf-8", "replace")
