"""Delivering the outbox: webhook POSTs and e-mail (smtplib), each alert once.

Every alert waits in the `deliveries` table, one row per channel (the webhook, each e-mail
recipient), until its channel accepted it; that is committed at once, so an accepted alert is
never offered again. Failures are retried with exponential backoff within a run and, when a
channel stays down, on the next run: never lost. An alert the receiver refuses on its own waits
alone and the channel goes on. Each POST carries the alert's idempotency key (`Idempotency-Key`
header and `key` in the body) and each e-mail a Message-ID made from it, so a receiver can tell a
repeat where one can happen: the process killed after the receiver accepted but before the
commit, or a receiver that answered after the timeout.

`alerts_geojson` is the per-AOI alerts.geojson: every alert of the AOI, oldest first.
"""

from __future__ import annotations

import http.client
import json
import os
import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from changedet.monitor.deadline import Deadline, WatchedSMTP, deadline_opener
from changedet.monitor.state import AlertRow, State
from changedet.monitor.watchlist import SmtpConfig, WebhookConfig

__all__ = ["DeliveryReport", "alerts_geojson", "channels_for", "deliver_pending", "describe_alert"]

Sleep = Callable[[float], None]
MAX_BACKOFF_S = 60.0


def describe_alert(alert: AlertRow) -> str:
    p = alert.payload
    bermed = ", ringed by a berm" if p.get("bermed") else ""
    what = {
        "new": f"new confirmed {p.get('kind')}{bermed}",
        "bermed": f"{p.get('kind')} now ringed by a berm",
        "vanished": f"{p.get('kind')} vanished (after {p.get('vanished_after')})",
        "withdrawn": f"{p.get('kind')} no longer confirmed ({p.get('detail')})",
        "reinstated": f"{p.get('kind')} confirmed again after its withdrawal",
    }.get(alert.kind, alert.kind)
    seen = f"first seen {p.get('first_seen_start') or '?'}..{p.get('first_seen_end') or '?'}"
    synthetic = "[SYNTHETIC data] " if p.get("synthetic") else ""
    unchecked = (  # a young watch: confirmed on one clear period, not yet seen to persist
        "; persistence not checked yet (too few clear periods)"
        if p.get("persistence_checked") is False and alert.kind in _CONFIRMING
        else ""
    )
    return (
        f"{synthetic}[{alert.aoi_id}] {what}: {alert.structure_id} at {p.get('lat')}, "
        f"{p.get('lon')} ({p.get('area_m2')} m², {seen}{unchecked})"
    )


_CONFIRMING = ("new", "bermed", "reinstated")  # the kinds that tell a structure is confirmed


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
        with (
            Deadline(config.timeout_s) as deadline,
            deadline_opener(deadline, _Refuse).open(request, timeout=config.timeout_s) as response,
        ):
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


# An e-mail is a conversation of about this many exchanges (greeting, EHLO, STARTTLS, AUTH,
# MAIL and RCPT, DATA), each waiting at most timeout_s: the whole may take this many times it.
SMTP_EXCHANGES = 6


def _mail(config: SmtpConfig, alert: AlertRow, to: Sequence[str]) -> None:
    """E-mail the alert to `to`: one recipient per delivery, so that a server refusing one
    address (its mailbox gone, a typo) neither loses the alert for it while the others count it
    delivered, nor sends it again to the others when it is retried."""
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(to)
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
    with (
        Deadline(config.timeout_s * SMTP_EXCHANGES) as deadline,
        WatchedSMTP(deadline, config.host, config.port, config.timeout_s) as smtp,
    ):
        if config.starttls:
            smtp.starttls()
        if config.username:
            smtp.login(config.username, password or "")
        smtp.send_message(message, to_addrs=list(to))


class _Unconfigured(smtplib.SMTPException):
    """The channel cannot work as configured; its message says what to set."""


