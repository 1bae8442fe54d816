"""The local wake channel (``stepline.storage.wake``): processes sharing a SQLite file wake each other through Unix
datagram sockets beside it, without polling."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepline.storage.wake import OVERFLOW, WakeChannel, wake_directory


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def channel(db: Path) -> Iterator[WakeChannel]:
    c = WakeChannel(db)
    yield c
    c.close()


def notify_from_another_process(db: Path, message: bytes) -> int:
    code = f"from stepline.storage.wake import WakeChannel; c = WakeChannel({str(db)!r}); print(c.notify({message!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout)


def test_a_message_from_another_process_reaches_the_listener(db: Path, channel: WakeChannel) -> None:
    got: list[bytes] = []
    arrived = threading.Event()

    def note(message: bytes) -> None:
        got.append(message)
        arrived.set()

    assert channel.listen(note)
    assert sorted(os.listdir(db.with_name("app.db.wake"))) == [n for n in os.listdir(channel.directory)]
    assert notify_from_another_process(db, b"w42") == 1
    assert arrived.wait(10)
    assert got == [b"w42"]


def test_listeners_of_this_process_get_the_message_before_notify_returns(db: Path, channel: WakeChannel) -> None:
    other = WakeChannel(db)  # e.g. a second store on the same file in this process
    try:
        got: list[bytes] = []
        channel.listen(got.append)
        assert other.notify(b"r") == 0  # no other process listens
        assert got == [b"r"]
    finally:
        other.close()


async def test_wait_returns_at_a_message_or_at_its_timeout(db: Path, channel: WakeChannel) -> None:
    started = time.monotonic()
    assert await channel.wait(0.05) is False
    assert time.monotonic() - started >= 0.05
    waiter = asyncio.create_task(channel.wait(30))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.to_thread(notify_from_another_process, db, b"x")
    assert await waiter is True
    assert time.monotonic() - started < 10


def test_the_socket_of_a_dead_process_is_removed_and_a_closed_channel_leaves_none(db: Path) -> None:
    directory = wake_directory(db)
    directory.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(directory / "999999-deadbeef"))
    dead.close()  # its process died without removing its file
    listener = WakeChannel(db)
    listener.listen(lambda m: None)
    assert len(os.listdir(directory)) == 2
    assert notify_from_another_process(db, b"w") == 1  # the live listener, not the dead one
    assert os.listdir(directory) == [n for n in os.listdir(directory) if not n.startswith("999999-")]
    listener.close()
    assert os.listdir(directory) == []


def test_a_listener_that_fell_behind_is_told_to_look_again(db: Path, channel: WakeChannel) -> None:
    """Past the kernel's queue limit messages are dropped without blocking the sender; the receiver then gets
    OVERFLOW after the burst it read, so it never relies on a message it may have missed."""
    release = threading.Event()
    got: list[bytes] = []
    done = threading.Event()

    def slow(message: bytes) -> None:
        release.wait(10)
        got.append(message)
        if message == OVERFLOW:
            done.set()

    channel.listen(slow)
    [name] = os.listdir(channel.directory)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # as another process would send
    sender.setblocking(False)
    sent = 0
    with sender:
        for i in range(40):
            try:
                sender.sendto(b"w%d" % i, str(channel.directory / name))
                sent += 1
            except BlockingIOError:
                pass
    assert sent < 40  # the queue filled up and the sender was not blocked
    release.set()
    assert done.wait(10)
    assert got[0] == b"w0" and OVERFLOW in got


def test_a_database_path_too_long_for_a_socket_address_uses_a_short_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / "app.db"
    directory = wake_directory(deep)
    assert directory != deep.with_name("app.db.wake") and len(str(directory)) < 80
    assert wake_directory(deep) == directory  # every process finds the same one
    deep.parent.mkdir()
    c = WakeChannel(deep)
    try:
        got: list[bytes] = []
        assert c.listen(got.append)
        c.notify(b"w")
        assert got == [b"w"]
    finally:
        c.close()


def test_messages_are_one_to_500_bytes(channel: WakeChannel) -> None:
    with pytest.raises(ValueError, match="1 to 500 bytes"):
        channel.notify(b"")
    with pytest.raises(ValueError, match="1 to 500 bytes"):
        channel.notify(b"x" * 501)


def test_a_wake_directory_another_user_could_write_into_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long database path puts the sockets under the shared temporary directory, where anyone can create
    ``stepline-wake-<uid>`` first (then unlink our sockets, or plant symlinks that our notifies follow): such a
    directory is not used (the store polls instead). One of ours left open by a permissive umask is closed."""
    import tempfile

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    deep = tmp_path / ("d" * 120) / "app.db"
    squatted = wake_directory(deep).parent
    squatted.mkdir(mode=0o777)
    os.chmod(squatted, 0o777)
    c = WakeChannel(deep)
    try:
        if os.getuid() == 0:  # chown needs root: the directory is then another user's
            os.chown(squatted, 65534, 65534)
            assert not c.listen(lambda _: None)
            os.chown(squatted, 0, 0)
        c.listen(lambda _: None)  # (this test's socket path is too long to bind: polling either way)
        assert os.stat(squatted).st_mode & 0o777 == 0o700  # ours: made private
    finally:
        c.close()
    beside = tmp_path / "b.db"
    beside.with_name("b.db.wake").mkdir(mode=0o777)
    os.chmod(beside.with_name("b.db.wake"), 0o777)
    c = WakeChannel(beside)
    try:
        assert c.listen(lambda _: None)
        assert os.stat(beside.with_name("b.db.wake")).st_mode & 0o777 == 0o775
    finally:
        c.close()


def test_notify_sends_to_sockets_only_not_through_symlinks(db: Path, channel: WakeChannel, tmp_path: Path) -> None:
    assert channel.listen(lambda _: None)
    elsewhere = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    elsewhere.bind(str(tmp_path / "elsewhere.sock"))
    elsewhere.setblocking(False)
    try:
        os.symlink(tmp_path / "elsewhere.sock", channel.directory / "1-planted")
        time.sleep(0.15)  # past the listing's settle time
        assert notify_from_another_process(db, b"w1") == 1  # our socket, not the symlink's target
        with pytest.raises(BlockingIOError):
            elsewhere.recv(512)
    finally:
        elsewhere.close()


def test_a_database_in_a_folder_of_the_temp_dir_keeps_its_wake_directory_shareable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only wake_directory's own per-user folder in the temporary directory is made private: a database kept in
    ``/tmp/app/`` has its ``app.db.wake`` beside it as usual (other users sharing the file may listen too)."""
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))  # socket paths must stay short
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    folder = short / "app"
    folder.mkdir()
    c = WakeChannel(folder / "app.db")
    try:
        assert c.listen(lambda _: None)
        assert os.stat(folder / "app.db.wake").st_mode & 0o777 == 0o777 & ~_umask()
    finally:
        c.close()
        shutil.rmtree(short)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
