"""The local wake channel: the processes that share one SQLite file wake each other without polling it.

Every process using the database listens on a Unix datagram socket in a directory beside it,
``<db>.wake/<pid>-<random>`` (or, when that path is too long for a socket address, a directory named by a hash of
the database's real path under the system's temporary directory). ``notify(message)`` sends the message (a few
bytes) to every socket in that directory, without blocking, and hands it to this process's own listeners at once;
a socket whose process is gone refuses it and is removed. Each process has one socket and one receiving thread per
database, shared by every ``WakeChannel`` of that database in the process; the thread sleeps in ``recv`` (no CPU
while nothing happens).

Delivery is best effort, and listeners must treat a message as a hint to look at the database, never as the data
itself: a receiver whose queue is full (more than the kernel's ``net.unix.max_dgram_qlen`` messages, 10 by
default, not yet read) drops what comes next; the receiving thread then delivers ``OVERFLOW`` after what it read,
so a listener that keeps state from messages (a due time) reads the database again. A process that can use no
socket (a read-only directory) gets False from ``listen`` and falls back to polling.

Use::

    channel = WakeChannel(db_path)
    channel.listen(callback)        # callback(message: bytes) from the channel's thread (or the notifier's)
    channel.notify(b"w")            # after the commit that the listeners should notice
    await channel.wait(timeout=1.0)  # True when a message arrived, False at the timeout
    channel.close()                 # stops this handle's listeners; the socket goes with the last handle

Messages the store sends (``SQLiteStore``): ``b"w"`` followed by a due time in unix ms (work is due then; none:
anything may be due), and ``b"r"`` (realtime messages were stored). Other users pick their own first byte.
Processes started with ``fork`` after a channel was opened must not use the parent's handles: open new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("stepline.wake")

Listener = Callable[[bytes], None]
OVERFLOW = b""  # delivered after a burst that may have lost messages: look at the database again
_MAX_PATH = 100  # a socket address holds at most 107 bytes on Linux (103 on macOS); leave room for the name
_BURST = 8  # messages read at once that suggest the queue was full (the kernel's default limit is 10)
_SETTLED_NS = 100_000_000  # a directory listing is reused only if the directory was last changed this long before it


def wake_directory(db_path: str | os.PathLike[str]) -> Path:
    """Where the sockets of the processes using ``db_path`` live: ``<db>.wake`` beside it when a socket path there
    fits an address, else a directory named by a hash of the database's real path in the temporary directory."""
    real = Path(os.path.realpath(db_path))
    beside = real.with_name(real.name + ".wake")
    if len(os.fsencode(beside)) + 24 <= _MAX_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"stepline-wake-{os.getuid()}" / digest


def _safe_directory(directory: Path) -> None:
    """Create ``directory`` (and the per-user one above it in the temporary directory) if missing, and refuse
    (OSError) one that another user could write into: in a shared temporary directory anyone can create
    ``stepline-wake-<uid>`` first, then unlink or replace the sockets in it or plant symlinks to other sockets."""
    shared = Path(tempfile.gettempdir())
    fallback = directory.parent.parent == shared and directory.parent.name == f"stepline-wake-{os.getuid()}"
    private = directory.parent if fallback else None  # wake_directory's own, not a database's folder in /tmp
    for path in (private, directory):
        if path is None:
            continue
        unsafe = 0o077 if path is private else 0o002
        with contextlib.suppress(FileExistsError):  # whatever the umask (a container's 000), never world-writable
            path.mkdir(mode=0o777 & ~unsafe, parents=path is directory and private is None)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise OSError(errno.ENOTDIR, f"{path} is not a directory (a symlink?)")
        if info.st_mode & unsafe and info.st_uid == os.getuid():
            os.chmod(path, stat.S_IMODE(info.st_mode) & ~unsafe)  # ours, made under a permissive umask: close it
        elif info.st_uid != os.getuid() and (path is private or info.st_mode & unsafe):
            raise OSError(errno.EPERM, f"{path} belongs to another user (uid {info.st_uid}) who can write into it")


