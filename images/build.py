#!/usr/bin/env python3
"""Builds hanfs's container images as OCI archives, without a container tool or a registry.

The same images as the Containerfiles next to this script, assembled from what this
machine has: the release binaries (target/release/hanfs-{controller,node,backend}), the
shared libraries `ldd` names for them, Debian bookworm packages (debootstrap, for the
storage agent's image) and static Go binaries (the CSI sidecars, our pause program).

    images/build.py [--out DIR] [--sidecar-bin-dir DIR] [--target-dir DIR]

Output: one `<name>.oci.tar` per image (OCI image layout in a tar: oci-layout,
index.json, blobs/sha256/...), named `hanfs.local/<name>:<tag>` through the
`io.containerd.image.name` and `org.opencontainers.image.ref.name` annotations, so
`ctr -n k8s.io images import`, `podman load` and `docker load` all name it. Without --out
the archives go to ${HANFS_CACHE:-~/.cache/hanfs}/images-<hash of every input>/ and a
second run with the same inputs does nothing. images.json there lists each image's
manifest digest and sizes. Progress and sizes go to stderr; the last stdout line is the
output folder.

Deterministic: every tar entry has mtime 0, owner ids only, entries sorted, gzip without
timestamp or name, JSON with sorted keys; the same inputs give the same digests.

Why Python and not a tool: no registry can be pulled from here and none of umoci, buildah,
skopeo is installed; the layout is a few JSON documents and tar files (stdlib is enough).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The storage agent's base: what hanfs-backend execs (drivers/{drbd,fs_mount,nfsd}.rs:
# drbdadm, drbdsetup, mount, umount, rpc.nfsd, rpc.mountd, exportfs, nfsdcld, unshare,
# /bin/sh, hostname, modprobe) plus the admin's tools the issue names (xfsprogs,
# iproute2). minbase already has util-linux, mount, hostname and dash (all Essential or
# required); they are listed anyway so a change of Debian's priorities cannot drop them.
SUITE = "bookworm"
BACKEND_PACKAGES = [
    "drbd-utils",
    "nfs-kernel-server",
    "nfs-common",
    "xfsprogs",
    "e2fsprogs",
    "iproute2",
    "kmod",
    "util-linux",
    "mount",
    "hostname",
]
# Programs the backend image must hold (checked after debootstrap, and by images/test.sh).
BACKEND_PROGRAMS = [
    "drbdadm",
    "drbdsetup",
    "mount",
    "umount",
    "unshare",
    "hostname",
    "modprobe",
    "rpc.nfsd",
    "rpc.mountd",
    "exportfs",
    "nfsdcld",
    "sh",
    "ip",
    "mkfs.xfs",
]
# Bump when the base layer's recipe (the normalisation below) changes: the debootstrap
# result is cached by this, the suite and the package list, not by this file's hash, so
# an edit elsewhere here does not cost a new debootstrap.
BASE_RECIPE = "4"
# Dropped from the Debian tree: documentation and locales (as e2e/vm/build-image.sh
# does), apt's downloaded indexes, logs and caches whose content depends on the build day.
BASE_DROP = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/bug",
    "usr/share/groff",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "var/cache/ldconfig/aux-cache",
    "etc/machine-id",
    "var/lib/dbus/machine-id",
]

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH_ISO = "1970-01-01T00:00:00Z"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
# Docker's tag grammar; Go module versions may carry '+incompatible'.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


class BuildError(Exception):
    pass


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def flock(path: Path, timeout_s: float):
    """An exclusive lock, waited for at most timeout_s (two test runs may build at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"timed out after {timeout_s:.0f} s waiting for {path}")
                time.sleep(1)
        yield


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Runs a tool with stdin closed; failure raises with its stderr."""
    kw.setdefault("timeout", 600)
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise BuildError(f"{argv[0]} not found: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{' '.join(argv)} did not finish within {e.timeout} s") from e
    if p.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


# ---------------------------------------------------------------------------------------
# Layers: a tree of entries, written as a sorted, timestamp-free tar, then gzipped.


@dataclass
class Entry:
    """One tar entry. `source` is a host file to copy (regular files), else `data`."""

    kind: str  # "dir" | "file" | "symlink" | "hardlink"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    source: Path | None = None
    data: bytes | None = None
    target: str = ""  # symlink or hardlink target


@dataclass
class Tree:
    entries: dict[str, Entry] = field(default_factory=dict)

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = Entry("dir", mode if i == len(parts) else 0o755)
            elif self.entries[p].kind != "dir":
                raise BuildError(f"{p} is already a {self.entries[p].kind}, not a directory")

    def _parent(self, path: str) -> str:
        path = path.strip("/")
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])
        return path

    def file(self, path: str, *, source: Path | None = None, data: bytes | None = None, mode: int = 0o644) -> None:
        self.entries[self._parent(path)] = Entry("file", mode, source=source, data=data)

    def symlink(self, path: str, target: str) -> None:
        path = self._parent(path)
        old = self.entries.get(path)
        if old and (old.kind != "symlink" or old.target != target):
            raise BuildError(f"{path}: wanted a symlink to {target}, already a {old.kind}")
        self.entries[path] = Entry("symlink", 0o777, target=target)

    def host_path(self, host: str, hops: int = 0) -> None:
        """Copies a host path into the tree as the host has it: every symlink on the way
        (e.g. Debian's /lib -> usr/lib, /lib64/ld-linux-x86-64.so.2 -> /lib/...) becomes a
        symlink entry, the file at the end a regular file. So the dynamic loader finds the
        libraries under the very paths ldd printed."""
        if hops > 40:
            raise BuildError(f"too many symlinks resolving {host}")
        parts = [p for p in host.split("/") if p]
        for i in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:i])
            if os.path.islink(prefix):
                target = os.readlink(prefix)
                self.symlink(prefix, target)
                base = os.path.dirname(prefix) if not target.startswith("/") else ""
                resolved = os.path.normpath(os.path.join(base or "/", target))
                rest = "/".join(parts[i:])
                self.host_path(os.path.join(resolved, rest) if rest else resolved, hops + 1)
                return
            if i < len(parts):
                if not os.path.isdir(prefix):
                    raise BuildError(f"{prefix} (on the way to {host}) is not a directory")
                self.dir(prefix)
        st = os.stat(host)
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{host} is not a regular file")
        self.file(host, source=Path(host), mode=stat.S_IMODE(st.st_mode))


def minimal_tree() -> Tree:
    """The skeleton of a distroless image: mount points the runtime fills, a sticky /tmp,
    and nsswitch.conf so glibc resolves names from /etc/hosts before DNS. No shell, no
    /etc/passwd (everything runs as uid 0 or a numeric id)."""
    t = Tree()
    for d in ("dev", "proc", "sys", "etc", "run", "var"):
        t.dir(d)
    t.dir("tmp", 0o1777)
    t.symlink("var/run", "../run")
    t.file("etc/nsswitch.conf", data=b"hosts: files dns\n")
    return t


def tar_info(name: str, e: Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, 0
    ti.uname = ti.gname = ""
    return ti


@dataclass
class Layer:
    digest: str  # sha256 of the gzipped blob
    diff_id: str  # sha256 of the tar
    size: int  # gzipped bytes
    unpacked: int  # tar bytes
    blob: Path
    created_by: str

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("digest", "diff_id", "size", "unpacked", "created_by")}


class HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `inner`."""

    def __init__(self, inner):
        self.inner, self.h, self.n = inner, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        self.inner.write(b)
        return len(b)


def write_layer(tree: Tree, blob_dir: Path, created_by: str) -> Layer:
    """Writes tree as a gzipped tar into blob_dir/<digest>; returns its descriptor."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    tmp = blob_dir / f".layer-{os.getpid()}.tmp"
    with tmp.open("wb") as raw:
        gz_hash = HashingWriter(raw)
        # filename="" and mtime=0: the gzip header carries neither name nor time.
        with gzip.GzipFile(filename="", mode="wb", fileobj=gz_hash, mtime=0, compresslevel=6) as gz:
            tar_hash = HashingWriter(gz)
            with tarfile.open(fileobj=tar_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(tree.entries):
                    e = tree.entries[name]
                    ti = tar_info(name, e)
                    if e.kind == "dir":
                        ti.type = tarfile.DIRTYPE
                        tar.addfile(ti)
                    elif e.kind == "symlink":
                        ti.type, ti.linkname = tarfile.SYMTYPE, e.target
                        tar.addfile(ti)
                    elif e.kind == "hardlink":
                        ti.type, ti.linkname = tarfile.LNKTYPE, e.target
                        tar.addfile(ti)
                    elif e.source is not None:
                        ti.size = e.source.stat().st_size
                        with e.source.open("rb") as f:
                            tar.addfile(ti, f)
                    else:
                        data = e.data or b""
                        ti.size = len(data)
                        tar.addfile(ti, io.BytesIO(data))
    digest = "sha256:" + gz_hash.h.hexdigest()
    blob = blob_dir / digest.split(":", 1)[1]
    tmp.replace(blob)
    return Layer(digest, "sha256:" + tar_hash.h.hexdigest(), gz_hash.n, tar_hash.n, blob, created_by)


def tree_from_dir(root: Path) -> Tree:
    """A host directory (the debootstrap root) as entries: owners and modes kept, hard
    links kept as links to the first path in sorted order, device nodes, fifos and sockets
    left out (the runtime mounts /dev)."""
    t = Tree()
    seen: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            host = Path(dirpath) / name
            rel = str(host.relative_to(root))
            st = host.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                t.entries[rel] = Entry("dir", mode, st.st_uid, st.st_gid)
            elif stat.S_ISLNK(st.st_mode):
                t.entries[rel] = Entry("symlink", 0o777, st.st_uid, st.st_gid, target=os.readlink(host))
            elif stat.S_ISREG(st.st_mode):
                t.entries[rel] = Entry("file", mode, st.st_uid, st.st_gid, source=host)
                if st.st_nlink > 1:
                    seen.setdefault((st.st_dev, st.st_ino), rel)
    # os.walk's order is not the tar's (sorted full paths): pick each link group's first
    # path in the tar's order, so the result does not depend on directory read order.
    groups: dict[tuple[int, int], list[str]] = {}
    for rel, e in t.entries.items():
        if e.kind == "file" and e.source is not None:
            st = e.source.lstat()
            if st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for paths in groups.values():
        paths.sort()
        for other in paths[1:]:
            e = t.entries[other]
            t.entries[other] = Entry("hardlink", e.mode, e.uid, e.gid, target=paths[0])
    return t


# ---------------------------------------------------------------------------------------
# Inputs.


def workspace_version() -> str:
    with (REPO / "Cargo.toml").open("rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def ldd_paths(binary: Path) -> list[str]:
    """The libraries (and loader) ldd resolves for binary, as the host paths it prints."""
    out = run(["ldd", str(binary)]).stdout
    paths = []
    for line in out.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise BuildError(f"{binary}: ldd cannot find {line.split()[0]}")
        m = re.match(r"^(\S+) => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            paths.append(m.groups()[-1])
        elif not line.startswith("linux-vdso"):
            raise BuildError(f"{binary}: unexpected ldd line {line!r}")
    if not paths:
        raise BuildError(f"{binary}: ldd names no libraries (a static binary needs no libc layer)")
    return paths


def is_static(binary: Path) -> bool:
    """True when the ELF file has no PT_INTERP program header (no dynamic loader)."""
    with binary.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise BuildError(f"{binary} is not a little-endian 64-bit ELF file")
        phoff = int.from_bytes(head[0x20:0x28], "little")
        phentsize = int.from_bytes(head[0x36:0x38], "little")
        phnum = int.from_bytes(head[0x38:0x3A], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") != 3 for i in range(phnum))


def go_binary_version(binary: Path) -> str:
    """The version of the module that holds the binary's main package, from the build info
    Go embeds (`go version -m`), or "local" when it was built from a working tree."""
    try:
        out = run(["go", "version", "-m", str(binary)], timeout=60).stdout
    except BuildError as e:
        log(f"{binary.name}: no Go build info ({e}); tagging it 'local'")
        return "local"
    main_pkg, mods = "", {}
    for line in out.splitlines():
        f = line.split("\t")
        if len(f) >= 3 and f[1] == "path":
            main_pkg = f[2]
        elif len(f) >= 4 and f[1] in ("mod", "dep"):
            mods[f[2]] = f[3]
    owners = [m for m in mods if main_pkg == m or main_pkg.startswith(m + "/")]
    if not owners:
        return "local"
    version = mods[max(owners, key=len)].replace("+", "_")
    return version if TAG_RE.match(version) and version != "(devel)" else "local"


def cache_root() -> Path:
    return Path(os.environ.get("HANFS_CACHE") or Path.home() / ".cache/hanfs")


def build_pause(cache: Path) -> Path:
    """Our pause program (images/pause/main.go), built static once per source and Go version."""
    src = HERE / "pause"
    go_version = run(["go", "env", "GOVERSION"], timeout=60).stdout.strip()
    h = hashlib.sha256(go_version.encode())
    for name in ("go.mod", "main.go"):
        h.update((src / name).read_bytes())
    out = cache / f"pause-{h.hexdigest()[:16]}"
    binary = out / "pause"
    if binary.is_file():
        return binary
    with flock(cache / f"{out.name}.lock", 600):
        if binary.is_file():
            return binary
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false")
        tmp = out / "pause.tmp"
        log(f"pause: go build ({go_version}) into {out}")
        run(["nice", "-n", "10", "go", "build", "-C", str(src), "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "."], env=env)
        tmp.replace(binary)
    return binary


def debian_mirror() -> str:
    """The mirror e2e/vm/build-image.sh picks: $HANFS_DEBIAN_MIRROR, else the first Debian
    archive apt uses here, else deb.debian.org."""
    if os.environ.get("HANFS_DEBIAN_MIRROR"):
        return os.environ["HANFS_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        if src.suffix not in ("", ".list", ".sources") or not src.is_file():
            continue
        for line in src.read_text(errors="replace").splitlines():
            if line.lstrip().startswith("#"):
                continue
            m = re.search(r"((?:https?|file)://\S+/debian/?)(?:\s|$)", line)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def normalise_root(root: Path) -> None:
    """Takes out of the debootstrap tree what a container does not use or what differs
    between two builds from the same packages."""
    for rel in BASE_DROP:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for p in root.glob("var/lib/dpkg/*-old"):
        p.unlink()
    for p in root.glob("var/cache/debconf/*-old"):
        p.unlink()
    # The runtime bind-mounts /dev, and these three files (debootstrap copies the host's).
    for p in (root / "dev").iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    (root / "etc/hostname").write_text("")
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    # Field 3 of shadow is the day the password last changed: the build day. Empty = no aging.
    for name in ("etc/shadow", "etc/shadow-"):
        p = root / name
        if p.is_file():
            lines = []
            for line in p.read_text().splitlines():
                f = line.split(":")
                if len(f) > 2:
                    f[2] = ""
                lines.append(":".join(f))
            p.write_text("\n".join(lines) + "\n")
    # nfs-common depends on python3 (nfsiostat, mountstats); the byte code its postinst
    # compiles is not reproducible and Python does without it.
    for p in sorted(root.rglob("__pycache__"), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)


def build_backend_base(cache: Path, blob_dir: Path) -> tuple[Layer, str]:
    """The Debian layer of hanfs-backend: debootstrap minbase + BACKEND_PACKAGES, cached
    as its finished gzipped layer by recipe, so a rebuild with a new binary reuses it (and
    its digest). Needs root (debootstrap chroots)."""
    key = hashlib.sha256(f"{SUITE} {' '.join(BACKEND_PACKAGES)} recipe {BASE_RECIPE}".encode()).hexdigest()[:16]
    out = cache / f"backend-base-{key}"
    meta_path = out / "layer.json"

    def load() -> tuple[Layer, str] | None:
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        blob = out / "layer.tar.gz"
        blob_dir.mkdir(parents=True, exist_ok=True)
        layer = Layer(meta["digest"], meta["diff_id"], meta["size"], meta["unpacked"], blob, meta["created_by"])
        shutil.copyfile(blob, blob_dir / layer.digest.split(":", 1)[1])
        layer.blob = blob_dir / layer.digest.split(":", 1)[1]
        return layer, (out / "packages").read_text()

    if cached := load():
        return cached
    if os.geteuid() != 0:
        raise BuildError("the hanfs-backend base needs root (debootstrap chroots); run as root once to cache it")
    for tool in ("debootstrap", "chroot"):
        if not shutil.which(tool):
            raise BuildError(f"{tool} not found (apt-get install debootstrap)")
    with flock(cache / f"{out.name}.lock", 1800):
        if cached := load():
            return cached
        mirror = debian_mirror()
        debs = cache / "debootstrap-debs"
        debs.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp.", dir=cache))
        root = tmp / "root"
        start = time.monotonic()
        try:
            log(f"hanfs-backend base: debootstrap --variant=minbase {SUITE} from {mirror} (debs cached in {debs})")
            with (tmp / "debootstrap.log").open("w") as logf:
                p = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(BACKEND_PACKAGES)}",
                     "--components=main", f"--cache-dir={debs}", SUITE, str(root), mirror],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, timeout=1800,
                )  # fmt: skip
            if p.returncode != 0:
                tail = (tmp / "debootstrap.log").read_text(errors="replace").splitlines()[-30:]
                raise BuildError("debootstrap failed:\n" + "\n".join(tail))
            umount_chroot(root)
            log(f"hanfs-backend base: debootstrap done after {time.monotonic() - start:.0f} s")
            packages = run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Version}\n"]).stdout
            # lexists: some are absolute symlinks (/sbin/modprobe -> /bin/kmod), which
            # exists() would resolve on the host.
            missing = [p for p in BACKEND_PROGRAMS if not any(os.path.lexists(root / d / p) for d in ("usr/sbin", "usr/bin"))]
            if missing:
                raise BuildError(f"the Debian base lacks programs hanfs-backend runs: {missing}")
            normalise_root(root)
            layer = write_layer(tree_from_dir(root), tmp / "blobs", f"debootstrap --variant=minbase {SUITE} + {' '.join(BACKEND_PACKAGES)}")
            out_tmp = tmp / "out"
            out_tmp.mkdir()
            layer.blob.replace(out_tmp / "layer.tar.gz")
            (out_tmp / "packages").write_text(packages)
            (out_tmp / "layer.json").write_text(json.dumps(layer.to_json(), indent=1) + "\n")
            if out.exists():
                shutil.rmtree(out)
            out_tmp.replace(out)
        finally:
            umount_chroot(root)
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"hanfs-backend base: built in {time.monotonic() - start:.0f} s")
        cached = load()
        assert cached is not None  # just written
        return cached


def umount_chroot(root: Path) -> None:
    # debootstrap leaves /proc etc. mounted in the target when it fails.
    for m in ("proc", "sys", "dev/pts", "dev"):
        if (root / m).is_dir():
            subprocess.run(["umount", "-l", str(root / m)], stdin=subprocess.DEVNULL, capture_output=True)


# ---------------------------------------------------------------------------------------
# Images.


@dataclass
class Image:
    name: str  # archive name and repository (hanfs.local/<name>)
    tag: str
    layers: list[Layer]
    entrypoint: list[str]
    labels: dict[str, str]
    packages: str = ""

    @property
    def ref(self) -> str:
        return f"hanfs.local/{self.name}:{self.tag}"


def write_archive(img: Image, blob_dir: Path, out_dir: Path) -> dict:
    """Writes <out_dir>/<name>.oci.tar (OCI image layout) and returns its summary."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH_ISO,
        "config": {"Entrypoint": img.entrypoint, "Env": [PATH_ENV], "WorkingDir": "/", "Labels": img.labels},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in img.layers]},
        "history": [{"created": EPOCH_ISO, "created_by": layer.created_by} for layer in img.layers],
    }
    config_bytes = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(), "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size} for layer in img.layers],
        "annotations": {"org.opencontainers.image.version": img.tag, "org.opencontainers.image.created": EPOCH_ISO},
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                # containerd reads the first, podman/skopeo the second; both get the full
                # reference so neither invents a registry or repository for it.
                "annotations": {"io.containerd.image.name": img.ref, "org.opencontainers.image.ref.name": img.ref},
            }
        ],
    }
    blobs: dict[str, bytes | Path] = {
        manifest_digest: manifest_bytes,
        manifest["config"]["digest"]: config_bytes,
    }
    for layer in img.layers:
        blobs[layer.digest] = layer.blob
    files: dict[str, bytes | Path] = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(index),
    }
    for digest, content in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = content
    archive = out_dir / f"{img.name}.oci.tar"
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            ti = tar_info(d, Entry("dir"))
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
        for name in sorted(files):
            content = files[name]
            ti = tar_info(name, Entry("file", 0o644))
            if isinstance(content, Path):
                ti.size = content.stat().st_size
                with content.open("rb") as f:
                    tar.addfile(ti, f)
            else:
                ti.size = len(content)
                tar.addfile(ti, io.BytesIO(content))
    tmp.replace(archive)
    return {
        "name": img.name,
        "ref": img.ref,
        "archive": archive.name,
        "manifest_digest": manifest_digest,
        "compressed_bytes": sum(layer.size for layer in img.layers),
        "unpacked_bytes": sum(layer.unpacked for layer in img.layers),
        "archive_bytes": archive.stat().st_size,
        "layers": [layer.to_json() for layer in img.layers],
    }


