"""An advisory lock on an output directory: one writing job per directory at a time.

Every command that writes a directory (`ddtk distill`, `ddtk buffer`, `ddtk relabel`) holds `D/.dd.lock` for the life
of the job, so a second job started on the same `--out` is refused (with the holder's pid, host, start time and
command) instead of appending to the same metrics.jsonl and racing on the same checkpoint.

How: the lock file is opened and `flock(LOCK_EX | LOCK_NB)`-ed, and the holder writes its details into it as
JSON. The kernel drops an flock when its process dies, however it dies (SIGKILL, OOM), so a lock file left by a
killed job is simply taken over by the next one; nothing else in D is touched, so its checkpoint resumes. A clean
exit deletes the lock file (and the directory, if the lock created it and nothing was written). Deleting is safe
because a taker checks, after its flock succeeds, that the file it locked is still the one at `D/.dd.lock`.

Filesystems without flock (some network or FUSE mounts, where flock fails with ENOLCK or EOPNOTSUPP) fall back to
an exclusive-create lock: whoever creates `D/.dd.lock` (O_CREAT | O_EXCL) holds it. A file left behind there is
taken over only when it names this host and a process that is no longer running; one from another host is
refused with the advice to delete it once that job is gone. That takeover cannot be fully atomic: three jobs
started on one directory in the same instant after a crash could, rarely, end with two holders.

Under torchrun only rank 0 takes the lock; the other ranks learn from rank 0 whether it succeeded before any rank
goes on to write, and rank 0 keeps it until every rank has left the block.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

LOCK_NAME = ".dd.lock"
# errors of flock() that mean "this filesystem cannot lock", not "someone holds it"
NO_FLOCK_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
_ATTEMPTS = 20  # tries to take the lock while other processes create, release or break it under our feet
_DETAIL_WAIT_S = 1.0  # a holder writes its details right after it locks: how long a refused job waits to read them
_POLL_S = 0.02  # how often a lock that waits (wait_s > 0) tries again while another process holds it


class OutputLocked(RuntimeError):
    """Another live process holds the output directory's lock (the message names it)."""


def command_line() -> str:
    """This process's command line as a person would type it (`python -m PACKAGE.MODULE ...` for a module of ours
    run with -m, or `ddtk ...` for the script)."""
    argv = list(sys.argv) or ["python"]
    module = _package_module(argv[0])
    if module:
        argv = ["python", "-m", module, *argv[1:]]
    else:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def _package_module(path: str) -> Optional[str]:
    """The dotted name of the module of this package at `path` (what `python -m` ran), or None for another file."""
    package = Path(__file__).resolve().parent
    try:
        rel = Path(path).resolve().relative_to(package.parent)
    except (ValueError, OSError):
        return None
    if rel.suffix != ".py" or rel.parts[0] != package.name:
        return None
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__main__" else parts)


def holder_details(command: Optional[str] = None, mode: str = "flock") -> dict:
    """What a holder writes into the lock file so that a refused job can say who is writing the directory."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command or command_line(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "lock": mode}


def read_holder(path: Path, wait_s: float = _DETAIL_WAIT_S) -> Optional[dict]:
    """The holder's details from a lock file, waiting up to `wait_s` for a holder that has just locked it to write
    them; None when the file is gone or still holds no readable details."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = json.loads(Path(path).read_text())
            if isinstance(info, dict) and "pid" in info:
                return info
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def refusal(directory: Path, holder: Optional[dict], extra: str = "") -> str:
    """The message a refused writer gets: who holds the directory, and what to do."""
    if holder is None:
        who = f"another process (its lock file '{Path(directory) / LOCK_NAME}' does not name it yet)"
    else:
        who = (f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started', '?')}, "
               f"command {holder.get('command', '?')})")
    return f"'{directory}' is being written by {who}; wait for it or use another --out{extra}"


