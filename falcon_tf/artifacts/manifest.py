"""The per-preset artifact manifest: what was exported, with checksums.

`artifacts/<preset>/manifest.json` lists, per export, every file's sha256 and
size (paths relative to the artifact directory), the signatures with their
dtypes and shapes, the config, tool versions and the parity measured at
export. Exporters add to it; loaders verify files against it. numpy-free and
TensorFlow-free, so on-device loaders can use it too.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import threading

try:
    import fcntl
except ImportError:  # not POSIX: exports to one artifact must not overlap
    fcntl = None

from falcon_tf.artifacts import contract
from falcon_tf.json_file import read_json
from falcon_tf.untrusted import path_inside

MANIFEST_FILE = contract.MANIFEST_FILE
LOCK_FILE = ".lock"
JOURNAL_FILE = ".commit.json"  # files and manifest being published together
STAGED_PREFIX = ".staged-"
FORMAT_VERSION = 1


def sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(artifact_dir, root):
    """{path relative to artifact_dir: {"sha256", "bytes"}} for every file under root."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(folder, name)
            files[os.path.relpath(path, artifact_dir)] = {"sha256": sha256(path),
                                                          "bytes": os.path.getsize(path)}
    return dict(sorted(files.items()))


def read(artifact_dir):
    """The artifact's manifest, after finishing any publication an interrupted
    export left half done (`recover`)."""
    recover(artifact_dir)
    path = os.path.join(artifact_dir, MANIFEST_FILE)
    data = read_json(path, "Artifact manifest")
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: field `format_version` must be {FORMAT_VERSION}.")
    return data


_KINDS = {
    "positive integer": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "shape": lambda v: isinstance(v, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v),
}


def field(data, path, kind, artifact_dir):
    """The manifest value at `path` ("config.vocabulary_size", keys joined by
    dots) checked to be a `kind` (see _KINDS); ValueError naming the field
    and the manifest otherwise (a manifest written by hand, or damaged)."""
    value = data
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is None or not _KINDS[kind](value):
        raise ValueError(f"{os.path.join(artifact_dir, MANIFEST_FILE)}: field `{path}` must be "
                         f"a {kind}; found {value!r}. Export again.")
    return value


def atomic_write(path, content):
    """Writes bytes or text to `path` through a temporary sibling and a rename:
    a reader sees the old file or the new one, whole."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        publishable(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def publishable(path):
    """Gives a temporary file (created 0600) the mode a plainly created file
    would have under the process's umask, before it is renamed into place."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


_held = {}  # (lock path, thread) -> (open file, depth): re-entrant within a thread
_held_guard = threading.Lock()


@contextlib.contextmanager
def locked(artifact_dir):
    """Holds the artifact's lock file (`.lock`, an exclusive flock) for the block:
    exporters to one artifact run their read-modify-write of the manifest, and
    their choice of a new version, one at a time. Re-entrant within a thread
    (other threads wait, as other processes do); released by the kernel if the
    process dies."""
    os.makedirs(artifact_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(artifact_dir, LOCK_FILE))
    key = (path, threading.get_ident())
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            _held[key] = (held[0], held[1] + 1)
    if held is None:
        f = open(path, "a+")  # held until the outermost block ends
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        with _held_guard:
            _held[key] = (f, 1)
    try:
        yield
    finally:
        with _held_guard:
            f, depth = _held[key]
            if depth > 1:
                _held[key] = (f, depth - 1)
            else:
                del _held[key]
        if depth == 1:
            f.close()  # closing the descriptor releases the flock


def update(artifact_dir, edit):
    """Reads the manifest (or starts one), applies `edit(data)` and writes it
    atomically, all under the artifact's lock, so concurrent exports lose no entry."""
    return commit(artifact_dir, {}, edit)