def binary_image(name: str, binary: Path, tag: str, blob_dir: Path, labels: dict[str, str]) -> Image:
    """A distroless image: minimal tree + the binary + the libraries ldd names for it."""
    t = minimal_tree()
    for lib in ldd_paths(binary):
        t.host_path(lib)
    t.file(f"usr/local/bin/{name}", source=binary, mode=0o755)
    layer = write_layer(t, blob_dir, f"{name} + {len(ldd_paths(binary))} shared libraries (ldd) from the build host")
    return Image(name, tag, [layer], [f"/usr/local/bin/{name}"], labels)


def static_image(name: str, binary: Path, tag: str, blob_dir: Path, labels: dict[str, str]) -> Image:
    """A static Go binary at /<name> (where the upstream sidecar images put it, so chart
    args and probes written for those work unchanged), on the minimal tree."""
    if not is_static(binary):
        raise BuildError(f"{binary} is dynamically linked; sidecar images take static binaries (CGO_ENABLED=0)")
    t = minimal_tree()
    t.file(name, source=binary, mode=0o755)
    return Image(name, tag, [write_layer(t, blob_dir, f"static binary {name}")], [f"/{name}"], labels)


def backend_image(binary: Path, tag: str, blob_dir: Path, cache: Path, labels: dict[str, str]) -> Image:
    base, packages = build_backend_base(cache, blob_dir)
    # The binary's libraries come from the Debian layer (same release as a Debian 12 build
    # host); check each one is there rather than find out at exec time.
    check_base_has_libs(base, [os.path.basename(p) for p in ldd_paths(binary)])
    t = Tree()
    t.file("usr/local/bin/hanfs-backend", source=binary, mode=0o755)
    layer = write_layer(t, blob_dir, "hanfs-backend")
    return Image("hanfs-backend", tag, [base, layer], ["/usr/local/bin/hanfs-backend"], labels, packages)


