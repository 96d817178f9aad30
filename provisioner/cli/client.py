"""Talking to the provisioner API: where it is, which token to send, and turning every
failure into one sentence an operator can act on."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import typer

from provisioner import __version__

DEFAULT_URL = "http://127.0.0.1:8080"
HOW_TO_GET_ACCESS = (
    "create one with `provisioner token create --scope operator` on the server "
    "and set PROVISIONER_TOKEN"
)


class CliError(Exception):
    """An expected failure: shown as one line on stderr, and the command exits 1."""


class ApiError(CliError):
    """The API answered with an error; ``problem`` is its problem+json body."""

    def __init__(self, message: str, status: int, problem: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "provisioner" / "cli.toml"


def _read_config_file() -> dict[str, str]:
    path = config_file()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    values: dict[str, str] = {}
    for key in ("url", "token"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CliError(f"{path}: `{key}` must be a string")
        values[key] = value
    return values


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None


def load_config(url: str | None, token: str | None) -> ClientConfig:
    """Options and environment (already merged by Typer) win over the config file."""
    file = _read_config_file() if not (url and token) else {}
    resolved = (url or file.get("url") or DEFAULT_URL).rstrip("/")
    if not resolved.startswith(("http://", "https://")):
        raise CliError(
            f"the provisioner URL must start with http:// or https://, got {resolved!r} "
            "(check PROVISIONER_URL)"
        )
    return ClientConfig(url=resolved, token=token or file.get("token") or None)


def path_segment(value: str) -> str:
    """A node, role or image name as one URL path segment, whatever it contains."""
    return quote(value, safe="")


def _field_label(error: dict[str, Any]) -> str:
    field = error.get("field")
    if field is None and isinstance(error.get("loc"), list):
        field = ".".join(str(p) for p in error["loc"] if p not in ("body", "query", "path"))
    parts = []
    if error.get("row") is not None:
        parts.append(f"row {error['row']}")
    if field:
        parts.append(str(field))
    return " ".join(parts)


def format_field_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    message = str(error.get("message") or error.get("msg") or "invalid value")
    label = _field_label(error)
    return f"{label}: {message}" if label else message


def field_errors(problem: dict[str, Any]) -> list[Any]:
    # FastAPI's own validation shape keeps the list in `detail`; ours uses `errors`.
    errors = problem.get("errors")
    if errors is None and isinstance(problem.get("detail"), list):
        errors = problem["detail"]
    return errors if isinstance(errors, list) else []


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().splitlines()
        return {"detail": text[0][:200]} if text else {}
    return body if isinstance(body, dict) else {}


def describe_error(status: int, problem: dict[str, Any], config: ClientConfig) -> str:
    detail = problem.get("detail")
    sentence = (
        detail
        if isinstance(detail, str) and detail
        else str(problem.get("title") or f"HTTP {status}")
    )
    if status == 401:
        if config.token is None:
            return f"no API token is set; {HOW_TO_GET_ACCESS}"
        return f"the server refused the token; {HOW_TO_GET_ACCESS}"
    if status == 403:
        return f"permission denied: {sentence}"
    if status == 404:
        return f"not found: {sentence}"
    errors = [format_field_error(e) for e in field_errors(problem)]
    if status == 409:
        return f"conflict: {sentence}" + (f" ({'; '.join(errors)})" if errors else "")
    if status == 422:
        return "invalid request: " + ("; ".join(errors) if errors else sentence)
    if status >= 500:
        return f"the server failed (HTTP {status}): {sentence}"
    return f"HTTP {status}: {sentence}"


class ApiClient:
    """A thin httpx wrapper: JSON in and out, every failure raised as :class:`CliError`."""

    def __init__(self, config: ClientConfig, timeout: float = 30.0) -> None:
        headers = {"User-Agent": f"provisioner-cli/{__version__}", "Accept": "application/json"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self.config = config
        self._http = httpx.Client(base_url=f"{config.url}/api/v1", headers=headers, timeout=timeout)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str | int] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        url = self.config.url
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise CliError(
                f"the provisioner at {url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            reason = str(exc) or type(exc).__name__
            raise CliError(
                f"cannot reach the provisioner at {url}: {reason}; "
                "is `provisioner serve` running? set PROVISIONER_URL"
            ) from exc
        if response.is_success:
            return response.json() if response.content else None
        problem = _problem(response)
        message = describe_error(response.status_code, problem, self.config)
        raise ApiError(" ".join(message.split()), response.status_code, problem)

    def get(self, path: str, params: dict[str, str | int] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def put(self, path: str, json: Any) -> Any:
        return self.request("PUT", path, json=json)

    def delete(self, path: str) -> None:
        self.request("DELETE", path)


@dataclass
class GlobalOptions:
    url: str | None
    token: str | None


def api(ctx: typer.Context) -> ApiClient:
    """A client configured from the global options, the environment and the config file."""
    options = ctx.find_root().obj
    assert isinstance(options, GlobalOptions)
    return ApiClient(load_config(options.url, options.token))


def request(ctx: typer.Context, method: str, path: str, json: Any = None) -> Any:
    """One request on a client of its own, for a command that makes only this one; a
    command that makes several opens :func:`api` once for all of them."""
    with api(ctx) as client:
        return client.request(method, path, json=json)


def token_option(help: str) -> Any:
    """``--token``, else PROVISIONER_TOKEN: every command that takes a token reads the
    same variable, so that one export serves them all."""
    return typer.Option(envvar="PROVISIONER_TOKEN", help=help)
