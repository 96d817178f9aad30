"""Debian's real ``puppetserver`` as a private Puppet CA for tests.

:func:`running_puppetserver` starts the package's own jar on a free loopback port, the
way its systemd unit does but with a smaller heap, and with every directory Puppet
reads or writes (confdir, ssldir, cadir, codedir, vardir, logdir, rundir) under one
temporary directory: the system's ``/etc/puppet`` is neither used nor changed. The CA is
made by ``puppetserver ca setup`` before the start, and the provisioner's client
certificate by ``puppetserver ca generate`` once the server answers, exactly as
docs/handoff.md tells an operator to.

Tests then act as a Puppet agent through the CA's HTTP API (:func:`agent_csr`,
:meth:`PuppetServer.submit_csr`, :meth:`PuppetServer.certificate`) and as the CA's
operator with the server's own certificate, which carries ``pp_cli_auth``.

Starting the JVM is the expensive part (about a minute on two cores): share one server
per session.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"

# Where Debian's package puts things (see its systemd unit and /etc/default/puppetserver).
JAVA = "/usr/bin/java"
JAR = Path("/usr/share/puppetserver/puppetserver.jar")
JRUBY_LIB = "/usr/share/jruby/lib"
RUBY_LOAD_PATH = "/usr/lib/puppetserver/ruby/vendor_ruby"
VENDORED_GEMS = "/usr/lib/puppetserver/vendored-jruby-gems"

# The certname docs/handoff.md has operators generate for the provisioner, and one the
# same CA signed that auth.conf does not name.
CA_CLIENT = "provisioner-ca-client"
OUTSIDER = "outsider-ca-client"
SERVER_CERTNAME = "localhost"

# The rule docs/handoff.md gives operators, word for word (a test holds them together).
# pp_cli_auth stays allowed so that `puppetserver ca sign|revoke` keep working: the
# first rule to match a request decides, and this one sorts before Puppet's own.
CLEAN_UP_RULE = """\
{
    match-request: {
        path: "/puppet-ca/v1/certificate_status/"
        type: path
        method: [put, delete]
    }
    allow: ["provisioner-ca-client", {extensions: {pp_cli_auth: "true"}}]
    sort-order: 450
    name: "provisioner certificate clean-up"
}"""

# The part of the package's default auth.conf that a CA and its agents use.
_BASE_RULES = """\
{
    match-request: {path: "/puppet-ca/v1/certificate/", type: path, method: get}
    allow-unauthenticated: true
    sort-order: 500
    name: "puppetlabs certificate"
},
{
    match-request: {
        path: "/puppet-ca/v1/certificate_revocation_list/ca", type: path, method: get
    }
    allow-unauthenticated: true
    sort-order: 500
    name: "puppetlabs crl"
},
{
    match-request: {path: "/puppet-ca/v1/certificate_request", type: path, method: [get, put]}
    allow-unauthenticated: true
    sort-order: 500
    name: "puppetlabs csr"
},
{
    match-request: {
        path: "/puppet-ca/v1/certificate_status", type: path, method: [get, put, delete]
    }
    allow: {extensions: {pp_cli_auth: "true"}}
    sort-order: 500
    name: "puppetlabs cert status"
},
{
    match-request: {path: "/puppet-ca/v1/certificate_statuses", type: path, method: get}
    allow: {extensions: {pp_cli_auth: "true"}}
    sort-order: 500
    name: "puppetlabs cert statuses"
},
{
    match-request: {path: "/puppet-ca/v1/clean", type: path, method: put}
    allow: {extensions: {pp_cli_auth: "true"}}
    sort-order: 500
    name: "puppetlabs cert clean"
},
{
    match-request: {path: "/status/v1/simple", type: path, method: get}
    allow-unauthenticated: true
    sort-order: 500
    name: "puppetlabs status service - simple"
},
{
    match-request: {path: "/", type: path}
    deny: "*"
    sort-order: 999
    name: "puppetlabs deny all"
}"""

# The package's bootstrap.cfg and ca.cfg: a complete server, CA included.
_SERVICES = """\
puppetlabs.services.request-handler.request-handler-service/request-handler-service
puppetlabs.services.jruby.jruby-puppet-service/jruby-puppet-pooled-service
puppetlabs.services.jruby-pool-manager.jruby-pool-manager-service/jruby-pool-manager-service
puppetlabs.services.puppet-profiler.puppet-profiler-service/puppet-profiler-service
puppetlabs.trapperkeeper.services.webserver.jetty9-service/jetty9-service
puppetlabs.trapperkeeper.services.webrouting.webrouting-service/webrouting-service
puppetlabs.services.config.puppet-server-config-service/puppet-server-config-service
puppetlabs.services.master.master-service/master-service
puppetlabs.services.puppet-admin.puppet-admin-service/puppet-admin-service
puppetlabs.trapperkeeper.services.authorization.authorization-service/authorization-service
puppetlabs.services.versioned-code-service.versioned-code-service/versioned-code-service
puppetlabs.trapperkeeper.services.scheduler.scheduler-service/scheduler-service
puppetlabs.trapperkeeper.services.status.status-service/status-service
puppetlabs.trapperkeeper.services.metrics.metrics-service/metrics-service
puppetlabs.trapperkeeper.services.metrics.metrics-service/metrics-webservice
puppetlabs.services.jruby.jruby-metrics-service/jruby-metrics-service
puppetlabs.services.analytics.analytics-service/analytics-service
puppetlabs.services.ca.certificate-authority-service/certificate-authority-service
puppetlabs.trapperkeeper.services.watcher.filesystem-watch-service/filesystem-watch-service
"""

_WEB_ROUTES = """\
web-router-service: {
    "puppetlabs.services.ca.certificate-authority-service/certificate-authority-service": \
"/puppet-ca"
    "puppetlabs.services.master.master-service/master-service": "/puppet"
    "puppetlabs.services.legacy-routes.legacy-routes-service/legacy-routes-service": ""
    "puppetlabs.services.puppet-admin.puppet-admin-service/puppet-admin-service": \
"/puppet-admin-api"
    "puppetlabs.trapperkeeper.services.status.status-service/status-service": "/status"
    "puppetlabs.trapperkeeper.services.metrics.metrics-service/metrics-webservice": "/metrics"
}
"""

_LOGBACK = """\
<configuration>
    <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
        <encoder><pattern>%d{HH:mm:ss.SSS} %-5p [%c{2}] %m%n</pattern></encoder>
    </appender>
    <root level="info"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


