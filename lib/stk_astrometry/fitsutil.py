"""FITS conventions shared by every tool: CIAO HISTORY, long keywords, atomic writes.

Owns how outputs are stamped (CREATOR, DATE, CIAO-style HISTORY records with
``ASCnnnnn`` counters and HISTNUM, CHECKSUM/DATASUM), how keywords longer than
eight characters are read and written (the CXC ``DTYPEn``/``DVALn`` convention;
HIERARCH is read too), and how a file appears atomically (temporary file in the
destination folder, fsync, rename).  It does not decide what goes into a file.

astropy is imported inside the functions that need it, so importing this module
costs nothing at tool start-up.
"""

import contextlib
import contextvars
import errno
import fcntl
import logging
import os
import re
import stat
import time
from pathlib import Path, PurePath

from . import __version__
from .errors import InputError, OutputError, ProductError

logger = logging.getLogger(__name__)

__all__ = [
    "check_clobber",
    "write_fits",
    "stamp_header",
    "atomic_path",
    "replace_durably",
    "fsync_directory",
    "deferred_durability",
    "commit_group",
    "immediate_durability",
    "make_durable",
    "PendingOutputs",
    "same_file",
    "FileIdentity",
    "locked",
    "LockTimeout",
    "make_temp",
    "remove_orphan_temps",
    "fitsio_on_temp",
    "add_history",
    "get_keyword",
    "set_keyword",
    "delete_keyword",
    "history_records",
    "utc_now",
]

#: Width of the payload of one CIAO HISTORY record (cols 17-72 of the card).
HISTORY_PAYLOAD = 56
_ASC_RE = re.compile(r"ASC(\d{5})\s*$")
_DTYPE_RE = re.compile(r"^DTYPE(\d+)$")


def utc_now():
    """The current UTC time as CIAO writes it, ``YYYY-MM-DDThh:mm:ss``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())   # (issue 11: datetime's ~2x)


# --------------------------------------------------------------------------- clobber / atomic


def check_clobber(path, clobber, *, param="outfile"):
    """Refuse an existing output before any work is done.

    Parameters
    ----------
    path : str or Path or None
        The output file; blank/None means "no output" and passes.
    clobber : bool
        The tool's ``clobber`` parameter.
    param : str
        Parameter name, for the message.

    Raises
    ------
    OutputError
        If ``path`` exists and clobber is false, if it is a directory, or if its
        folder does not exist.
    """
    if path is None or str(path).strip() == "":
        return
    name, parent = _name_and_folder(path)
    # one stat for the output (issue 11: runs twice per output file; pathlib's is_dir, exists
    # and the folder's is_dir were three): an output that is there has its folder there
    st = _stat_or_none(name)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{param}={path} is a directory, not a file")
    if st is not None and not clobber:
        raise OutputError(f"Clobber set to no, and output file {path} exists ({param}).")
    if st is None:
        folder = _stat_or_none(parent)
        if folder is None or not stat.S_ISDIR(folder.st_mode):
            raise OutputError(f"{param}={path}: folder {Path(path).parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{param}={path}: folder {Path(path).parent} is not writable")


def _name_and_folder(path):
    """``Path(path)`` and its parent, or names of the same files as text (issue 11: pathlib's
    objects cost more than the stat and the access check, ~6 us a call).

    Text: a pathlib path's own (normalised already: its folder is its parent's text), or a
    str whose last part is a name -- it names the file ``Path`` names (pathlib drops ``.``
    parts and doubled slashes, which the system resolves as it would without them); the
    folder as ``os.path.dirname`` gives it (``.`` for none).  A str ending in ``/``, ``/.``
    or ``/..`` (pathlib drops a trailing slash or dot) and any other object: pathlib's."""
    if isinstance(path, PurePath):
        text = str(path)
    elif type(path) is str and path.rpartition("/")[2] not in ("", ".", ".."):
        text = path
    else:
        p = Path(path)
        return p, p.parent
    return text, os.path.dirname(text) or "."


#: The errors for which pathlib's exists() and is_dir() say False rather than raise.
_ABSENT = frozenset((errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP))


