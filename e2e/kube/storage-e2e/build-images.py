#!/usr/bin/env python3
"""Builds the test images Kubernetes' storage e2e suites start pods from, as OCI archives.

    build-images.py --agnhost BIN --busybox-deb DEB --image-list FILE --out DIR

No registry can be pulled from here, so the images the suites name (after the
--kube-test-repo-list remap in repo-list.yaml: registry.k8s.io/e2e-test-images ->
hanfs.local/e2e) are assembled from what we build or Debian ships, with images/build.py's
layer and archive writer (deterministic tars, `io.containerd.image.name` and
`org.opencontainers.image.ref.name` annotations):

  busybox            Debian's busybox-static, one symlink per applet (/bin/sh, dd, sha256sum,
                     mount, nsenter, ...). The suites' default image on Linux
                     (e2epod.GetDefaultTestImage): nearly every pod they start.
  agnhost            /agnhost (built from k8s.io/kubernetes/test/images/agnhost, entrypoint
                     /agnhost as upstream) on the busybox layer: subPath runs its `mounttest`
                     and `pause` subcommands, and storage/utils' hostexec pod execs
                     `nsenter --mount=/rootfs/proc/1/ns/mnt -- sh -c ...` in it.
  nginx              the busybox layer only. Used by the volumes suite's "should allow exec of
                     files on the volume", which replaces the command with a /bin/sh script;
                     nginx itself never runs.
  glibc-dns-testing  the busybox layer only. multiVolume's concurrent-access tests start it
                     with a /bin/sh loop and exec dd | sha256sum, base64 in it.

--image-list is `e2e.test --list-images --kube-test-repo-list=...`: each image is built
under the exact name listed there, and a name missing from it (an upstream tag bump) is an
error rather than an image nobody asks for. Progress goes to stderr; the last stdout line
is the output folder. images.json there lists references, digests and sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "images"))
import build as oci  # noqa: E402  images/build.py: Tree, write_layer, write_archive

REGISTRY = "hanfs.local/e2e"
# name -> tag the suites of k8s.io/kubernetes v1.37.2 ask for (test/utils/image/manifest.go).
TAGS = {
    "busybox": "1.37.0-2",
    "agnhost": "2.66.1",
    "nginx": "1.27.0-2",
    "glibc-dns-testing": "2.1.1",
}
STAND_IN = "busybox stand-in: the storage suites only run /bin/sh scripts in this image"


@dataclass
class E2EImage(oci.Image):
    """images/build.py's Image under a reference of our choosing instead of hanfs.local/<name>."""

    reference: str = ""

    @property
    def ref(self) -> str:
        return self.reference


def busybox_tree(deb: Path, work: Path) -> tuple[oci.Tree, str]:
    """The busybox-static package's binary at /bin/busybox and a symlink per applet, where
    busybox itself says each one lives (--list-full), plus the /etc/passwd and /etc/group
    entries a busybox image has (root, nobody), so `ls -l`, `id` and `whoami` print names."""
    root = work / "busybox-deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    binary = root / "bin" / "busybox"
    if not binary.is_file():
        raise oci.BuildError(f"{deb} holds no bin/busybox")
    if not oci.is_static(binary):
        raise oci.BuildError(f"{binary} is dynamically linked; the images carry no libc (want busybox-static)")
    version = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    applets = subprocess.run([str(binary), "--list-full"], check=True, capture_output=True, text=True).stdout.split()
    t = oci.minimal_tree()
    t.dir("root", 0o700)
    t.file("bin/busybox", source=binary, mode=0o755)
    for path in applets:
        if path != "bin/busybox":
            t.symlink(path, "/bin/busybox")
    t.file("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
    t.file("etc/group", data=b"root:x:0:\nnobody:x:65534:\n")
    for needed in ("bin/sh", "bin/dd", "usr/bin/sha256sum", "bin/base64", "bin/mount", "usr/bin/nsenter", "bin/sync"):
        if needed not in t.entries:
            raise oci.BuildError(f"busybox {version} has no {needed} applet; the storage suites run it")
    return t, version


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agnhost", type=Path, required=True, help="static agnhost binary")
    ap.add_argument("--busybox-deb", type=Path, required=True, help="Debian busybox-static .deb")
    ap.add_argument("--image-list", type=Path, required=True, help="e2e.test --list-images output")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    listed = set(args.image_list.read_text().split())
    refs = {name: f"{REGISTRY}/{name}:{tag}" for name, tag in TAGS.items()}
    missing = [r for r in refs.values() if r not in listed]
    if missing:
        raise oci.BuildError(
            f"e2e.test does not ask for {', '.join(missing)} (see {args.image_list}); "
            "update TAGS to the tags test/utils/image/manifest.go names"
        )
    agnhost_version = subprocess.run(
        [str(args.agnhost), "--version"], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    if agnhost_version != TAGS["agnhost"]:
        raise oci.BuildError(f"{args.agnhost} says version {agnhost_version}, the suite asks for {TAGS['agnhost']}")
    if not oci.is_static(args.agnhost):
        raise oci.BuildError(f"{args.agnhost} is dynamically linked; build it with CGO_ENABLED=0")

    args.out.mkdir(parents=True, exist_ok=True)
    blob_dir = args.out / ".blobs"
    with tempfile.TemporaryDirectory(prefix="e2e-images-") as work:
        tree, bb_version = busybox_tree(args.busybox_deb, Path(work))
        base = oci.write_layer(tree, blob_dir, f"Debian busybox-static {bb_version} + applet symlinks")
    agnhost = oci.Tree()
    agnhost.file("agnhost", source=args.agnhost, mode=0o755)
    agnhost_layer = oci.write_layer(agnhost, blob_dir, f"agnhost {agnhost_version} (k8s.io/kubernetes/test/images/agnhost)")

    source = {"org.opencontainers.image.source": "hanfs e2e/kube/storage-e2e/build-images.py"}
    bb = {"hanfs.busybox": f"Debian busybox-static {bb_version}"}
    images = [
        E2EImage("busybox", TAGS["busybox"], [base], ["/bin/sh"], source | bb, reference=refs["busybox"]),
        E2EImage("agnhost", TAGS["agnhost"], [base, agnhost_layer], ["/agnhost"], source | bb, reference=refs["agnhost"]),
        E2EImage("nginx", TAGS["nginx"], [base], ["/bin/sh"], source | bb | {"hanfs.stand-in": STAND_IN}, reference=refs["nginx"]),
        E2EImage(
            "glibc-dns-testing",
            TAGS["glibc-dns-testing"],
            [base],
            ["/bin/sh"],
            source | bb | {"hanfs.stand-in": STAND_IN},
            reference=refs["glibc-dns-testing"],
        ),
    ]
    summary = []
    for img in images:
        doc = oci.write_archive(img, blob_dir, args.out)
        summary.append(doc)
        oci.log(f"{doc['ref']}: {doc['archive']} {oci.mib(doc['archive_bytes'])} (unpacked {oci.mib(doc['unpacked_bytes'])})")
    for blob in blob_dir.iterdir():
        blob.unlink()
    blob_dir.rmdir()
    (args.out / "images.json").write_text(json.dumps({"images": summary}, indent=2, sort_keys=True) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (oci.BuildError, subprocess.CalledProcessError, OSError) as e:
        print(f"build-images.py: {e}", file=sys.stderr)
        sys.exit(1)
