"""``stepline dev`` and ``stepline start``: the server (event API, SDK protocol, REST API) in one process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import uvicorn

from stepline.cli import observe as observe_cli
from stepline.cli.common import CliError, NotFoundError, db_location, db_option, display_path, make_store, redact
from stepline.cli.worker import load_client
from stepline.core.engine import Engine
from stepline.server.alert_rules import AlertRule, parse_rule
from stepline.server.config import DEFAULT_PORT, ServerConfig, ServerKind, scaled_backoff
from stepline.server.http_limits import MAX_CONNECTIONS, QuietServer, uvicorn_config

log = logging.getLogger("stepline.cli")
F = TypeVar("F", bound=Callable[..., Any])
_KEY = re.compile(r"^(signkey-\w+-)?([0-9a-fA-F]+)$")


def _common_options(fn: F) -> F:
    options: list[Callable[[Any], Any]] = [
        click.option("--port", "-p", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
                     envvar="STEPLINE_PORT", help="Port for the event API, SDK endpoints and REST API."),
        click.option("--sdk-url", "-u", "sdk_urls", multiple=True, metavar="URL",
                     help="An app's serve URL to sync (repeatable), e.g. http://localhost:3000/api/inngest."),
        click.option("--no-poll", is_flag=True, help="Re-sync only apps whose last sync failed."),
        click.option("--poll-interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
                     help="Seconds between re-syncs of known apps."),
        click.option("--app", "apps", multiple=True, metavar="MODULE:ATTR",
                     help="Also run this Stepline client's functions in-process (repeatable)."),
        click.option("--app-dir", default=".", show_default=True, help="Directory added to sys.path for --app."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                     show_default=True),
        click.option("--admin-token", envvar="STEPLINE_ADMIN_TOKEN", default=None, show_envvar=True,
                     help="The dashboard's login token. `start` generates and logs one when none is given; "
                     "`dev` is open without one."),
        click.option("--alert-webhook", envvar="STEPLINE_ALERT_WEBHOOK", default=None, show_envvar=True,
                     metavar="URL", help="POST a JSON alert (with the run's link and error) here when runs fail."),
        click.option("--alert-rule", "alert_rules", multiple=True, metavar="'GLOB URL [rate>N%/WINDOW] [slack]'",
                     help="Alert URL when a function whose id matches GLOB fails (every failure, summed up per "
                     "cooldown), or with rate>N%/WINDOW when the failure rate over WINDOW is above N% (repeatable)."),
        click.option("--alert-format", type=click.Choice(["stepline", "slack"]), default="stepline",
                     show_default=True, envvar="STEPLINE_ALERT_FORMAT",
                     help="slack: Slack's incoming-webhook body (text and blocks) for every alert rule."),
        click.option("--alert-cooldown", envvar="STEPLINE_ALERT_COOLDOWN", type=click.FloatRange(min=0),
                     default=60.0, show_default=True, show_envvar=True,
                     help="Seconds after an alert in which further failures are summed up in one message."),
        click.option("--public-url", envvar="STEPLINE_PUBLIC_URL", default=None, show_envvar=True, metavar="URL",
                     help="How people reach this server, for links in alerts (default http://127.0.0.1:PORT)."),
        click.option("--forwarded-allow-ips", envvar="STEPLINE_FORWARDED_ALLOW_IPS", default="", show_envvar=True,
                     metavar="IPS", help="Comma-separated proxy addresses whose X-Forwarded-For/-Proto are trusted "
                     "(default: none, the peer address is the client's)."),
        click.option("--outbound-deny-private", is_flag=True, envvar="STEPLINE_OUTBOUND_DENY_PRIVATE",
                     show_envvar=True, help="Refuse private and loopback targets for URLs that apps and API callers "
                     "give (app syncs and calls, webhooks); link-local and metadata addresses are always refused."),
        click.option("--outbound-allow", "outbound_allow", multiple=True, metavar="HOST_OR_CIDR",
                     help="An exception to --outbound-deny-private (repeatable; also $STEPLINE_OUTBOUND_ALLOW, "
                     "comma-separated)."),
        click.option("--processes", type=click.IntRange(1, 256), default=1, envvar="STEPLINE_PROCESSES",
                     show_default=True, show_envvar=True,
                     help="Server processes sharing the port and the store (e.g. one per core); a crashed one is "
                     "restarted. What runs in each: docs/architecture.md."),
        click.option("--max-connections", type=click.IntRange(10, 1_000_000), default=MAX_CONNECTIONS,
                     envvar="STEPLINE_MAX_CONNECTIONS", show_default=True, show_envvar=True,
                     help="Connections served at once; beyond it new requests get 503."),
        observe_cli.options,
        db_option(),
        click.pass_context,
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _sockets(hosts: list[str], port: int) -> list[socket.socket]:
    """Listening sockets on every host (dev binds IPv4 and IPv6 loopback: `localhost` may resolve to ::1)."""
    out: list[socket.socket] = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if host == "::1" and len(hosts) > 1:
                log.info("IPv6 loopback unavailable (%s); serving on IPv4 only", exc)
                continue
            for s in out:
                s.close()
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.listen(2048)
        sock.setblocking(False)
        out.append(sock)
    return out


@dataclass(frozen=True)
class Limits:
    forwarded_allow_ips: tuple[str, ...]
    max_connections: int


@dataclass(frozen=True)
class ServeSpec:
    """What one server process serves: the same for each process of ``--processes N`` (pickled to the children)."""

    location: str  # the database
    config: ServerConfig
    hosts: tuple[str, ...]
    port: int
    apps: tuple[str, ...]
    app_dir: str
    log_level: str
    limits: Limits
    observe: observe_cli.Observe
    processes: int = 1


@dataclass(frozen=True)
class Role:
    """One child of ``--processes N``: its index (0 syncs apps and serves ``--metrics-port``), the listening sockets
    it inherited, and the descriptor on which it says it is ready (``cli/processes.py``)."""

    index: int
    sockets: list[socket.socket]
    ready_fd: int


async def _serve(spec: ServeSpec, role: Role | None = None) -> None:
    config = spec.config
    store = make_store(spec.location)
    try:
        await store.open()
    except Exception as exc:
        raise NotFoundError(f"cannot open database {redact(spec.location)}: {type(exc).__name__}: {exc}") from None
    engine = Engine(store)
    clients = [load_client(t, spec.app_dir) for t in spec.apps]
    for c in clients:
        c.use_store(store)
        # One realtime hub and one set of run waiters per process: what the in-process functions publish and end
        # reaches the server's subscribers and waiters directly, not through the store.
        c.engine.realtime, c.engine.waiters = engine.realtime, engine.waiters
        await c.ready()
    sockets = role.sockets if role is not None else _sockets(list(spec.hosts), spec.port)
    if role is not None and role.index > 0:
        config = dataclasses.replace(config, sync_apps=False)  # apps are synced and discovered by process 0
    from stepline.server.app import create_app  # here: every other CLI command starts without the server

    app = create_app(engine, config)
    server = QuietServer(uvicorn_config(app, forwarded_allow_ips=spec.limits.forwarded_allow_ips,
                                        max_connections=spec.limits.max_connections))  # fmt: skip
    app.state.shutdown_probe = lambda: server.should_exit  # ends the dashboard's live streams at shutdown
    app.state.shutdown_event = server.exit_requested  # ends the waiting requests at once, without polling
    workers = [c.worker() for c in clients]
    shown = ", ".join(f"http://{f'[{h}]' if ':' in h else h}:{spec.port}" for h in spec.hosts[: len(sockets)])
    which = f", process {role.index} (pid {os.getpid()})," if role is not None else ""
    log.info("stepline %s server%s on %s (db %s, kind %s)", "dev" if config.kind == "dev" else "start", which,
             shown, display_path(store, spec.location), config.kind)  # fmt: skip
    loop = asyncio.get_running_loop()

    stopping = False

    def stop(sig: signal.Signals) -> None:
        # uvicorn re-raises the signal it caught once it has shut down: say it once.
        nonlocal stopping
        if not stopping:
            log.info("%s: stopping", sig.name)
        stopping = True
        server.request_exit()
        for w in workers:
            w.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop, sig)
    observe = spec.observe
    if role is not None and role.index > 0:
        observe = dataclasses.replace(observe, metrics_port=None)  # process 0's listener shows every process's
    tasks = [server.serve(sockets=sockets), *(w.run() for w in workers)]
    if role is not None:
        tasks.append(_child_duties(role, server, stop))
    try:
        async with observe_cli.metrics_listener(observe, app.state.metrics):
            await asyncio.gather(*tasks)
    finally:
        for w in workers:
            w.stop()
        for c in clients:
            await c.close()
        await store.close()


async def _child_duties(role: Role, server: uvicorn.Server, stop: Callable[[signal.Signals], None]) -> None:
    """A child says when it serves, and stops (as on SIGTERM) if its supervisor went away (a kill -9 of it)."""
    parent = os.getppid()
    while not server.started and not server.should_exit:
        await asyncio.sleep(0.02)
    with contextlib.suppress(OSError):
        os.write(role.ready_fd, b"1")
        os.close(role.ready_fd)
    while not server.should_exit:
        if os.getppid() != parent:
            log.warning("the supervising process is gone: stopping")
            stop(signal.SIGTERM)
            return
        await asyncio.sleep(1.0)


def _config(kind: ServerKind, **kw: Any) -> ServerConfig:
    scale = os.environ.get("STEPLINE_BACKOFF_SCALE")
    if scale:
        try:
            kw["backoff"] = scaled_backoff(float(scale))
        except ValueError:
            raise CliError(f"STEPLINE_BACKOFF_SCALE must be a number, got {scale!r}") from None
    return ServerConfig(kind=kind, **kw)


def _run(ctx: click.Context, config: ServerConfig, hosts: list[str], port: int, apps: tuple[str, ...],
         app_dir: str, log_level: str, limits: Limits, observe: observe_cli.Observe,
         processes: int) -> None:  # fmt: skip
    dev_dashboard = (config.public_url or f"http://127.0.0.1:{port}") if config.kind == "dev" else None
    observe_cli.setup_logging(observe, log_level, dev_dashboard=dev_dashboard)
    spec = ServeSpec(db_location(ctx)[0], config, tuple(hosts), port, apps, app_dir, log_level, limits, observe,
                     processes)  # fmt: skip
    if processes > 1:
        from stepline.cli import processes as supervisor

        raise SystemExit(supervisor.supervise(spec, _sockets(hosts, port)))
    try:
        with observe_cli.tracing():
            asyncio.run(_serve(spec))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def serve_child(spec: ServeSpec, role: Role) -> None:
    """One child process of ``--processes N`` (``cli/processes.py`` starts it with the spec and its role)."""
    config = spec.config
    dev_dashboard = (config.public_url or f"http://127.0.0.1:{spec.port}") if config.kind == "dev" else None
    observe_cli.setup_logging(spec.observe, spec.log_level, dev_dashboard=dev_dashboard)
    with observe_cli.tracing():
        asyncio.run(_serve(spec, role))


@click.command("dev")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="Address to listen on (repeatable). Default: 127.0.0.1 and ::1.")  # fmt: skip
@click.option("--no-discovery", is_flag=True, help="Do not scan local ports for apps.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A Host name the dev server answers besides loopback names, e.g. when reached over the network "
              "(repeatable; also $STEPLINE_ALLOWED_HOSTS, comma-separated).")  # fmt: skip
@_common_options
def dev_command(ctx: click.Context, hosts: tuple[str, ...], no_discovery: bool, allowed_hosts: tuple[str, ...],
                port: int, sdk_urls: tuple[str, ...], no_poll: bool, poll_interval: float, apps: tuple[str, ...],
                app_dir: str, log_level: str, **options: Any) -> None:  # fmt: skip
    """Development server: no keys, apps synced and discovered.

    SQLite by default; apps are synced from -u URLs and discovered on local ports.

    Point an Inngest SDK app at it with INNGEST_DEV=http://127.0.0.1:8288. It answers loopback Host names only
    and refuses cross-site requests from browsers (docs/security.md).
    """
    observe = observe_cli.take(options)
    processes = int(options.pop("processes"))
    network, limits = _network_options(options)
    config = _config("dev", sdk_urls=sdk_urls, discovery=not no_discovery, poll=not no_poll,
                     poll_interval=poll_interval, extra={"port": str(port)},
                     allowed_hosts=_split(allowed_hosts, "STEPLINE_ALLOWED_HOSTS"), **network,
                     **_dashboard_options(options, required=False))  # fmt: skip
    _run(ctx, config, list(hosts) or ["127.0.0.1", "::1"], port, apps, app_dir, log_level, limits, observe, processes)


def _split(values: tuple[str, ...] | str, env: str | None = None) -> tuple[str, ...]:
    """Repeated or comma-separated values (and those of an environment variable), stripped, without empties."""
    items = [values] if isinstance(values, str) else list(values)
    if env is not None:
        items.append(os.environ.get(env, ""))
    return tuple(dict.fromkeys(p.strip() for item in items for p in item.split(",") if p.strip()))


def _network_options(options: dict[str, Any]) -> tuple[dict[str, Any], Limits]:
    """Outbound policy (config) and connection limits (uvicorn) from the options; the rest stays in ``options``."""
    config = {"outbound_deny_private": bool(options.pop("outbound_deny_private")),
              "outbound_allow": _split(options.pop("outbound_allow"), "STEPLINE_OUTBOUND_ALLOW")}  # fmt: skip
    limits = Limits(forwarded_allow_ips=_split(options.pop("forwarded_allow_ips") or ""),
                    max_connections=int(options.pop("max_connections")))  # fmt: skip
    return config, limits


def _dashboard_options(options: dict[str, Any], *, required: bool) -> dict[str, Any]:
    """Dashboard login and alerts. ``required`` (start): without ``--admin-token`` one is generated and logged."""
    token = (options.get("admin_token") or "").strip() or None
    if token is None and required:
        token = secrets.token_urlsafe(24)
        log.warning("dashboard admin token (generated: set --admin-token or STEPLINE_ADMIN_TOKEN to keep one): %s",
                    token)  # fmt: skip
    webhook = (options.get("alert_webhook") or "").strip() or None
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise CliError(f"--alert-webhook must be an http(s) URL, got {webhook!r}")
    slack = options.get("alert_format") == "slack"
    try:
        rules = [parse_rule(text, slack=slack) for text in options.get("alert_rules") or ()]
    except ValueError as exc:
        raise CliError(f"--alert-rule: {exc}") from None
    if webhook is not None:
        rules.insert(0, AlertRule("*", webhook, slack=slack))
    public = (options.get("public_url") or "").strip().rstrip("/") or None
    return {"admin_token": token, "alert_rules": tuple(rules), "alert_cooldown": float(options["alert_cooldown"]),
            "public_url": public}  # fmt: skip


def _check_key(key: str, what: str) -> str:
    key = key.strip()
    if not _KEY.match(key) or len(_KEY.match(key).group(2)) % 2:  # type: ignore[union-attr]
        raise CliError(f"{what} must be hex (optionally prefixed signkey-<env>-), got {key[:12]!r}...")
    return key


@click.command("start")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Address to listen on (repeatable). "
              "Default: 0.0.0.0.")  # fmt: skip
@click.option(
    "--signing-key",
    envvar=["STEPLINE_SIGNING_KEY", "INNGEST_SIGNING_KEY"],
    show_envvar=True,
    help="Key that signs calls to apps and authenticates SDKs and the REST API (hex, signkey-<env>-...).",
)
@click.option("--signing-key-fallback", envvar=["STEPLINE_SIGNING_KEY_FALLBACK", "INNGEST_SIGNING_KEY_FALLBACK"],
              default=None, help="A second accepted key, for rotation.")  # fmt: skip
@click.option("--event-key", "event_keys", multiple=True,
              help="An accepted event key (repeatable). Also $STEPLINE_EVENT_KEYS (comma-separated) or "
              "$INNGEST_EVENT_KEY.")  # fmt: skip
@click.option("--discovery", is_flag=True, help="Scan local ports for apps (off by default in start).")
@_common_options
def start_command(ctx: click.Context, hosts: tuple[str, ...], signing_key: str | None,
                  signing_key_fallback: str | None, event_keys: tuple[str, ...], discovery: bool, port: int,
                  sdk_urls: tuple[str, ...], no_poll: bool, poll_interval: float, apps: tuple[str, ...],
                  app_dir: str, log_level: str, **options: Any) -> None:  # fmt: skip
    """Production server: signed calls, event keys, PostgreSQL.

    SQLite or PostgreSQL (--db postgresql://...); several nodes can share one PostgreSQL database.

    Point an Inngest SDK app at it with INNGEST_BASE_URL, INNGEST_SIGNING_KEY and INNGEST_EVENT_KEY.
    """
    observe = observe_cli.take(options)
    processes = int(options.pop("processes"))
    accepted = {k.strip() for k in event_keys if k.strip()}
    accepted |= {k.strip() for k in os.environ.get("STEPLINE_EVENT_KEYS", "").split(",") if k.strip()}
    if os.environ.get("INNGEST_EVENT_KEY", "").strip():
        accepted.add(os.environ["INNGEST_EVENT_KEY"].strip())
    missing = [need for need, given in (
        ("a signing key: --signing-key or STEPLINE_SIGNING_KEY (e.g. signkey-prod-$(openssl rand -hex 32))",
         signing_key),
        ("at least one event key: --event-key or STEPLINE_EVENT_KEYS (e.g. $(openssl rand -hex 16))", accepted),
    ) if not given]  # fmt: skip
    if missing:
        raise CliError("stepline start needs " + "; and ".join(missing))
    keys = [_check_key(signing_key or "", "--signing-key")]
    if signing_key_fallback:
        keys.append(_check_key(signing_key_fallback, "--signing-key-fallback"))
    network, limits = _network_options(options)
    config = _config("cloud", signing_keys=tuple(keys), event_keys=frozenset(accepted), sdk_urls=sdk_urls,
                     discovery=discovery, poll=not no_poll, poll_interval=poll_interval, extra={"port": str(port)},
                     **network, **_dashboard_options(options, required=True))  # fmt: skip
    _run(ctx, config, list(hosts) or ["0.0.0.0"], port, apps, app_dir, log_level, limits, observe, processes)