def _stat_or_none(path):
    """``os.stat(path)``, or None where pathlib's ``exists()`` would say False (the other
    errors, such as a folder it may not search, are raised as pathlib raises them)."""
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno not in _ABSENT:
            raise
        return None
    except ValueError:          # a NUL in the name
        return None


def same_file(a, b):
    """True if paths ``a`` and ``b`` name the same file.

    Both existing: the same device and inode (hard links too; one real path is one file).
    Otherwise the same real path (relative paths and symbolic links resolved; a link loop
    does not raise).  Used to refuse an output that is one of a tool's inputs.  By stat
    first (issue 11: a real path is an lstat of every folder on the way).  A name compared
    with many: :class:`FileIdentity`.
    """
    return FileIdentity(b).same_as(a)


class FileIdentity:
    """A file's name with what :func:`same_file` compares of it -- its status, and its real
    path once needed -- taken once, for a name compared with many (an output with each of a
    tool's inputs: ``api``)."""

    def __init__(self, path):
        self.path = path
        try:
            self._stat = os.stat(path)
        except OSError:     # it does not exist (yet), or cannot be looked at
            self._stat = None
        self._real = None

    def same_as(self, other) -> bool:
        """``same_file(other, self.path)``."""
        if self._stat is not None:
            try:
                return os.path.samestat(os.stat(other), self._stat)
            except OSError:
                pass
        if self._real is None:
            self._real = os.path.realpath(self.path)
        return os.path.realpath(other) == self._real


# The temporaries of an open :func:`commit_group` block, (fd, tmp, dest) each (None: no block).
_GROUP = contextvars.ContextVar("stk_commit_group", default=None)


@contextlib.contextmanager
def commit_group():
    """Several outputs of one step, committed together: durable, with two journal commits.

    Inside the block :func:`atomic_path` writes each output in full to its temporary file
    (locked, in the destination folder) and holds it; when the block ends without an error
    the temporaries are made durable together (one fsync for a single file, one ``syncfs``
    per file system for several -- the data is on disk before any rename), renamed into
    place, and each folder is fsynced once.  So every output is still wholly old or wholly
    new after a kill or a system crash, the outputs appear together at the block's end, and
    ``stk_xfm``'s three outputs cost two journal commits instead of four.  When the block
    raises, no output is renamed and the temporaries are removed.

    Nested blocks join the outermost; inside :func:`deferred_durability` the block does
    nothing (that block renames at once and syncs later).

    Raises
    ------
    OutputError
        Syncing or renaming failed (the outputs not yet renamed are left as they were).
    """
    if _GROUP.get() is not None or _DEFERRED.get() is not None:
        yield
        return
    entries = []
    token = _GROUP.set(entries)
    ok = False
    try:
        yield
        ok = True
    finally:
        _GROUP.reset(token)
        try:
            if ok and entries:
                _commit(entries)
        finally:
            for fd, tmp, _ in entries:
                with contextlib.suppress(OSError):
                    tmp.unlink()            # left only when the block raised or the commit failed
                os.close(fd)


def _commit(entries):
    dest = entries[0][2]
    try:
        if len(entries) == 1:
            os.fsync(entries[0][0])
        else:
            _sync_data([fd for fd, _, _ in entries])
        for _, tmp, dest in entries:
            _replace(tmp, dest, sync=False)
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    for folder in dict.fromkeys(str(d.parent if str(d.parent) else ".") for _, _, d in entries):
        fsync_directory(folder)


def _sync_data(fds):
    """Make the data of the open files ``fds`` durable: one syncfs per file system, or an
    fsync of each where syncfs is unavailable."""
    unsupported = _syncfs_per_device(fds)
    for fd in fds:
        if os.fstat(fd).st_dev in unsupported:
            os.fsync(fd)


