"""Delivering the outbox: webhook POSTs and e-mail (smtplib), each alert once.

Every alert waits in the `deliveries` table, one row per channel, until its channel accepted it;
that is committed at once, so an accepted alert is never offered again. Failures are retried
with exponential backoff within a run and, when a channel stays down, on the next run: never
lost. Each POST carries the alert's idempotency key (`Idempotency-Key` header and `key` in the
body) and each e-mail a Message-ID made from it, so a receiver can tell a repeat in the one case
a repeat can happen: the process killed after the receiver accepted but before the commit.

`alerts_geojson` is the per-AOI alerts.geojson: every alert of the AOI, oldest first.
"""

from __future__ import annotations

import json
import os
import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from changedet.monitor.state import AlertRow, State
from changedet.monitor.watchlist import SmtpConfig, WebhookConfig

__all__ = ["DeliveryReport", "alerts_geojson", "deliver_pending", "describe_alert"]

Sleep = Callable[[float], None]
MAX_BACKOFF_S = 60.0


def describe_alert(alert: AlertRow) -> str:
    p = alert.payload
    what = {
        "new": f"new confirmed {p.get('kind')}",
        "bermed": f"{p.get('kind')} now ringed by a berm",
        "vanished": f"{p.get('kind')} vanished (after {p.get('vanished_after')})",
        "withdrawn": f"{p.get('kind')} no longer confirmed ({p.get('detail')})",
        "reinstated": f"{p.get('kind')} confirmed again after its withdrawal",
    }.get(alert.kind, alert.kind)
    seen = f"first seen {p.get('first_seen_start') or '?'}..{p.get('first_seen_end') or '?'}"
    synthetic = "[SYNTHETIC data] " if p.get("synthetic") else ""
    return (
        f"{synthetic}[{alert.aoi_id}] {what}: {alert.structure_id} at {p.get('lat')}, "
        f"{p.get('lon')} ({p.get('area_m2')} m², {seen})"
    )


def alerts_geojson(alerts: Sequence[AlertRow]) -> dict[str, Any]:
    """RFC 7946 FeatureCollection of alerts, oldest first."""
    features = []
    for a in alerts:
        props = {k: v for k, v in a.payload.items() if k != "geometry"}
        geometry = a.payload.get("geometry")
        features.append(
            {
                "type": "Feature",
                "id": a.key,
                "geometry": json.loads(geometry) if isinstance(geometry, str) else None,
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features}


# --- channels ------------------------------------------------------------------------------------


def _message(alert: AlertRow) -> dict[str, Any]:
    """What a channel sends: the alert's payload with its outline as a GeoJSON object (the
    ledger keeps it as text) and its text."""
    geometry = alert.payload.get("geometry")
    outline = json.loads(geometry) if isinstance(geometry, str) else geometry
    return {**alert.payload, "geometry": outline, "text": describe_alert(alert)}


def _post(config: WebhookConfig, alert: AlertRow) -> None:
    body = json.dumps(_message(alert)).encode()
    request = urllib.request.Request(
        config.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": alert.key,
            "User-Agent": "changedet-monitor",
        },
    )
    try:
        with _NO_REDIRECTS.open(request, timeout=config.timeout_s) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:  # followed, a POST becomes a GET without the alert: not sent
            location = exc.headers.get("Location") if exc.headers else None
            where = urllib.parse.urljoin(config.url, location) if location else "elsewhere"
            raise _Unconfigured(
                f"HTTP {exc.code}: the webhook moved to {where}; set [webhook] url to it"
            ) from None
        raise