def pid_alive(pid: int) -> bool:
    """Is process `pid` running on this host? A zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _same_file(fd: int, path: Path) -> bool:
    """Is the open file `fd` still the file at `path` (not deleted or replaced since it was opened)?"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _open_lock_file(path: Path) -> tuple[Optional[int], bool]:
    """(fd, created): opens the lock file, creating it when absent; (None, False) when it vanished meanwhile."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        pass
    try:
        return os.open(path, os.O_RDWR), False
    except FileNotFoundError:
        return None, False


class OutputLock:
    """The lock on one output directory, held by this process between acquire() and release().

    `name` picks another lock file in the directory (a lock on one file of it, e.g. `ddtk reproduce`'s state.json
    read-modify-write); `wait_s` > 0 waits up to that long for a live holder to release it before refusing."""

    def __init__(self, directory: str | os.PathLike, command: Optional[str] = None, name: str = LOCK_NAME,
                 wait_s: float = 0.0):
        self.directory = Path(directory)
        self.path = self.directory / name
        self.wait_s = wait_s
        self.command = command
        self.fd: Optional[int] = None
        self.mode: Optional[str] = None  # "flock", or "exclusive" on filesystems without flock
        self.created_directory = False

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> "OutputLock":
        """Takes the lock (creating the directory if needed) or raises OutputLocked naming the holder (after waiting
        up to wait_s for it to let go)."""
        if self.held:
            raise RuntimeError(f"the lock on '{self.directory}' is already held by this object")
        deadline = time.monotonic() + self.wait_s
        try:
            self.created_directory = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            attempts = 0
            while attempts < _ATTEMPTS:
                try:
                    if self._try_once():
                        return self
                except OutputLocked:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(_POLL_S)
                    continue
                attempts += 1
        except OSError as e:  # not a directory, not writable, disk full ...
            raise RuntimeError(f"cannot lock the output directory '{self.directory}' ({e.strerror or e}); make it a "
                               "writable directory or use another --out") from None
        raise RuntimeError(f"could not take the lock '{self.path}': other processes kept creating and removing it; "
                           "check which dd jobs write to this directory")

    def _try_once(self) -> bool:
        """One attempt: True when the lock is now ours, False to try again, OutputLocked when someone holds it."""
        fd, created = _open_lock_file(self.path)
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = _same_file(fd, self.path)
            os.close(fd)
            if not current:  # the holder was releasing it: try again
                return False
            raise OutputLocked(refusal(self.directory, read_holder(self.path))) from None
        except OSError as e:
            if e.errno not in NO_FLOCK_ERRNOS:
                os.close(fd)
                raise
            return self._try_exclusive(fd, created)
        if not _same_file(fd, self.path):  # released (and deleted) by its holder between our open and flock
            os.close(fd)
            return False
        self._hold(fd, "flock")
        return True

    def _try_exclusive(self, fd: int, created: bool) -> bool:
        """The fallback without flock: the file's creator holds it; a file from a dead process on this host is
        broken (then False: try again); any other existing file raises OutputLocked."""
        if created:
            self._hold(fd, "exclusive")
            return True
        os.close(fd)
        holder = read_holder(self.path)
        if holder is None:
            if not self.path.exists():
                return False
            raise OutputLocked(refusal(self.directory, None, f" (this filesystem has no flock, so dd cannot tell whether "
                                                             f"its holder is alive; delete '{self.path}' if no dd job "
                                                             "writes there)"))
        if holder.get("host") != socket.gethostname():
            raise OutputLocked(refusal(self.directory, holder, f" (this filesystem has no flock, so dd cannot tell "
                                                               f"whether a process on another host is alive; delete "
                                                               f"'{self.path}' once that job is gone)"))
        if pid_alive(int(holder["pid"])):
            raise OutputLocked(refusal(self.directory, holder))
        self._break_stale(holder)
        return False

    def _break_stale(self, holder: dict) -> None:
        """Removes a lock file left by a dead process: moves it aside first, so that a file some other process has
        just created in its place is put back rather than deleted."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if read_holder(aside, wait_s=0) != holder:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
        finally:
            aside.unlink(missing_ok=True)

    def _hold(self, fd: int, mode: str) -> None:
        """Keeps `fd` open (the lock lives as long as it does) and writes this process's details into the file."""
        self.fd, self.mode = fd, mode
        data = json.dumps(holder_details(self.command, mode), sort_keys=True).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        """Deletes the lock file (if it is still ours) and closes it, which drops the flock; removes the directory
        when the lock created it and nothing else was written there."""
        if not self.held:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd, self.mode = None, None
        if self.created_directory:
            with contextlib.suppress(OSError):  # not empty: the job wrote something, keep it
                self.directory.rmdir()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, group=None, command: Optional[str] = None) -> Iterator[Optional[OutputLock]]:
    """Holds `directory`'s lock for the block (see the module docstring); yields the OutputLock (None on ranks > 0).

    `group` is a dd.distributed.ProcessGroup (None: this process alone). Its rank 0 takes the lock and tells the
    others the outcome with one collective, so no rank writes before the lock is held and none is left waiting
    when rank 0 is refused; on the way out rank 0 waits for every rank before releasing.
    """
    rank0 = group is None or group.rank == 0
    lock = OutputLock(directory, command) if rank0 else None
    error: Optional[BaseException] = None
    if lock is not None:
        try:
            lock.acquire()
            from dd.utils import remove_stale_temps

            remove_stale_temps(directory)  # a killed writer's temporary files (held: nobody else writes now)
        except Exception as e:  # every failure must reach the other ranks, not just a refusal
            error = e
    if group is not None and group.world > 1:
        import torch

        ok = group.sum(torch.tensor([1.0 if rank0 and error is None else 0.0]))
        if error is None and float(ok[0]) < 1:
            raise OutputLocked(f"rank 0 could not lock '{directory}' (its error says why); nothing was written")
    if error is not None:
        raise error
    try:
        yield lock
        if group is not None:
            group.barrier()  # every rank is done writing before rank 0 lets another job in
    finally:
        if lock is not None:
            lock.release()