def _syncfs_per_device(fds):
    """One :func:`_syncfs` per file system among the open ``fds``; returns the devices
    (``st_dev``) where syncfs is unavailable, whose files the caller must fsync one by one."""
    done, unsupported = set(), set()
    for fd in fds:
        dev = os.fstat(fd).st_dev
        if dev not in done and dev not in unsupported:
            (done if _syncfs(fd) else unsupported).add(dev)
    return unsupported


#: The open :class:`PendingOutputs` of a :func:`deferred_durability` block (None: none active).
_DEFERRED = contextvars.ContextVar("stk_deferred_outputs", default=None)


class PendingOutputs:
    """Outputs renamed into place (complete: atomic against a killed process) whose data and
    renames are not yet durable against a system crash.  Filled by :func:`atomic_path`
    inside a :func:`deferred_durability` block.

    Attributes
    ----------
    paths : list of str
        The files, in the order they were renamed into place (a path renamed twice is listed
        twice; :func:`make_durable` syncs it once).
    """

    def __init__(self):
        self.paths = []

    def sync(self):
        """Make every listed file durable (:func:`make_durable`) and empty the list."""
        make_durable(self.paths)
        self.paths.clear()


@contextlib.contextmanager
def deferred_durability(*, sync=True):
    """Group commit: the atomic writes of the block are made durable together, not one by one.

    Inside the block :func:`atomic_path` (so :func:`write_fits` and the table writers) still
    writes each output completely to a temporary file in its folder
    and renames it into place -- a process killed at any moment leaves each output wholly old
    or wholly new, never partial -- but it does not fsync the file or its folder; the file is
    listed in the yielded :class:`PendingOutputs` instead.  With ``sync=True`` the block's end
    (also when it raises) makes every listed file durable with one :func:`make_durable`:
    a system crash before that may lose the block's renames or leave a renamed file without
    its data, so nothing may depend on the block's outputs surviving a crash until the block
    has ended.  With ``sync=False`` that duty passes to the caller, who must call
    :func:`make_durable` on ``pending.paths`` (or ``pending.sync()``) BEFORE recording the
    outputs as finished anywhere (``stk_batch``'s driver does, once per database commit).

    Nested blocks join the outermost (a :func:`commit_group` inside does nothing).
    :func:`replace_durably` called directly (the journaled
    in-place editor of ``stk_update_wcs``) stays durable inside the block, and
    :func:`immediate_durability` suspends the block for a section that must be durable at once.
    """
    outer = _DEFERRED.get()
    if outer is not None:
        yield outer
        return
    pending = PendingOutputs()
    token = _DEFERRED.set(pending)
    try:
        yield pending
    finally:
        _DEFERRED.reset(token)
        if sync:
            pending.sync()


@contextlib.contextmanager
def immediate_durability():
    """Suspend any enclosing :func:`deferred_durability` block: writes in this block are
    durable when each returns, as outside any block (``update_products`` runs so)."""
    token = _DEFERRED.set(None)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


_LIBC = None


