"""A delivery's deadline: its socket shut down when the time is up, in the caller's thread.

urllib's and smtplib's timeouts bound each socket operation, so a receiver trickling a line at a
time held the run, and its lock, for ever. Running the request on a thread joined with a timeout
left it going after the run gave up: a slow but working mail server got each alert again with
every retry. Here the request runs where it is called; a timer shuts its socket down at the
deadline, the blocked read returns at once, the request fails there, and nothing goes on after.
"""

from __future__ import annotations

import contextlib
import http.client
import smtplib
import socket
import threading
import urllib.request
from functools import partial
from types import TracebackType
from typing import Any

__all__ = ["Deadline", "WatchedSMTP", "deadline_opener"]


class Deadline:
    """`with Deadline(s) as d:` ... `d.watch(sock)` once connected. Past the deadline the block
    leaves as TimeoutError (the receiver did not answer in time), whether the shut socket made
    it fail or look complete (an HTTP header trickle cut short reads as its end)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None or self._timer is not None:
            return

        def shut() -> None:
            self.expired = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        self._timer = threading.Timer(self.seconds, shut)
        self._timer.daemon = True
        self._timer.start()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.expired and (exc is None or isinstance(exc, Exception)):
            raise TimeoutError("timed out") from exc


class _Watched:
    """A connection whose socket its deadline watches once connected (mixed in first)."""

    sock: socket.socket | None

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.deadline.watch(self.sock)


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(_WatchedHTTP, deadline=self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = getattr(self, "_context", None)
        return self.do_open(partial(_WatchedHTTPS, deadline=self.deadline), req, context=context)


def deadline_opener(deadline: Deadline, *handlers: Any) -> urllib.request.OpenerDirector:
    """An opener whose http(s) connections `deadline` watches, with `handlers` besides."""
    return urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), *handlers)


class WatchedSMTP(smtplib.SMTP):
    """smtplib.SMTP whose socket `deadline` watches from its creation: the greeting is read
    inside the constructor, and a server trickling '220-' lines held it there."""

    def __init__(self, deadline: Deadline, host: str, port: int, timeout: float) -> None:
        self._deadline = deadline
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._deadline.watch(sock)
        return sock