def _why(exc: Exception, timeout_s: float) -> str:
    """A failed attempt in the analyst's words: what failed and, where it helps, what to do."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in (401, 403):
            return f"HTTP {exc.code}: the receiver refuses changedet; check [webhook] url and its token"
        if exc.code in (404, 410):
            return f"HTTP {exc.code}: no webhook at that address; check [webhook] url"
        return f"HTTP {exc.code}"
    if isinstance(exc, _Unconfigured):
        return str(exc)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"login refused ({exc.smtp_code}); check username and password"
    if isinstance(exc, smtplib.SMTPDataError):
        return f"the server refused the message ({exc.smtp_code} {_text(exc.smtp_error)})"
    if isinstance(exc, http.client.HTTPException):
        return (
            f"the receiver's answer is not HTTP ({type(exc).__name__}: {_text(str(exc))}); "
            "check [webhook] url"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = "; ".join(
            f"{to} ({code} {_text(reply)})" for to, (code, reply) in exc.recipients.items()
        )
        return f"the server refused {refused}; check [smtp] to"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        # The receiver may have taken it and answered late: a retry may repeat it (with the
        # same Idempotency-Key or Message-ID).
        return (
            f"no answer within timeout_s = {timeout_s:g} s (a slow receiver may get the alert "
            "twice); raise timeout_s if it is slow, not down"
        )
    if isinstance(reason, OSError) and reason.strerror:
        return f"cannot reach the server ({reason.strerror.lower()})"
    return f"{type(exc).__name__}: {exc}"


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return text.strip().splitlines()[0][:120] if text.strip() else ""


# A webhook's answers that refuse one alert for what it is (malformed, too large, a conflict,
# unprocessable): the others may pass. Any other 4xx (401, 403, 404, ...) is about the channel.
_ALERT_REFUSED = frozenset({400, 409, 413, 415, 422})
_ASK_AGAIN = frozenset({408, 429})  # the 4xx that say "later": timeout, too many requests


def _refused(exc: Exception) -> bool:
    """An HTTP answer that asking again soon will not change (a 4xx but 408 and 429)."""
    if not isinstance(exc, urllib.error.HTTPError):
        return False
    return 400 <= exc.code < 500 and exc.code not in _ASK_AGAIN


def _scope(exc: Exception) -> str:
    """What a failure that asking again will not mend is about: "alert" (the receiver refuses
    this alert: the others go on), "channel" (this recipient: its alerts wait, the other
    recipients' go on) or "server" (everything the server takes waits)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "channel"
    if isinstance(exc, urllib.error.HTTPError) and exc.code in _ALERT_REFUSED:
        return "alert"
    if isinstance(exc, smtplib.SMTPDataError) and 500 <= exc.smtp_code < 600:
        return "alert"  # a permanent refusal of DATA is of this message (its content, its size)
    return "server"


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0  # deliveries still pending after this run
    errors: tuple[str, ...] = ()
    unsent: tuple[str, ...] = ()  # alerts waiting for a channel the watch-list no longer has


@dataclass(frozen=True)
class _Channel:
    send: Callable[[AlertRow], None]
    retries: int
    backoff_s: float
    timeout_s: float


@dataclass(frozen=True)
class _Attempted:
    delivered: bool
    attempts: int
    error: str | None = None
    scope: str = "server"  # what the failure is about (`_scope`)


def _attempt(channel: _Channel, alert: AlertRow, sleep: Sleep) -> _Attempted:
    error: str | None = None
    for attempt in range(channel.retries + 1):
        if attempt:
            sleep(min(channel.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
        try:
            channel.send(alert)
            return _Attempted(True, attempt + 1)
        except (OSError, smtplib.SMTPException, http.client.HTTPException) as exc:
            error = _why(exc, channel.timeout_s)
            if isinstance(exc, _Unconfigured | smtplib.SMTPAuthenticationError):
                return _Attempted(False, attempt + 1, error)  # waiting will not mend settings
            scope = _scope(exc)
            if scope != "server" or _refused(exc):
                return _Attempted(False, attempt + 1, error, scope)  # nor will asking again
    return _Attempted(False, channel.retries + 1, error)


def channels_for(webhook: WebhookConfig | None, smtp: SmtpConfig | None) -> list[str]:
    """The delivery channels of a watch-list: the webhook, and one per e-mail recipient."""
    return [*(["webhook"] if webhook else []), *(f"smtp:{to}" for to in (smtp.to if smtp else ()))]


def _channel(name: str, webhook: WebhookConfig | None, smtp: SmtpConfig | None) -> _Channel | None:
    """How to send on channel `name` now (None: the watch-list no longer has it)."""
    if name == "webhook" and webhook is not None:
        return _Channel(
            lambda a: _post(webhook, a), webhook.retries, webhook.backoff_s, webhook.timeout_s
        )
    to = name.removeprefix("smtp:")
    if smtp is None or not name.startswith("smtp:") or to not in smtp.to:
        return None
    return _Channel(lambda a: _mail(smtp, a, (to,)), smtp.retries, smtp.backoff_s, smtp.timeout_s)


def deliver_pending(
    state: State,
    *,
    webhook: WebhookConfig | None,
    smtp: SmtpConfig | None,
    sleep: Sleep = time.sleep,
) -> DeliveryReport:
    """Offer every pending delivery to its channel, oldest alert first. A server that fails an
    alert after its retries is not tried again in this run (its alerts wait for the next), nor
    is a recipient it refused; an alert a webhook refuses on its own (`_scope`) waits alone,
    named, and the webhook goes on with the others."""
    if smtp is not None:  # an older state's one delivery for all: one per recipient now
        state.split_channel("smtp", channels_for(None, smtp))
    report = DeliveryReport()
    down: set[str] = set()  # servers ("webhook", "smtp": all its recipients) and recipients
    errors: list[str] = []
    unset: dict[str, int] = {}
    for delivery in state.pending():
        channel = _channel(delivery.channel, webhook, smtp)
        server = delivery.channel.split(":", 1)[0]
        if channel is None:  # the watch-list no longer has that channel: say so, keep them
            unset[delivery.channel] = unset.get(delivery.channel, 0) + 1
        if channel is None or server in down or delivery.channel in down:
            report.failed += 1
            continue
        if not state.still_pending(delivery.alert.key, delivery.channel):
            continue  # reviewed as a false positive since the run listed it
        tried = _attempt(channel, delivery.alert, sleep)
        state.mark_delivery(
            delivery.alert.key,
            delivery.channel,
            delivered=tried.delivered,
            attempts=tried.attempts,
            error=tried.error,
        )
        if tried.delivered:
            report.delivered += 1
            continue
        report.failed += 1
        if tried.scope == "alert":
            alert = delivery.alert
            errors.append(
                f"{server}: alert {alert.key} ({alert.aoi_id} {alert.structure_id} "
                f"{alert.kind}): {tried.error}"
            )
        else:  # the recipient's alerts, or the whole server's, wait for the next run
            down.add(delivery.channel if tried.scope == "channel" else server)
            errors.append(f"{server}: {tried.error}")
    report.errors = tuple(errors)
    report.unsent = tuple(_unsent(name, n) for name, n in unset.items())
    return report


def _unsent(channel: str, n: int) -> str:
    if channel.startswith("smtp:"):
        to = channel.removeprefix("smtp:")
        return (
            f"{n} alert(s) wait for {to}, whom [smtp] to no longer lists; add the address back "
            "to send them (every alert is also in alerts.geojson)"
        )
    return (
        f"{n} alert(s) wait for the {channel}, which the watch-list no longer has; add "
        f"[{channel}] back to send them (every alert is also in alerts.geojson)"
    )