def _syncfs(fd):
    """syncfs(2) on the file system of ``fd``: True when done, False where unavailable.

    Raises OSError when the system reports a write-back error."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syncfs
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            _LIBC = (fn, ctypes)
        except (OSError, AttributeError, ImportError):
            _LIBC = False
    if _LIBC is False:
        return False
    fn, ctypes = _LIBC
    if fn(fd) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL):     # not supported here -- fall back
            return False
        raise OSError(err, os.strerror(err))
    return True


def make_durable(paths, *, folders=()):
    """Make files already renamed into place durable, with as few journal commits as possible.

    One ``syncfs(2)`` per file system holding them (it writes back the file system's dirty
    data and commits its journal once, however many files), then an fsync of each distinct
    folder (POSIX's guarantee for the renames; after the syncfs it has nothing left to write).
    Where syncfs is unavailable each file is fsynced.  The cost is one or two journal commits
    per call instead of two per file (issue 11: ~5 ms each on a loaded disk).

    Parameters
    ----------
    paths : iterable of path-like
        Files (a path listed more than once is synced once; a path no longer there is skipped:
        it was replaced or removed since, and whatever replaced it answers for itself).
    folders : iterable of path-like
        More folders to fsync besides the files' own (e.g. new intermediate folders).

    Raises
    ------
    OSError
        The system reported a write-back or sync error: the files may not be on disk, and
        whoever asked must not record them as finished.
    """
    files = list(dict.fromkeys(os.fspath(p) for p in paths))
    folders = list(dict.fromkeys([*(os.path.dirname(f) or "." for f in files),
                                  *(os.fspath(f) for f in folders)]))
    if not folders:
        return
    by_dev = {}
    for folder in folders:
        try:
            by_dev.setdefault(os.stat(folder).st_dev, folder)
        except FileNotFoundError:
            continue
    with contextlib.ExitStack() as opened:
        fds = []
        for folder in by_dev.values():
            fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
            opened.callback(os.close, fd)
            fds.append(fd)
        unsynced = _syncfs_per_device(fds)
    if unsynced:
        for f in files:
            try:
                fd = os.open(f, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if os.fstat(fd).st_dev in unsynced:
                    os.fsync(fd)
            finally:
                os.close(fd)
    for folder in folders:
        fsync_directory(folder)


def fsync_directory(path):
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LockTimeout(ProductError):
    """Another process held a file's lock longer than the lock timeout."""


#: Poll interval while waiting for a lock (flock has no timed wait).
_LOCK_POLL = 0.02


@contextlib.contextmanager
def locked(path, *, timeout, shared=False, what="file"):
    """Hold an OS advisory lock (``flock``) on ``path`` (a file or a folder) for a block.

    Exclusive by default (a writer); ``shared`` for a reader.  The lock is taken on
    the file the path names *when the lock is granted*: a writer that replaces the
    file by rename (temp + rename) leaves its waiters holding a lock on the old
    inode, so after each grant the path is checked to still name the locked inode,
    and the lock is taken again on the new one if not.  The kernel drops the lock
    when its holder dies (kill -9 included): no lock file, nothing to clean.

    Parameters
    ----------
    path : path
    timeout : float
        Seconds to wait for another holder (0: try once).
    shared : bool
    what : str
        How to name the path in the timeout message.

    Raises
    ------
    LockTimeout
        Still held by another process after ``timeout`` seconds.
    InputError
        The path disappeared while waiting.
    """
    deadline = time.monotonic() + max(0.0, float(timeout))
    op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise InputError(f"{path}: no such file (removed while waiting for its lock?)") \
                from exc
        except OSError as exc:
            raise InputError(f"cannot open {path} to lock it: {exc.strerror}") from exc
        try:
            while True:
                try:
                    fcntl.flock(fd, op)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"{path}: another process (a concurrent stk_update_wcs?) has held "
                            f"the lock on this {what} for more than lock_timeout="
                            f"{float(timeout):g} s; not processed - run again when it is done, "
                            "or raise lock_timeout") from None
                    time.sleep(_LOCK_POLL)
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)       # replaced (or removed) while we waited: lock what is there now
        if now is None:
            raise InputError(f"{path}: no such file (removed while waiting for its lock)")
    try:
        yield
    finally:
        os.close(fd)


def make_temp(dest):
    """A new temporary file next to ``dest``, locked by this process: ``(fd, path)``.

    Named ``.<name>.<8 random characters>.tmp`` in ``dest``'s folder (so the final
    rename is atomic), opened read-write, with an exclusive ``flock`` held on the
    open file for as long as ``fd`` is open.  :func:`remove_orphan_temps` removes
    only temporary files nobody holds: those of a process that died.
    """
    fd, tmp = _temp_file(str(Path(dest)))
    return fd, Path(tmp)