class _Endpoint:
    """This process's socket for one database, its receiving thread, and the listeners of all its handles."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.listeners: list[Listener] = []
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()  # senders (the writer threads of this process's stores) one at a time
        self.handles = 0
        self.sock: socket.socket | None = None
        self.name = ""
        self.thread: threading.Thread | None = None
        self._out: socket.socket | None = None
        self._peers: list[str] = []
        self._peers_mtime = -1
        self._peers_valid = False
        self._pid = os.getpid()

    # --- receiving ---
    def bind(self) -> bool:
        """Bind this process's socket (once); False if it cannot be done here."""
        if self.sock is not None:
            return True
        try:
            _safe_directory(self.directory)
            name = f"{os.getpid()}-{secrets.token_hex(4)}"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(str(self.directory / name))
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            log.info("no wake channel in %s (%s): polling instead", self.directory, exc)
            return False
        self.sock, self.name = sock, name
        self.thread = threading.Thread(target=self._receive, args=(sock,), name="stepline-wake", daemon=True)
        self.thread.start()
        return True

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                first = sock.recv(512)
            except OSError:
                return  # closed
            if not first:
                if self.sock is not sock:
                    return  # shut down by unbind
                continue
            got = [first]
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while len(got) < 64:
                    got.append(sock.recv(512, socket.MSG_DONTWAIT))
            if len(got) >= _BURST:
                got.append(OVERFLOW)
            seen: set[bytes] = set()
            for message in got:
                if message not in seen:
                    seen.add(message)
                    self.deliver(message)

    def deliver(self, message: bytes) -> None:
        for listener in list(self.listeners):
            try:
                listener(message)
            except Exception:
                log.exception("a wake listener failed")

    def unbind(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        path = str(self.directory / self.name)
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns b""
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=1.0)
        self.thread = None
        sock.close()

    # --- sending ---
    def _listing(self) -> list[str]:
        # Listing the directory on every commit would cost a few syscalls each; it is reused while the directory's
        # mtime stays the same, once that mtime is old enough that a socket bound in the same clock tick (file times
        # come from a coarse clock) cannot have gone unnoticed.
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            return []
        if self._peers_valid and mtime == self._peers_mtime:
            return self._peers
        prefix = f"{self._pid}-"
        try:  # sockets only: sendto follows a symlink, wherever it points
            with os.scandir(self.directory) as entries:
                names = [e.name for e in entries if not e.name.startswith(prefix)
                         and stat.S_ISSOCK(e.stat(follow_symlinks=False).st_mode)]  # fmt: skip
        except FileNotFoundError:
            return []
        self._peers, self._peers_mtime = names, mtime
        self._peers_valid = time.time_ns() - mtime > _SETTLED_NS
        return names

    def send(self, message: bytes) -> int:
        """Send ``message`` to the other processes' sockets; how many took it."""
        if self._out is None:
            self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._out.setblocking(False)
        sent = 0
        for name in self._listing():
            path = str(self.directory / name)
            try:
                self._out.sendto(message, path)
                sent += 1
            except (BlockingIOError, InterruptedError):
                pass  # its queue is full: it will read the database anyway (see OVERFLOW)
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its process is gone
                self._peers_valid = False
            except FileNotFoundError:
                self._peers_valid = False
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.ENOTSOCK, errno.EPROTOTYPE):
                    raise
        return sent


_endpoints: dict[Path, _Endpoint] = {}
_endpoints_lock = threading.Lock()


class WakeChannel:
    """One handle on the wake channel of the database at ``db_path`` (see the module doc)."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.directory = wake_directory(db_path)
        with _endpoints_lock:
            endpoint = _endpoints.get(self.directory)
            if endpoint is None or endpoint._pid != os.getpid():
                endpoint = _endpoints[self.directory] = _Endpoint(self.directory)
            endpoint.handles += 1
        self._endpoint = endpoint
        self._listeners: list[Listener] = []
        self._closed = False

    def listen(self, listener: Listener) -> bool:
        """Call ``listener(message)`` for every message sent on this channel from now on, by any process (this
        one's included), from the channel's thread or the notifying one. False if this process cannot listen
        here (then it is not called for other processes' messages)."""
        endpoint = self._endpoint
        with endpoint.lock:
            if self._closed:
                raise RuntimeError("the wake channel is closed")
            bound = endpoint.bind()
            self._listeners.append(listener)
            endpoint.listeners.append(listener)
        return bound

    def unlisten(self, listener: Listener) -> None:
        endpoint = self._endpoint
        with endpoint.lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
                endpoint.listeners.remove(listener)

    def notify(self, message: bytes = b"w") -> int:
        """Send ``message`` (1 to 500 bytes) to every process listening on this database, without blocking, and
        to this process's listeners (called before this returns). Returns how many other processes got it."""
        if not 0 < len(message) <= 500:
            raise ValueError("a wake message holds 1 to 500 bytes")
        endpoint = self._endpoint
        with endpoint.send_lock:
            try:
                sent = endpoint.send(message)
            except OSError as exc:
                log.warning("wake channel %s: %s", self.directory, exc)
                sent = 0
        endpoint.deliver(message)
        return sent

    async def wait(self, timeout: float | None = None) -> bool:
        """Until the next message on this channel (True) or ``timeout`` seconds (False)."""
        loop = asyncio.get_running_loop()
        got = asyncio.Event()

        def on_message(_: bytes) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(got.set)

        self.listen(on_message)
        try:
            await asyncio.wait_for(got.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self.unlisten(on_message)

    def close(self) -> None:
        """Remove this handle's listeners; the last handle of the process closes its socket."""
        endpoint = self._endpoint
        with endpoint.lock:
            if self._closed:
                return
            self._closed = True
            for listener in self._listeners:
                endpoint.listeners.remove(listener)
            self._listeners.clear()
            endpoint.handles -= 1
            last = endpoint.handles == 0
        if last:
            with _endpoints_lock:
                if _endpoints.get(self.directory) is endpoint and endpoint.handles == 0:
                    del _endpoints[self.directory]
            endpoint.unbind()
            if endpoint._out is not None:
                endpoint._out.close()