def check_base_has_libs(base: Layer, sonames: list[str]) -> None:
    names: set[str] = set()
    with tarfile.open(base.blob, "r:gz") as tar:
        for m in tar:
            names.add(os.path.basename(m.name))
    missing = [s for s in sonames if s not in names]
    if missing:
        raise BuildError(f"the Debian base of hanfs-backend lacks libraries the binary needs: {missing}")


def inputs_hash(binaries: dict[str, Path], sidecars: list[Path], pause: Path, version: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(version.encode())
    h.update(f"{SUITE} {BACKEND_PACKAGES} {BASE_RECIPE}".encode())
    for name, path in sorted(binaries.items()):
        h.update(f"{name} {sha256_file(path)}\n".encode())
        for lib in ldd_paths(path):
            h.update(f"{lib} {sha256_file(Path(os.path.realpath(lib)))}\n".encode())
    for path in sidecars:
        h.update(f"{path.name} {sha256_file(path)}\n".encode())
    h.update(sha256_file(pause).encode())
    return h.hexdigest()[:16]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the archives here (default: a cache folder keyed by the inputs)")
    ap.add_argument("--sidecar-bin-dir", type=Path, default=os.environ.get("HANFS_SIDECAR_BIN_DIR") or None,
                    help="a folder of static Go binaries (csi-provisioner, ...): one image each")  # fmt: skip
    ap.add_argument("--target-dir", type=Path, default=REPO / "target/release", help="where the hanfs release binaries are")
    ap.add_argument("--extra-binary", type=Path, action="append", default=[],
                    help="one more dynamically linked binary to wrap like hanfs-node (tag 'local'; e.g. the e2e workload)")  # fmt: skip
    args = ap.parse_args()

    start = time.monotonic()
    cache = cache_root()
    version = workspace_version()
    binaries = {n: args.target_dir / n for n in ("hanfs-controller", "hanfs-node", "hanfs-backend")}
    missing = [str(p) for p in binaries.values() if not os.access(p, os.X_OK)]
    if missing:
        raise BuildError(f"missing release binaries {missing}: run `nice -n 10 cargo build --release --bins` first")
    sidecars: list[Path] = []
    if args.sidecar_bin_dir:
        if not args.sidecar_bin_dir.is_dir():
            raise BuildError(f"--sidecar-bin-dir {args.sidecar_bin_dir} is not a directory")
        sidecars = sorted(p for p in args.sidecar_bin_dir.iterdir() if p.is_file() and os.access(p, os.X_OK))
        if not sidecars:
            raise BuildError(f"--sidecar-bin-dir {args.sidecar_bin_dir} holds no executable files")
    pause = build_pause(cache)
    extras = {p.name: p for p in args.extra_binary}
    for p in extras.values():
        if not os.access(p, os.X_OK):
            raise BuildError(f"--extra-binary {p} is not an executable file")

    key = inputs_hash({**binaries, **extras}, sidecars, pause, version)
    out = args.out or cache / f"images-{key}"
    if args.out is None and (out / ".complete").is_file():
        log(f"up to date: {out}")
        print_summary(json.loads((out / "images.json").read_text()))
        print(out)
        return 0
    with flock(cache / f"images-{key}.lock" if args.out is None else out / ".lock", 1800):
        if args.out is None and (out / ".complete").is_file():
            print(out)
            return 0
        out.mkdir(parents=True, exist_ok=True)
        (out / ".complete").unlink(missing_ok=True)
        blob_dir = Path(tempfile.mkdtemp(prefix=".blobs.", dir=out))
        try:
            labels = {"org.opencontainers.image.version": version, "org.opencontainers.image.licenses": "Apache-2.0"}
            images = [
                binary_image("hanfs-controller", binaries["hanfs-controller"], version, blob_dir,
                             {**labels, "org.opencontainers.image.title": "hanfs CSI controller"}),
                binary_image("hanfs-node", binaries["hanfs-node"], version, blob_dir,
                             {**labels, "org.opencontainers.image.title": "hanfs CSI node plugin"}),
                backend_image(binaries["hanfs-backend"], version, blob_dir, cache,
                              {**labels, "org.opencontainers.image.title": "hanfs storage agent (DRBD, kernel NFS)"}),
                static_image("pause", pause, version, blob_dir,
                             {**labels, "org.opencontainers.image.title": "hanfs pause (pod sandbox)"}),
            ]  # fmt: skip
            for name, path in sorted(extras.items()):
                images.append(binary_image(name, path, "local", blob_dir, labels))
            for path in sidecars:
                tag = go_binary_version(path)
                images.append(static_image(path.name, path, tag, blob_dir,
                                           {"org.opencontainers.image.version": tag,
                                            "org.opencontainers.image.title": f"{path.name} (upstream, built from the Go module proxy)"}))  # fmt: skip
            summary = [write_archive(img, blob_dir, out) for img in images]
        finally:
            shutil.rmtree(blob_dir, ignore_errors=True)
        (out / "images.json").write_text(json.dumps({"version": version, "inputs": key, "images": summary}, indent=1) + "\n")
        for img in images:
            if img.packages:
                (out / f"{img.name}.packages").write_text(img.packages)
        (out / ".complete").write_text(key + "\n")
    log(f"built {len(images)} images in {time.monotonic() - start:.1f} s into {out}")
    if args.out is None:
        prune(cache, keep=int(os.environ.get("HANFS_IMAGES_KEEP", "3")))
    print_summary(json.loads((out / "images.json").read_text()))
    print(out)
    return 0


def prune(cache: Path, keep: int) -> None:
    """Every new binary makes a new images-<hash> folder (up to ~250 MB with the sidecars):
    keep the newest `keep`, so a test still importing from the one before is not cut short."""
    done = sorted((p for p in cache.glob("images-*") if (p / ".complete").is_file()),
                  key=lambda p: (p / ".complete").stat().st_mtime, reverse=True)  # fmt: skip
    for old in done[keep:]:
        log(f"removing old images {old}")
        shutil.rmtree(old, ignore_errors=True)
        Path(f"{old}.lock").unlink(missing_ok=True)


def print_summary(doc: dict) -> None:
    log(f"{'image':<52} {'compressed':>12} {'unpacked':>12}  manifest")
    for i in doc["images"]:
        log(f"{i['ref']:<52} {mib(i['compressed_bytes']):>12} {mib(i['unpacked_bytes']):>12}  {i['manifest_digest'][:19]}")


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as e:
        log(f"error: {e}")
        sys.exit(1)
