"""Puppet CA clean-up: revoke and delete a node's old certificate before the node is
reinstalled or released.

A Puppet CA ignores a certificate request for a certname that already has a signed
certificate (or a pending request), so the agent of a reimaged node would never get a
certificate. This client does what ``puppetserver ca clean`` does by hand, through the
CA's HTTP API over mutual TLS: ``PUT /puppet-ca/v1/certificate_status/<certname>``
with ``{"desired_state": "revoked"}``, then ``DELETE`` of the same path. The CA lets
a client certificate do that only when an ``auth.conf`` rule names it
(docs/handoff.md, "Puppet CA clean-up on reimage and release").

The reconciler's clean-up step calls :meth:`PuppetCa.clean` and decides, from
:attr:`CaError.retryable` and ``puppet_ca_retry_limit``, whether to try again.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from cryptography import x509
from cryptography.x509.oid import NameOID

from provisioner.settings import Settings

# What Puppet accepts as a certname. Anything else is refused before a request is
# made, so nothing but a certname can reach the URL path (no "/", "..", "?" or "%").
_CERTNAME = re.compile(r"[a-z0-9_][a-z0-9._-]{0,252}")
_STATUS_PATH = "/puppet-ca/v1/certificate_status/"
# How much of a CA's error body goes into a message: enough for its one-line reason.
_BODY_CHARS = 300

Outcome = Literal["revoked", "request-deleted", "absent"]


class CaError(Exception):
    """The CA did not clean a certname. ``retryable`` is False only when trying again
    cannot help (a bad certname, a request the CA calls malformed); an unreachable CA,
    a TLS failure or a missing ``auth.conf`` rule may be fixed while the step waits."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class CleanResult:
    certname: str
    outcome: Outcome
    message: str  # one sentence for the node's timeline


def valid_certname(certname: str) -> str:
    if not _CERTNAME.fullmatch(certname):
        raise CaError(
            f"{certname!r} is not a Puppet certname (lowercase letters, digits, '.', '-' "
            "and '_', starting with a letter, digit or '_')",
            retryable=False,
        )
    return certname


def certname_for(node_name: str, settings: Settings) -> str:
    """The certname of a node's Puppet agent: its FQDN under the service's domain, or
    its name without one (what the answer files set, and what the ENC and autosign
    accept in :func:`provisioner.handoff.puppet.find_node`)."""
    name = node_name.lower()
    return f"{name}.{settings.domain.lower()}" if settings.domain else name


def manual_clean_command(certname: str) -> str:
    """What an operator runs on the CA host when the service has no CA configured."""
    return f"puppetserver ca clean --certname {valid_certname(certname)}"


