"""A tiny TCP proxy to take a dependency "down" for the app without stopping the shared server.

``cut()`` closes the listening socket and every connection through it, so the
app sees what a stopped PostgreSQL looks like: pooled connections are dead and
new ones are refused. ``restore()`` listens again on the same port.

``hang()`` is what a frozen server (or a network that drops everything) looks
like: connections stay open and new ones are accepted, but nothing more is
forwarded either way; ``resume()`` forwards what waited, as if nothing happened.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = listen_port
        # Chunks the clients sent: a driver that waits for each answer (libpq)
        # sends one per round trip, so this counts round trips.
        self.client_sends = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._listen()

    # -- control -----------------------------------------------------------
    @property
    def up(self) -> bool:
        return self._listener is not None

    def cut(self) -> None:
        """Refuse new connections and drop every open one, both ways."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _close(listener)
        for sock in open_sockets:
            _close(sock)

    def restore(self) -> None:
        if not self.up:
            self._listen()

    def hang(self) -> None:
        """Stop forwarding, both ways, on every connection, old and new."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self.cut()

    # -- plumbing ----------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            self._flowing.wait()  # a hung server answers no new connection either
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
            for src, dst, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                if counted:
                    with self._lock:
                        self.client_sends += 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port)
    try:
        yield proxy
    finally:
        proxy.close()