def staged_path(path):
    """Where an exporter writes the file that will replace `path`: a hidden
    sibling named after this process, published by `commit`."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{STAGED_PREFIX}{os.getpid()}-{name}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder, prefix):
    """Removes the files and folders in `folder` named `<prefix><pid>-…` whose
    process no longer runs: what an export killed midway left behind."""
    if not os.path.isdir(folder):
        return
    import shutil

    for name in os.listdir(folder):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


def remove_stale_staged(folder):
    """Staged files (`staged_path`) of exports that no longer run."""
    remove_stale(folder, STAGED_PREFIX)


def commit(artifact_dir, moves, edit):
    """Publishes staged files and a manifest edit as one step.

    `moves`: {final path: staged path} inside `artifact_dir`; `edit(data)`
    changes the manifest. Under the artifact's lock the new manifest is
    computed and written, with the moves, to a journal (`.commit.json`,
    atomically); then each staged file is renamed over its final name, the
    manifest replaced and the journal removed. A process killed before the
    journal exists leaves the previous files and manifest as they were; one
    killed after it leaves a journal that the next reader of the manifest
    (`recover`) finishes. Either way no reader sees a manifest whose files
    are not the ones it lists. Returns the new manifest data."""
    path = os.path.join(artifact_dir, MANIFEST_FILE)
    with locked(artifact_dir):
        data = read(artifact_dir) if os.path.exists(path) else {"format_version": FORMAT_VERSION}
        edit(data)
        journal = {"moves": [[os.path.relpath(staged, artifact_dir),
                              os.path.relpath(final, artifact_dir)]
                             for final, staged in moves.items()],
                   "manifest": data}
        if moves:
            atomic_write(os.path.join(artifact_dir, JOURNAL_FILE), json.dumps(journal))
        _replay(artifact_dir, journal)
    return data


def _replay(artifact_dir, journal):
    for staged, final in journal["moves"]:
        staged = path_inside(artifact_dir, staged, JOURNAL_FILE)
        final = path_inside(artifact_dir, final, JOURNAL_FILE)
        if os.path.exists(staged):  # renamed already, if not
            os.replace(staged, final)
    atomic_write(os.path.join(artifact_dir, MANIFEST_FILE),
                 json.dumps(journal["manifest"], indent=2, sort_keys=True) + "\n")
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(artifact_dir, JOURNAL_FILE))


def recover(artifact_dir):
    """Finishes a publication (`commit`) that an export killed midway left in
    its journal: the staged files it had not yet renamed, then the manifest."""
    journal_path = os.path.join(artifact_dir, JOURNAL_FILE)
    if not os.path.exists(journal_path):
        return
    try:
        with locked(artifact_dir):
            if not os.path.exists(journal_path):
                return  # finished by another process meanwhile
            journal = read_json(journal_path, "Export journal")
            if not (isinstance(journal, dict) and isinstance(journal.get("moves"), list)
                    and isinstance(journal.get("manifest"), dict)):
                raise ValueError(f"{journal_path}: an export journal must hold `moves` and "
                                 f"`manifest`; export again.")
            _replay(artifact_dir, journal)
    except PermissionError as e:
        raise PermissionError(
            f"{journal_path}: an export to {artifact_dir} was interrupted while publishing its "
            f"files; finishing it needs write access to that directory ({e}).") from None


def verify(artifact_dir, files, where=None, missing_ok=False,
           hint="recorded at export; the file was changed or damaged. Export again, or pass "
                "verify_checksums=False."):
    """Checks each listed file's size and sha256; raises naming the first that differs.

    `files` maps paths relative to `artifact_dir` (which they must stay inside)
    to {sha256, bytes}; `where` is the listing's file, the manifest by default.
    With `missing_ok` a listed file that is absent is skipped."""
    where = where or os.path.join(artifact_dir, MANIFEST_FILE)
    if not isinstance(files, dict):
        raise ValueError(f"{where}: a `files` listing must be an object; found {files!r}.")
    for relative, expected in files.items():
        if not (isinstance(expected, dict) and isinstance(expected.get("sha256"), str)
                and isinstance(expected.get("bytes"), int)):
            raise ValueError(f"{where}: the entry of {relative!r} must be an object with a "
                             f"string `sha256` and an integer `bytes`; found {expected!r}.")
        path = path_inside(artifact_dir, relative, where)
        if not os.path.isfile(path):
            if missing_ok:
                continue
            raise FileNotFoundError(f"Artifact file missing: {path} (listed in {where}).")
        if os.path.getsize(path) != expected["bytes"] or sha256(path) != expected["sha256"]:
            raise ValueError(f"Checksum mismatch: {path} differs from what "
                             f"{os.path.basename(where)} {hint}")


class Staging:
    """The files one export writes, published with its manifest edit by `commit`.

        with manifest.Staging(artifact_dir) as staging:
            write(staging.path(final))       # a hidden sibling of `final`
            ...
            staging.commit(edit)

    Leaving the block by an exception removes the staged files; staged files
    of processes that no longer run are removed from each folder first used.
    """

    def __init__(self, artifact_dir):
        self.artifact_dir = artifact_dir
        self.moves = {}  # final path -> staged path
        self._swept = set()

    def path(self, final):
        """Where to write the file that will become `final`."""
        final = os.path.abspath(final)
        folder = os.path.dirname(final)
        if folder not in self._swept:
            os.makedirs(folder, exist_ok=True)
            remove_stale_staged(folder)
            self._swept.add(folder)
        self.moves[final] = staged_path(final)
        return self.moves[final]

    def commit(self, edit):
        data = commit(self.artifact_dir, self.moves, edit)
        self.moves = {}
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for staged in self.moves.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged)
        self.moves = {}