@dataclass(frozen=True)
class PuppetCa:
    url: str
    cert: Path
    key: Path
    cacert: Path
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> PuppetCa | None:
        """None when no CA is configured. Settings validation refuses a URL without the
        three files; the ValueError is for settings that skipped it (model_construct)."""
        if not settings.puppet_ca_url:
            return None
        cert, key, cacert = (
            settings.puppet_ca_cert,
            settings.puppet_ca_key,
            settings.puppet_ca_cacert,
        )
        if cert is None or key is None or cacert is None:
            raise ValueError("PROVISIONER_PUPPET_CA_URL needs the CA client's three files")
        return cls(
            settings.puppet_ca_url.rstrip("/"), cert, key, cacert, settings.puppet_ca_timeout
        )

    async def clean(self, certname: str) -> CleanResult:
        """Revoke and delete ``certname``'s certificate, or delete its pending request.
        A certname the CA knows nothing about is already clean."""
        url = self.url + _STATUS_PATH + valid_certname(certname)
        where = f"on the Puppet CA at {self.url}"
        # Loaded on every call: a certificate or CA bundle an operator replaces while
        # the step waits is picked up without restarting the service.
        context = self._ssl_context()
        async with httpx.AsyncClient(verify=context, timeout=self.timeout) as http:
            revoke = await self._send(http, "PUT", url)
            if revoke.status_code == 404:
                return CleanResult(
                    certname, "absent", f"no certificate or request of {certname} {where}"
                )
            # 409: the CA has only a request for it, nothing signed to revoke.
            revoked = revoke.status_code != 409
            if revoked:
                self._expect_success(revoke, "revoke the certificate of", certname)
            delete = await self._send(http, "DELETE", url)
            # 404: gone between the two requests, e.g. cleaned by hand meanwhile.
            if delete.status_code != 404:
                self._expect_success(delete, "delete the certificate of", certname)
        if revoked:
            return CleanResult(
                certname, "revoked", f"revoked and deleted the certificate of {certname} {where}"
            )
        return CleanResult(
            certname,
            "request-deleted",
            f"deleted the pending certificate request of {certname} {where} "
            "(it had no signed certificate)",
        )

    def _ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.cacert)
        except (OSError, ssl.SSLError) as err:
            raise CaError(
                f"cannot load the Puppet CA's certificate {self.cacert} "
                f"(PROVISIONER_PUPPET_CA_CACERT): {_reason(err)}",
                retryable=True,
            ) from None
        try:
            # An encrypted key would make OpenSSL prompt on the terminal; the empty
            # password turns that into an error instead.
            context.load_cert_chain(self.cert, self.key, password="")
        except (OSError, ssl.SSLError) as err:
            raise CaError(
                f"cannot load the client certificate {self.cert} and key {self.key} "
                f"(PROVISIONER_PUPPET_CA_CERT, PROVISIONER_PUPPET_CA_KEY; the key must not "
                f"be encrypted): {_reason(err)}",
                retryable=True,
            ) from None
        return context

    async def _send(self, http: httpx.AsyncClient, method: str, url: str) -> httpx.Response:
        body = {"desired_state": "revoked"} if method == "PUT" else None
        try:
            return await http.request(method, url, json=body)
        except httpx.TimeoutException:
            raise CaError(
                f"the Puppet CA at {self.url} did not answer within {self.timeout:g} s",
                retryable=True,
            ) from None
        # Under TLS 1.3 the CA judges the client certificate after the handshake, so
        # its refusal arrives with the first read, as an SSLError httpx does not wrap.
        except (httpx.TransportError, ssl.SSLError) as err:
            raise CaError(self._transport_message(err), retryable=True) from None

    def _transport_message(self, err: Exception) -> str:
        cause = _ssl_cause(err)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the Puppet CA at {self.url} presented a certificate that "
                f"{self.cacert} (PROVISIONER_PUPPET_CA_CACERT) does not verify: "
                f"{cause.verify_message}; use the CA host's own ca.pem and the host name "
                "its certificate was issued for"
            )
        check = (
            f"check that {self.cert} (PROVISIONER_PUPPET_CA_CERT) was signed by that CA "
            "and is not revoked"
        )
        if cause is not None:
            return (
                f"the TLS handshake with the Puppet CA at {self.url} failed: {_reason(cause)}; "
                + check
            )
        if isinstance(err, (httpx.ReadError, httpx.RemoteProtocolError)):
            # Connected, then dropped before any answer: under TLS 1.3 a CA that refuses
            # the client certificate may close the connection before its alert is read.
            return (
                f"the Puppet CA at {self.url} closed the connection without answering "
                f"({_reason(err)}); {check}"
            )
        return f"cannot reach the Puppet CA at {self.url}: {_reason(err)}"

    def _expect_success(self, response: httpx.Response, doing: str, certname: str) -> None:
        if response.is_success:
            return
        status, text = response.status_code, _body(response)
        if status in (401, 403):
            raise CaError(
                f"the Puppet CA at {self.url} does not let {self._client_name()} {doing} "
                f"{certname} (HTTP {status}: {text}); add the auth.conf rule that allows it "
                f'PUT and DELETE on {_STATUS_PATH} (docs/handoff.md, "Puppet CA clean-up '
                'on reimage and release") and reload puppetserver',
                retryable=True,
            )
        raise CaError(
            f"the Puppet CA at {self.url} could not {doing} {certname}: HTTP {status}: {text}",
            retryable=status >= 500 or status == 429,
        )

    def _client_name(self) -> str:
        """The certname in our client certificate, for the operator to put in
        auth.conf; the file's path when it cannot be read."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            return f"certname {names[0].value!s}" if names else f"the certificate {self.cert}"
        except (OSError, ValueError):
            return f"the certificate {self.cert}"


def _ssl_cause(err: BaseException) -> ssl.SSLError | None:
    """The TLS error underneath httpx's, if there is one."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(err: BaseException) -> str:
    return str(err) or type(err).__name__


def _body(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return text[:_BODY_CHARS] or "no body"