def _temp_file(dest):
    """:func:`make_temp` of the normalised path text ``dest`` (``str(Path(...))``), the
    temporary file's path as text (issue 11: pathlib's objects cost more than the syscalls)."""
    folder, name = os.path.split(dest)
    # tempfile.mkstemp's file (O_EXCL, mode 0600, a new name on a clash), its name from
    # os.urandom: mkstemp's name generator and path handling cost ~7 us a file (issue 11)
    for _ in range(_TEMP_TRIES):
        tmp = os.path.join(folder or ".", f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, f"no free temporary file name for {dest}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        # cannot happen for a file this process just created; keep going unlocked
        logger.debug("could not lock temporary file %s", tmp)
    return fd, tmp


#: How a temporary file is made (as tempfile.mkstemp makes it), and how many names to try.
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_TRIES = 100


#: Temporary files of the atomic writes of ``<name>``: ``.<name>.XXXXXXXX.tmp`` and the
#: journal's ``..<name>.stkjournal.XXXXXXXX.tmp``.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def temp_owner(filename):
    """The file a temporary file name belongs to (``.evt.fits.ab12cd34.tmp`` -> ``evt.fits``),
    or None when ``filename`` is not one of our temporary file names."""
    m = _TEMP_RE.match(filename)
    if not m:
        return None
    name = m.group("name")
    # the journal's own temporary file: ..<name>.stkjournal.XXXXXXXX.tmp
    if name.startswith(".") and name.endswith(".stkjournal"):
        name = name[1:-len(".stkjournal")]
    return name


def remove_orphan_temps(folder, name=None):
    """Remove the temporary files of ``name`` in ``folder`` left by a process that died.

    ``name`` None: every one of our temporary files in ``folder`` (a folder only this
    package writes, such as a campaign's).  A temporary file still locked
    (:func:`make_temp`) belongs to a live process and is left.  Returns the names removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        owner = temp_owner(e.name)
        if (owner is None or (name is not None and owner != name)
                or not e.is_file(follow_symlinks=False)):
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue          # held: a live writer's
            try:
                os.unlink(e.path)
                removed.append(e.name)
            except OSError:
                pass
        finally:
            os.close(fd)
    if removed:
        fsync_directory(folder)
    return removed


def replace_durably(tmp, dest):
    """fsync ``tmp`` and rename it onto ``dest`` (same folder), then fsync the folder.

    Always durable when it returns, also inside a :func:`deferred_durability` or
    :func:`commit_group` block (only :func:`atomic_path` takes part in those): the journaled
    editor's temporaries and journals rely on it.

    The new file keeps the permissions, owner and group of the file it
    replaces (a product on a shared archive stays as it was; a user who may
    not give the file away keeps at least its group where the system allows);
    a new file gets the usual 0666 & ~umask.
    """
    _replace(tmp, dest, sync=True)


def _replace(tmp, dest, *, sync, fd=None):
    """Rename ``tmp`` onto ``dest`` with the permissions and owner described above.  ``fd``:
    an open descriptor of ``tmp`` itself (:func:`write_atomically`'s), synced and given its
    mode through the descriptor rather than by path."""
    if sync:
        if fd is not None:
            os.fsync(fd)
        else:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
    try:
        old = os.stat(dest)
    except OSError:
        old = None
    if old is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    else:
        mode = old.st_mode & 0o7777
        target = tmp if fd is None else fd
        new = os.stat(target)
        if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
            try:
                os.chown(target, old.st_uid, old.st_gid)
            except OSError:  # not allowed to give the file away: keep the group if we may
                with contextlib.suppress(OSError):
                    os.chown(target, -1, old.st_gid)
    # chmod after chown: chown may clear set-id bits
    with contextlib.suppress(OSError):
        os.chmod(tmp if fd is None else fd, mode)
    os.replace(tmp, dest)
    if sync:
        fsync_directory(os.path.dirname(os.fspath(dest)) or ".")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file lives in the destination folder (so the final
    ``os.replace`` is an atomic rename on the same file system), is fsynced
    before the rename, and is removed if the block raises.  A reader therefore
    sees either the old file or the complete new one, never a partial file.
    Inside a :func:`deferred_durability` block the fsyncs are left to the block's
    group commit (the rename is still atomic); inside a :func:`commit_group` block the
    complete temporary file is handed to the block, which syncs and renames it at its end.
    """
    dest = Path(path)
    fd, tmp = make_temp(dest)       # the lock on fd marks the temp as a live writer's
    with _committing(fd, tmp, dest, own_fd=False):
        yield tmp


def write_atomically(path, data):
    """Write ``data`` as the file ``path``, with :func:`atomic_path`'s guarantees.

    ``data``: the bytes (a bytes-like object), or a list of bytes-like objects written one
    after the other (a FITS file's headers and data units, not joined first: issue 11).  The
    bytes go through the temporary file's own descriptor -- no second open of the file, and
    its sync and mode through the descriptor (issue 11: the per-stack writers' fixed cost).
    """
    # as make_temp and atomic_path take it: normalised (a pathlib path's text is already)
    dest = str(path) if isinstance(path, PurePath) else str(Path(path))
    fd, tmp = _temp_file(dest)
    with _committing(fd, tmp, dest, own_fd=True):
        views = [memoryview(part).cast("B") for part in
                 (data if isinstance(data, list) else [data])]
        while views:
            written = os.writev(fd, views[:_IOV_MAX])
            # drop what went out: the buffers written whole, then the start of the next
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if views:
                views[0] = views[0][written:]


#: Buffers per writev call (POSIX guarantees at least 16; Linux takes 1024).
_IOV_MAX = 16


@contextlib.contextmanager
def _committing(fd, tmp, dest, *, own_fd):
    """The end of an atomic write of the temporary file ``tmp`` (open as ``fd``) to ``dest``:
    renamed now (fsynced unless in a :func:`deferred_durability` block) or handed to the
    :func:`commit_group` block; removed if the block raises.  ``own_fd``: the bytes were
    written through ``fd`` (so it is ``tmp``'s descriptor, also for the sync and the mode);
    otherwise the caller wrote ``tmp`` by path and may have replaced the file."""
    handed_over = False
    try:
        yield
        deferred, group = _DEFERRED.get(), _GROUP.get()
        if deferred is not None:
            _replace(tmp, dest, sync=False, fd=fd if own_fd else None)
            deferred.paths.append(str(dest))   # made durable by the block's group commit
        elif group is not None:
            group.append((fd, Path(tmp), Path(dest)))  # synced and renamed when the block ends
            handed_over = True
        elif own_fd:
            _replace(tmp, dest, sync=True, fd=fd)
        else:
            replace_durably(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        if not handed_over:
            os.close(fd)


def fitsio_on_temp(tmp, header=None):
    """A :class:`fitsio.FITS` open for writing on :func:`atomic_path`'s temporary file ``tmp``,
    whose first HDU is an empty primary with the keywords ``header`` (fitsio's records).

    fitsio's ``clobber=True`` (cfitsio's ``!``) unlinks an existing file and creates a new one:
    on ``tmp`` that would drop :func:`make_temp`'s lock, and a :func:`remove_orphan_temps`
    could take the file for a dead writer's.  Here cfitsio makes the primary HDU in memory,
    its bytes go into the same file, and fitsio opens that file to append the rest.
    """
    import fitsio

    with fitsio.FITS("mem://", "rw") as mem:
        mem.write(None, header=header)
        image = mem.read_raw()
    with open(tmp, "r+b") as fh:       # the same inode: the lock stays
        fh.write(image)
    return fitsio.FITS(str(tmp), "rw")


def write_fits(hdul, path, params, *, clobber, shown_as=None):
    """Stamp every HDU of ``hdul`` and write it atomically to ``path``.

    Each HDU gets CREATOR, DATE, the CIAO HISTORY records of this run and
    HISTNUM (:func:`stamp_header`), then the file is written with
    CHECKSUM/DATASUM to a temporary file in the destination folder and renamed
    into place (:func:`atomic_path`).

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
    path : str or Path
    params : ParameterSet
        The tool's resolved parameters (tool name and values for HISTORY).
    clobber : bool
    shown_as : str or Path, optional
        The name to report (for a file written into a folder that is renamed
        into place afterwards); default ``path``.
    """
    check_clobber(path, clobber)
    when = utc_now()
    stacks = read_stacks(params.history_items())  # once per file, not per HDU
    for hdu in hdul:
        stamp_header(hdu.header, params, when=when, stacks=stacks)
    try:
        with atomic_path(path) as tmp:
            hdul.writeto(tmp, overwrite=True, checksum=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    logger.info("Wrote %s", path if shown_as is None else shown_as)


# --------------------------------------------------------------------------- HISTORY


def history_records(toolname, items, *, start=1, when=None, stacks=None):
    """Format CIAO HISTORY records for one tool run.  Pure.

    The layout is the one CIAO's data model writes (ciao-conventions §2.4):
    each record is the 72-character value of a HISTORY card, i.e. cols 9-80 of
    the card: a blank, the record type (``TOOL``, ``PARM``, ``CONT``), two
    blanks, ``:``, a 56-character payload and the counter ``ASCnnnnn``.  The
    TOOL payload is ``<tool>   <UTC time>``; one PARM per parameter
    ``name=value``; a payload longer than 56 characters continues on CONT
    records, split hard as CIAO does.  A parameter given as a CIAO stack
    (``@listfile``) is followed by one STCK record per element of the stack.

    Parameters
    ----------
    toolname : str
    items : iterable of (str, str)
        Parameter names and values as text, in .par order.
    start : int
        Counter of the first record (continues the HDU's existing HISTNUM).
    when : str, optional
        Time stamp; default now.
    stacks : dict, optional
        Parameter name -> the elements of its ``@listfile`` stack.

    Returns
    -------
    list of str
        The card values, each exactly 72 characters.
    """
    stacks = stacks or {}
    when = when or utc_now()
    records = []
    counter = start

    def add(kind, payload):
        nonlocal counter
        if len(payload) <= HISTORY_PAYLOAD and payload.isascii() and payload.isprintable():
            # one record, the loop's text by concatenation (issue 11: the usual case; an
            # f-string with format specifications costs ~2x)
            records.append(" " + kind.ljust(4) + "  :" + payload.ljust(HISTORY_PAYLOAD)
                           + "ASC%05d" % (counter % 100000))
            counter += 1
            return
        first = True
        while first or payload:
            chunk, payload = payload[:HISTORY_PAYLOAD], payload[HISTORY_PAYLOAD:]
            # FITS cards hold printable ASCII only.
            if not (chunk.isascii() and chunk.isprintable()):   # (fast path: the usual case)
                chunk = "".join(c if 32 <= ord(c) < 127 else "?" for c in chunk)
            tag = kind if first else "CONT"
            records.append(f" {tag:<4}  :{chunk:<{HISTORY_PAYLOAD}}ASC{counter % 100000:05d}")
            counter += 1
            first = False

    add("TOOL", f"{toolname}   {when}")
    for name, value in items:
        add("PARM", f"{name}={value}")
        for element in stacks.get(name, ()):
            add("STCK", element)
    return records


def read_stacks(items):
    """The elements of every ``@listfile`` value among ``items`` (CIAO stacks).

    One element per non-blank, non-comment line; an unreadable list is left
    out (the tool itself reports it).  ``@@file`` (a parameter file) is not a stack.
    """
    stacks = {}
    for name, value in items:
        text = str(value).strip()
        if text.startswith("@") and not text.startswith("@@") and len(text) > 1:
            try:
                with open(text[1:].strip(), encoding="utf-8", errors="replace") as fh:
                    lines = [ln.strip() for ln in fh]
            except OSError:
                continue
            stacks[name] = [ln for ln in lines if ln and not ln.startswith("#")]
    return stacks


def _last_history_number(header):
    last = 0
    if "HISTNUM" in header:
        try:
            last = int(header["HISTNUM"])
        except (TypeError, ValueError):
            last = 0
    for card in header.cards:
        if card.keyword == "HISTORY":
            m = _ASC_RE.search(str(card.value))
            if m:
                last = max(last, int(m.group(1)))
    return last


def add_history(header, toolname, items, *, when=None, stacks=None):
    """Append this run's CIAO HISTORY records to ``header`` and update HISTNUM.

    ``stacks`` (from :func:`read_stacks`) is read from the ``@listfile`` values
    when not given; callers stamping many HDUs pass it, so the lists are read once.
    """
    items = list(items)
    if stacks is None:
        stacks = read_stacks(items)
    start = _last_history_number(header) + 1
    records = history_records(toolname, items, start=start, when=when, stacks=stacks)
    for rec in records:
        header.add_history(rec)
    last = start + len(records) - 1
    if "HISTNUM" in header:
        header["HISTNUM"] = last
    else:
        first_hist = next(
            (i for i, c in enumerate(header.cards) if c.keyword == "HISTORY"), None
        )
        if first_hist is None:
            header.append(("HISTNUM", last, "Number of HISTORY records"))
        else:
            header.insert(first_hist, ("HISTNUM", last, "Number of HISTORY records"))


def stamp_header(header, params, *, when=None, stacks=None):
    """Set CREATOR, DATE and this run's HISTORY records on ``header``.

    ``params`` provides ``.tool`` and ``.history_items()``; ``stacks`` as for
    :func:`add_history`.
    """
    when = when or utc_now()
    header["CREATOR"] = (f"{params.tool} - stk_astrometry {__version__}", "tool that created this output")
    header["DATE"] = (when, "Date and time of file creation")
    add_history(header, params.tool, params.history_items(), when=when, stacks=stacks)


# --------------------------------------------------------------------------- long keywords


def _find_dtype(header, name):
    """Return n of the DTYPEn card whose value is ``name`` (case-insensitive), or None."""
    target = name.strip().upper()
    for card in header.cards:
        m = _DTYPE_RE.match(card.keyword)
        if m and str(card.value).strip().upper() == target:
            return int(m.group(1))
    return None


def get_keyword(header, name, default=None):
    """Read a keyword of any length.

    Names of up to eight characters are read directly.  Longer names are
    looked up as a CXC ``DTYPEn = 'NAME'`` / ``DVALn = value`` pair, then as a
    HIERARCH card.

    Returns
    -------
    The value, or ``default`` when the keyword is absent.
    """
    key = name.strip().upper()
    if len(key) <= 8:
        return header[key] if key in header else default
    n = _find_dtype(header, key)
    if n is not None and f"DVAL{n}" in header:
        return header[f"DVAL{n}"]
    for card in header.cards:
        if card.keyword.upper() == key:
            return card.value
    return default


def set_keyword(header, name, value, comment=""):
    """Write a keyword of any length, the CXC way for names longer than eight characters.

    An existing ``DTYPEn`` pair (or HIERARCH card) with that name is updated in
    place; otherwise a new pair is appended with the next free ``n``.
    """
    key = name.strip().upper()
    if len(key) <= 8:
        header[key] = (value, comment) if comment else value
        return
    n = _find_dtype(header, key)
    if n is None:
        for card in list(header.cards):
            if card.keyword.upper() == key:  # an existing HIERARCH card
                header[card.keyword] = value
                return
        used = [int(m.group(1)) for c in header.cards if (m := _DTYPE_RE.match(c.keyword))]
        n = max(used, default=0) + 1
        header.append((f"DTYPE{n}", key, "Long key name - value in DVALn"))
        header.append((f"DVAL{n}", value, comment))
    else:
        if f"DVAL{n}" in header:
            header[f"DVAL{n}"] = value
            if comment:
                header.comments[f"DVAL{n}"] = comment
        else:
            idx = header.index(f"DTYPE{n}")
            header.insert(idx + 1, (f"DVAL{n}", value, comment))


def delete_keyword(header, name):
    """Remove a keyword of any length (a DTYPEn/DVALn pair or HIERARCH card); True if found."""
    key = name.strip().upper()
    if len(key) <= 8:
        if key in header:
            del header[key]
            return True
        return False
    n = _find_dtype(header, key)
    if n is not None:
        del header[f"DTYPE{n}"]
        for extra in (f"DVAL{n}", f"DUNIT{n}"):
            if extra in header:
                del header[extra]
        return True
    for card in list(header.cards):
        if card.keyword.upper() == key:
            del header[card.keyword]
            return True
    return False