class _Refuse(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would resend the POST as a GET without its body, and
    the alert would count as delivered though its content never arrived."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_Refuse)


def _mail(config: SmtpConfig, alert: AlertRow) -> None:
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Subject"] = f"changedet: {describe_alert(alert)}"[:200]
    message["Message-ID"] = f"<{alert.key}@changedet>"
    message["X-Changedet-Alert"] = alert.key
    message.set_content(
        describe_alert(alert) + "\n\n" + json.dumps(_message(alert), indent=2, sort_keys=True)
    )
    password = os.environ.get(config.password_env) if config.password_env else ""
    if config.username and password is None:
        raise _Unconfigured(
            f"the password variable {config.password_env} is not set in this job's environment; "
            "set it where the job runs (cron and systemd do not read your shell's profile)"
        )
    with smtplib.SMTP(config.host, config.port, timeout=config.timeout_s) as smtp:
        if config.starttls:
            smtp.starttls()
        if config.username:
            smtp.login(config.username, password or "")
        smtp.send_message(message)


class _Unconfigured(smtplib.SMTPException):
    """The channel cannot work as configured; its message says what to set."""


def _why(exc: Exception) -> str:
    """A failed attempt in the analyst's words: what failed and, where it helps, what to do."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, _Unconfigured):
        return str(exc)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"login refused ({exc.smtp_code}); check username and password"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, OSError) and reason.strerror:
        return f"cannot reach the server ({reason.strerror.lower()})"
    if isinstance(reason, TimeoutError):
        return "cannot reach the server (timed out)"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0  # deliveries still pending after this run
    errors: tuple[str, ...] = ()
    unsent: tuple[str, ...] = ()  # alerts waiting for a channel the watch-list no longer has


def _attempt(
    send: Callable[[AlertRow], None],
    alert: AlertRow,
    retries: int,
    backoff_s: float,
    sleep: Sleep,
) -> tuple[bool, int, str | None]:
    """(delivered, attempts made, last error)."""
    error: str | None = None
    for attempt in range(retries + 1):
        if attempt:
            sleep(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
        try:
            send(alert)
            return True, attempt + 1, None
        except (OSError, smtplib.SMTPException) as exc:
            error = _why(exc)
            if isinstance(exc, _Unconfigured | smtplib.SMTPAuthenticationError):
                return False, attempt + 1, error  # waiting will not mend the settings
    return False, retries + 1, error


def deliver_pending(
    state: State,
    *,
    webhook: WebhookConfig | None,
    smtp: SmtpConfig | None,
    sleep: Sleep = time.sleep,
) -> DeliveryReport:
    """Offer every pending delivery to its channel, oldest alert first. A channel that fails
    an alert after its retries is not tried again in this run (its alerts wait for the next)."""
    channels: Mapping[str, tuple[Callable[[AlertRow], None], int, float] | None] = {
        "webhook": None
        if webhook is None
        else (lambda a: _post(webhook, a), webhook.retries, webhook.backoff_s),
        "smtp": None if smtp is None else (lambda a: _mail(smtp, a), smtp.retries, smtp.backoff_s),
    }
    report = DeliveryReport()
    down: set[str] = set()
    errors: list[str] = []
    unset: dict[str, int] = {}
    for delivery in state.pending():
        channel = channels.get(delivery.channel)
        if channel is None:  # the watch-list no longer has that channel: say so, keep them
            unset[delivery.channel] = unset.get(delivery.channel, 0) + 1
        if channel is None or delivery.channel in down:
            report.failed += 1
            continue
        send, retries, backoff = channel
        ok, attempts, error = _attempt(send, delivery.alert, retries, backoff, sleep)
        state.mark_delivery(
            delivery.alert.key, delivery.channel, delivered=ok, attempts=attempts, error=error
        )
        if ok:
            report.delivered += 1
        else:
            report.failed += 1
            down.add(delivery.channel)
            errors.append(f"{delivery.channel}: {error}")
    report.errors = tuple(errors)
    report.unsent = tuple(
        f"{n} alert(s) wait for the {name}, which the watch-list no longer has; add [{name}] "
        "back to send them (every alert is also in alerts.geojson)"
        for name, n in unset.items()
    )
    return report