def require_puppetserver() -> None:
    """Skip the calling test without Debian's puppetserver; fail instead in CI."""
    if shutil.which("puppetserver") is None or not JAR.is_file():
        if REQUIRE_TOOLS:
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but puppetserver is not installed")
        pytest.skip("puppetserver is not installed (apt-get install puppetserver)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ClientCert:
    certname: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class PuppetServer:
    url: str
    port: int
    confdir: Path
    ssldir: Path
    cadir: Path
    log: Path

    @property
    def puppet_conf(self) -> Path:
        return self.confdir / "puppet.conf"

    @property
    def cacert(self) -> Path:
        """The CA bundle a client verifies this server with (the agent's copy)."""
        return self.ssldir / "certs" / "ca.pem"

    def client(self, certname: str) -> ClientCert:
        """The key and certificate ``puppetserver ca generate`` made for ``certname``."""
        return ClientCert(
            certname,
            self.ssldir / "certs" / f"{certname}.pem",
            self.ssldir / "private_keys" / f"{certname}.pem",
        )

    def ssl_context(self, client: ClientCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cacert)
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context

    def _http(self, client: ClientCert | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(client), timeout=30)

    # --- as a Puppet agent -------------------------------------------------------------

    def submit_csr(self, certname: str, csr_pem: bytes) -> httpx.Response:
        """What ``puppet agent`` does on its first run: the CA answers 200, or 400 saying
        why it ignores the request (e.g. the certname has a signed certificate)."""
        with self._http() as http:
            return http.put(
                f"/puppet-ca/v1/certificate_request/{certname}",
                content=csr_pem,
                headers={"Content-Type": "text/plain"},
            )

    def certificate(self, certname: str) -> str | None:
        """The signed certificate (PEM) an agent would download, or None."""
        with self._http() as http:
            response = http.get(f"/puppet-ca/v1/certificate/{certname}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.text

    # --- as the CA's operator (`puppetserver ca ...`) ------------------------------------

    def status(self, certname: str) -> dict[str, object] | None:
        """The CA's record of ``certname`` (its ``state``: requested, signed, revoked),
        or None when it has neither a certificate nor a request."""
        with self._http(self.client(SERVER_CERTNAME)) as http:
            response = http.get(f"/puppet-ca/v1/certificate_status/{certname}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def sign(self, certname: str) -> None:
        with self._http(self.client(SERVER_CERTNAME)) as http:
            response = http.put(
                f"/puppet-ca/v1/certificate_status/{certname}",
                json={"desired_state": "signed"},
            )
        assert response.status_code == 204, f"{response.status_code}: {response.text}"

    def ca_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``puppetserver ca ARGS --config <this server's puppet.conf>``."""
        return _run(["puppetserver", "ca", *args, "--config", str(self.puppet_conf)], self)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def agent_csr(certname: str, *, challenge: str | None = None, pp_role: str | None = None) -> bytes:
    """A CSR the way ``puppet agent`` makes one from csr_attributes.yaml: RSA key,
    subject CN the certname, the challengePassword attribute and pp_role as a DER
    UTF8String extension request."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certname)])
    )
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    if pp_role is not None:
        value = pp_role.encode()
        assert len(value) < 128, "a short-form DER length is all a role name needs"
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.34380.1.1.13"),
                bytes([0x0C, len(value)]) + value,
            ),
            critical=False,
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@contextmanager
def running_puppetserver(
    root: Path, *, autosign: bool | str = False, start_timeout: float = 180.0
) -> Iterator[PuppetServer]:
    """A Puppet CA on 127.0.0.1 with everything under ``root`` (an empty directory).
    ``autosign`` is puppet.conf's setting: a boolean or the path of an executable policy,
    which runs without the caller's PROVISIONER_* variables (a wrapper sets its own, as
    on a real Puppet server). The JVM is gone when this returns, whatever happened."""
    require_puppetserver()
    port = free_port()
    server = PuppetServer(
        url=f"https://127.0.0.1:{port}",
        port=port,
        confdir=root / "etc",
        ssldir=root / "ssl",
        cadir=root / "ca",
        log=root / "log" / "puppetserver.log",
    )
    _write_config(server, root, autosign)
    _check(server.ca_cli("setup", "--subject-alt-names", "localhost,IP:127.0.0.1"), server)

    started = time.monotonic()
    with server.log.open("wb") as log:
        process = subprocess.Popen(
            _java_command(server),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_environment(root),
            cwd=root,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        _wait_until_running(server, process, start_timeout)
        print(f"puppetserver answered after {time.monotonic() - started:.1f} s")
        _check(server.ca_cli("generate", "--certname", f"{CA_CLIENT},{OUTSIDER}"), server)
        yield server
    finally:
        _stop(process)


def _write_config(server: PuppetServer, root: Path, autosign: bool | str) -> None:
    dirs = {name: root / name for name in ("code", "var", "log", "run", "home", "etc/conf.d")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    confd = dirs["etc/conf.d"]
    services = server.confdir / "services.d"
    services.mkdir()

    def q(path: Path) -> str:
        # HOCON takes JSON strings, so no path needs escaping rules of its own.
        return json.dumps(str(path))

    autosign_value = str(autosign).lower() if isinstance(autosign, bool) else autosign
    server.puppet_conf.write_text(
        "[main]\n"
        f"certname = {SERVER_CERTNAME}\n"
        "server = 127.0.0.1\n"
        f"serverport = {server.port}\n"
        f"ssldir = {server.ssldir}\n"
        f"cadir = {server.cadir}\n"
        f"codedir = {dirs['code']}\n"
        f"vardir = {dirs['var']}\n"
        f"logdir = {dirs['log']}\n"
        f"rundir = {dirs['run']}\n"
        # Half the default: key generation is the slow part of `ca setup`.
        "keylength = 2048\n"
        "[server]\n"
        f"autosign = {autosign_value}\n"
    )
    (confd / "global.conf").write_text(
        f"global: {{\n    logging-config: {q(server.confdir / 'logback.xml')}\n}}\n"
    )
    (server.confdir / "logback.xml").write_text(_LOGBACK)
    (confd / "webserver.conf").write_text(
        "webserver: {\n"
        "    client-auth: want\n"
        "    ssl-host: 127.0.0.1\n"
        f"    ssl-port: {server.port}\n"
        "}\n"
    )
    (confd / "web-routes.conf").write_text(_WEB_ROUTES)
    (confd / "puppetserver.conf").write_text(
        "jruby-puppet: {\n"
        f"    ruby-load-path: [{json.dumps(RUBY_LOAD_PATH)}]\n"
        f"    gem-home: {q(dirs['var'] / 'jruby-gems')}\n"
        f"    gem-path: [{q(dirs['var'] / 'jruby-gems')}, {json.dumps(VENDORED_GEMS)}]\n"
        f"    server-conf-dir: {q(server.confdir)}\n"
        f"    server-code-dir: {q(dirs['code'])}\n"
        f"    server-var-dir: {q(dirs['var'])}\n"
        f"    server-run-dir: {q(dirs['run'])}\n"
        f"    server-log-dir: {q(dirs['log'])}\n"
        # One JRuby: each takes seconds of CPU to boot and the CA needs no more.
        "    max-active-instances: 1\n"
        "}\n"
        "http-client: {}\n"
        "profiler: {}\n"
    )
    (confd / "auth.conf").write_text(
        "authorization: {\n    version: 1\n    rules: [\n"
        f"{CLEAN_UP_RULE},\n{_BASE_RULES}\n"
        "    ]\n}\n"
    )
    (confd / "ca.conf").write_text("certificate-authority: {}\n")
    (confd / "metrics.conf").write_text("metrics: {\n    server-id: localhost\n}\n")
    (confd / "product.conf").write_text("product: {\n    check-for-updates: false\n}\n")
    (services / "bootstrap.cfg").write_text(_SERVICES)


def _java_command(server: PuppetServer) -> list[str]:
    confd = server.confdir / "conf.d"
    return [
        JAVA,
        # The package's default is 1 GiB; the CA with one JRuby is fine with less.
        "-Xms256m",
        "-Xmx768m",
        "-Djruby.logger.class=com.puppetlabs.jruby_utils.jruby.Slf4jLogger",
        f"-Djruby.lib={JRUBY_LIB}",
        "-XX:+CrashOnOutOfMemoryError",
        f"-XX:ErrorFile={server.log.parent}/puppetserver_err_pid%p.log",
        "-jar",
        str(JAR),
        "--config",
        str(confd),
        "--bootstrap-config",
        str(server.confdir / "services.d"),
    ]


def _environment(root: Path) -> dict[str, str]:
    # A HOME of its own: JRuby and the CA CLI look for per-user files there.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "JAVA_"))}
    env["HOME"] = str(root / "home")
    return env


def _run(command: list[str], server: PuppetServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_environment(server.confdir.parent),
        cwd=server.confdir.parent,
        timeout=120,
        check=False,
    )


def _check(result: subprocess.CompletedProcess[str], server: PuppetServer) -> None:
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}"
            f"{result.stderr}\nserver log:\n{server.log_tail()}"
        )


def _die_with_parent() -> None:
    """A JVM whose test process was killed outright must not keep running: the kernel
    sends it SIGKILL when its parent dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _wait_until_running(
    server: PuppetServer, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    context = server.ssl_context()
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"puppetserver exited {process.returncode} while starting:\n{server.log_tail()}"
            )
        try:
            response = httpx.get(f"{server.url}/status/v1/simple", verify=context, timeout=5)
            if response.status_code == 200 and response.text == "running":
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"puppetserver did not answer in {timeout:g} s:\n{server.log_tail()}"
            )
        time.sleep(1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
