"""A minimal browser for the sign-in pages over real HTTP: keeps cookies the way a browser does for
this one origin (the __Host- cookies included, which an HTTP test client would drop over http),
follows nothing by itself, and reads forms out of the HTML."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

REDIRECT_URI = "https://app.example/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.forms.append({"action": values.get("action"), "method": values.get("method"), "fields": {}})
        elif tag in ("input", "button") and self.forms and values.get("name"):
            if values.get("type") in ("submit",) and tag == "button":
                self.forms[-1].setdefault("buttons", {})[values["name"] + "=" + (values.get("value") or "")] = True
            else:
                self.forms[-1]["fields"][values["name"]] = values.get("value") or ""


def forms_of(html: str) -> list[dict[str, Any]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


@dataclass
class Answer:
    status: int
    headers: Any
    text: str

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))

    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}


@dataclass
class Browser:
    base: str
    session: aiohttp.ClientSession
    cookies: dict[str, str] = field(default_factory=dict)

    async def request(self, method: str, path: str, data: dict[str, str] | None = None, **headers: str) -> Answer:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        sent = {"Cookie": cookie} if cookie else {}
        sent.update(headers)
        async with self.session.request(
            method, self.base + path, data=data, headers=sent, allow_redirects=False
        ) as response:
            for value in response.headers.getall("Set-Cookie", []):
                name, _, rest = value.partition("=")
                cookie_value = rest.split(";", 1)[0]
                if "max-age=0" in value.lower() or not cookie_value or cookie_value == '""':
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = cookie_value
            return Answer(response.status, response.headers, await response.text())

    async def authorize(self, **parameters: str) -> Answer:
        return await self.request("GET", "/authorize?" + urlencode(parameters))

    async def submit(self, answer: Answer, **fields: str) -> Answer:
        (form,) = forms_of(answer.text)
        return await self.request("POST", form["action"], {**form["fields"], **fields})


def authorization_parameters(client_id: str, challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI, "scope": "openid read",
        "state": "st-" + secrets.token_hex(4), "code_challenge": challenge, "code_challenge_method": "S256",
        "nonce": "n-" + secrets.token_hex(4), **extra,
    }


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found is not None, name
    return found.group(1)
