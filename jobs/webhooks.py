"""Webhook delivery: POST the final job object, signed, to a public address given at submit time.

A webhook is a request our servers make on a caller's behalf, so it is checked twice against server-side
request forgery: at submit (the API refuses the URL with 422) and again right before connecting, against
the addresses the name resolves to *then* (a name that resolved to a public address at submit can resolve
to 127.0.0.1 later: DNS rebinding). The connection goes to the address that was checked, never to a second
lookup. Loopback, private, link-local (cloud metadata at 169.254.169.254), shared, reserved and multicast
addresses are refused unless `UPZIR_WEBHOOK_ALLOW_NETWORKS` lists them. Redirects are not followed.

Bodies are signed when `UPZIR_WEBHOOK_SECRET` is set: `X-Upzir-Signature: sha256=<hex>` is HMAC-SHA256 over
`<X-Upzir-Timestamp>.<body>`, so a receiver can check origin and refuse replays (Stripe's scheme).
Delivery never decides a job's outcome: it runs after the job is stored, in a daemon thread.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from tenacity import Retrying, retry_if_exception, retry_if_result, stop_after_attempt, wait_exponential

from .record import JobRecord
from .settings import Settings
from .store import JobStore

log = logging.getLogger("upzir.webhooks")

WEBHOOK_BACKOFF_CAP_S = 30
"""Longest pause between webhook tries; the whole delivery stays within a couple of minutes."""

SIGNATURE_HEADER = "X-Upzir-Signature"
TIMESTAMP_HEADER = "X-Upzir-Timestamp"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(ValueError):
    """The URL may not be called (scheme, unresolvable name, or a non-public address)."""


def sign(body: bytes, timestamp: str, secret: str) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _public(ip: IPAddress, settings: Settings) -> bool:
    if any(ip in net for net in settings.webhook_allowed):
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _public(ip.ipv4_mapped, settings)
    return ip.is_global and not ip.is_multicast


def resolve(url: str, settings: Settings) -> IPAddress:
    """The address to connect to for `url`, after checking every address its name resolves to now."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"webhook must be an http(s) URL with a host, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"webhook host {parts.hostname!r} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    refused = sorted({str(a) for a in addresses if not _public(a, settings)})
    if refused or not addresses:
        raise WebhookRefused(
            f"webhook host {parts.hostname!r} resolves to a loopback, private, link-local or reserved address"
            f" ({', '.join(refused)}); only public addresses may be called (UPZIR_WEBHOOK_ALLOW_NETWORKS lists"
            " exceptions)"
        )
    return addresses[0]


def check(url: str, settings: Settings) -> None:
    """Refuse a webhook URL at submit time (WebhookRefused says why)."""
    resolve(url, settings)


def _pinned(url: str, ip: IPAddress) -> str:
    """`url` with its host replaced by the checked address (Host header and TLS name keep the original)."""
    parts = urlsplit(url)
    host = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _retryable_status(response: httpx.Response) -> bool:
    return response.status_code >= 500 or response.status_code == 429


def deliver(url: str, job: dict[str, Any], settings: Settings) -> bool:
    """POST `job` to `url`; True once a 2xx answer comes back. Never raises."""
    body = json.dumps(job, separators=(",", ":")).encode()

    def post(client: httpx.Client) -> httpx.Response:
        ip = resolve(url, settings)  # again at every try: the answer may have changed since submit
        host = urlsplit(url).netloc.rpartition("@")[2]
        timestamp = str(int(time.time()))
        headers = {
            "User-Agent": "upzir-webhook",
            "Content-Type": "application/json",
            "Host": host,
            TIMESTAMP_HEADER: timestamp,
        }
        if settings.webhook_secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, timestamp, settings.webhook_secret.get_secret_value())
        extensions = {"sni_hostname": urlsplit(url).hostname} if url.startswith("https") else {}
        return client.post(_pinned(url, ip), content=body, headers=headers, extensions=extensions)

    retrying = Retrying(
        stop=stop_after_attempt(settings.webhook_attempts),
        wait=wait_exponential(multiplier=0.5, max=WEBHOOK_BACKOFF_CAP_S),
        retry=retry_if_exception(lambda e: isinstance(e, httpx.TransportError)) | retry_if_result(_retryable_status),
        retry_error_callback=lambda state: None,
        reraise=False,
    )
    try:
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False) as client:
            response = retrying(post, client)
    except Exception as exc:  # never let a receiver's problem (or a refused address) reach the worker loop
        log.warning("webhook %s for job %s not delivered: %s", url, job.get("id"), exc)
        return False
    if response is None or response.status_code >= 300:
        log.warning("webhook %s for job %s gave up (%s)", url, job.get("id"), getattr(response, "status_code", None))
        return False
    return True


def deliver_in_background(url: str | None, job: dict[str, Any], settings: Settings) -> threading.Thread | None:
    if not url:
        return None
    thread = threading.Thread(target=deliver, args=(url, job, settings), name="upzir-webhook", daemon=True)
    thread.start()
    return thread


def notify(store: JobStore, record: JobRecord) -> threading.Thread | None:
    """Tell the job's webhook (if any) how it ended, with the final job object."""
    if not record.webhook:
        return None
    return deliver_in_background(record.webhook, store.render(record).public(), store.settings)
