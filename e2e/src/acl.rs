//! Per-volume export ACLs on the real stack (DESIGN.md §8): the kernel nfsd of the active
//! storage VM exports a volume only to the nodes it is published to.
//!
//! One run, each step checked on the server's answer to a real mount by the client VM:
//! 1. before ControllerPublish the client's mount of the volume is refused;
//! 2. published to the client (`hanfsctl publish`: ControllerPublish to the node id
//!    `client@10.80.0.20`, then NodeStage/Publish) it mounts and writes;
//! 3. a second address of the same VM (10.80.0.30, on a macvlan in its own network
//!    namespace, so the NFS client makes a new connection from it) is refused;
//! 4. the active storage VM is hard-killed: on the survivor the same table is rebuilt
//!    from the publish records on the replicated disk (its exports file lists the volume
//!    for the client, and only it), the client's mount keeps working, the second address
//!    is still refused;
//! 5. after unpublish (NodeUnpublish/Unstage, then ControllerUnpublish) the client's
//!    mount is refused again;
//! 6. a second volume published read-only: its export entry admits the client `ro`, and a
//!    read-write mount of it (a node ignoring the flag) gets EROFS on its first write.

use crate::Error;
use crate::cluster::{HanfsCluster, LONG, SHORT, STANDALONE_ROOT, VIP, first_word};
use std::time::Duration;

/// The second address of the client VM (not published to anyone).
const SECOND_ADDRESS: &str = "10.80.0.30";
/// A mount that the server refuses fails at once; one it admits takes under 10 s even
/// in nfsd's grace period. The bound only stops a hang from stalling the run.
const MOUNT_LIMIT: u64 = 45;

/// Tries a plain NFSv4.2 mount of the volume's directory from the client VM, in the
/// network namespace `netns` (None: the VM's own), and unmounts at once. Ok(true) when
/// the server admitted it.
fn client_can_mount(hc: &HanfsCluster, dir: &str, netns: Option<&str>) -> Result<bool, Error> {
    let wrap = netns.map_or(String::new(), |ns| format!("ip netns exec {ns} "));
    let point = format!("/mnt/acl-probe-{}", netns.unwrap_or("host"));
    // `nosharecache`: a new superblock (and a fresh lookup of the path on the server),
    // never the one a published mount of the same volume already holds.
    let script = format!(
        "mkdir -p {point}; \
         if {wrap}timeout -s KILL {MOUNT_LIMIT} mount -t nfs4 \
              -o vers=4.2,proto=tcp,soft,timeo=50,retrans=1,nosharecache \
              {VIP}:/export/volumes/{dir} {point} 2>/tmp/acl-mount.err; then \
            ls {point} >/dev/null; umount {point}; echo ADMITTED; \
         else echo REFUSED; cat /tmp/acl-mount.err; fi"
    );
    let out = hc
        .client()
        .run(&script, Duration::from_secs(MOUNT_LIMIT + 15))?;
    Ok(out.contains("ADMITTED"))
}

/// Mounts the volume's directory read-write from the client VM (plain NFSv4.2, as a node
/// that ignored its read-only publish would) and tries a write: Ok(true) when the server
/// admitted the mount and refused the write with EROFS.
fn server_refuses_writes(hc: &HanfsCluster, dir: &str) -> Result<(bool, String), Error> {
    let point = "/mnt/acl-probe-ro";
    let script = format!(
        "mkdir -p {point}; \
         if timeout -s KILL {MOUNT_LIMIT} mount -t nfs4 \
              -o rw,vers=4.2,proto=tcp,soft,timeo=50,retrans=1,nosharecache \
              {VIP}:/export/volumes/{dir} {point} 2>/tmp/acl-mount.err; then \
            if (echo probe > {point}/acl-ro.txt) 2>/tmp/acl-write.err; then echo WROTE; \
            else cat /tmp/acl-write.err; fi; umount {point}; \
         else echo REFUSED; cat /tmp/acl-mount.err; fi"
    );
    let out = hc
        .client()
        .run(&script, Duration::from_secs(MOUNT_LIMIT + 15))?;
    let refused =
        !out.contains("WROTE") && !out.contains("REFUSED") && out.contains("Read-only file system");
    Ok((refused, out))
}

fn expect(broken: &mut Vec<String>, what: &str, ok: bool) {
    if !ok {
        broken.push(what.to_owned());
    }
}

/// The exports file of storage VM `name` (what its agent applied).
fn exports_file(hc: &HanfsCluster, name: &str) -> Result<String, Error> {
    Ok(hc.vm(name).run(
        "cat /etc/exports.d/hanfs.exports 2>/dev/null; echo; exportfs -v",
        SHORT,
    )?)
}

/// Runs the scenario; returns the notes for the report, or the broken expectations.
pub fn run(hc: &HanfsCluster) -> Result<Vec<String>, Error> {
    let mut notes = Vec::new();
    let mut broken = Vec::new();
    let (active, _) = hc.wait_active(None, LONG)?;
    let client_ip = hc.client().ip().to_string();

    let created = hc.hanfsctl(&["volume", "create", "acl-1", "--size", "64Mi"])?;
    let id = first_word(&created)?;
    let dir = "acl-1";

    // The second address, in its own namespace (a macvlan on the client's eth0).
    hc.client().run(
        &format!(
            "ip netns add second 2>/dev/null || true; \
             ip link add acl-mv0 link eth0 type macvlan mode bridge && \
             ip link set acl-mv0 netns second && \
             ip -n second addr add {SECOND_ADDRESS}/24 dev acl-mv0 && \
             ip -n second link set acl-mv0 up && ip -n second link set lo up"
        ),
        SHORT,
    )?;

    // 1. Not published: refused.
    expect(
        &mut broken,
        "the client mounted a volume before it was published",
        !client_can_mount(hc, dir, None)?,
    );

    // 2. Published to the client (as the attacher + kubelet would): mounts and writes.
    // Below the node plugin's --allowed-target-root in the VM (cluster::STANDALONE_ROOT).
    let staging = format!("{STANDALONE_ROOT}/plugins/kubernetes.io/csi/hanfs/acl-1/globalmount");
    let target = format!("{STANDALONE_ROOT}/pods/acl/volumes/kubernetes.io~csi/acl-1/mount");
    let (staging, target) = (staging.as_str(), target.as_str());
    hc.client()
        .run(&format!("mkdir -p {staging} $(dirname {target})"), SHORT)?;
    let published = hc.hanfsctl(&["publish", &id, target, "--staging", staging])?;
    expect(
        &mut broken,
        &format!("hanfsctl publish did not ControllerPublish to client@{client_ip}: {published}"),
        published.contains(&format!("published to node client@{client_ip}")),
    );
    hc.client().run(
        &format!("echo before > {target}/acl.txt && sync && cat {target}/acl.txt"),
        SHORT,
    )?;
    expect(
        &mut broken,
        "a fresh mount by the published client was refused",
        client_can_mount(hc, dir, None)?,
    );

    // 3. Another address of the same machine: not admitted.
    expect(
        &mut broken,
        &format!("{SECOND_ADDRESS} (not published) mounted the volume"),
        !client_can_mount(hc, dir, Some("second"))?,
    );
    let table = exports_file(hc, &active)?;
    expect(
        &mut broken,
        &format!("{active}'s exports file does not admit {client_ip} to {dir} only:\n{table}"),
        table
            .lines()
            .any(|l| l.starts_with(&format!("/export/volumes/{dir} {client_ip}(")))
            && !table.contains(SECOND_ADDRESS)
            && !table.lines().any(|l| l.starts_with("/export ")),
    );

    // 4. Hard kill of the active: the survivor rebuilds the same table from the records.
    hc.clock.log(&format!("acl: hard-killing {active}"));
    hc.vm(&active).kill()?;
    let (survivor, took) = hc.wait_active(Some(&active), LONG)?;
    notes.push(format!("{active} killed, {survivor} took over in {took:?}"));
    // The published mount survives (hard mount: it waits for the VIP to come back).
    let after = hc.client().run(
        &format!("echo after >> {target}/acl.txt && sync && cat {target}/acl.txt"),
        LONG,
    )?;
    expect(
        &mut broken,
        &format!("the published mount lost data across the failover: {after:?}"),
        after.contains("before") && after.contains("after"),
    );
    let rebuilt = exports_file(hc, &survivor)?;
    let rule = |t: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("/export/volumes/{dir} ")))
            .map(str::to_owned)
    };
    expect(
        &mut broken,
        &format!("{survivor} rebuilt another table:\nbefore: {table}\nafter: {rebuilt}"),
        rule(&table).is_some() && rule(&table) == rule(&rebuilt),
    );
    expect(
        &mut broken,
        &format!("after the failover {SECOND_ADDRESS} mounted the volume"),
        !client_can_mount(hc, dir, Some("second"))?,
    );
    let resync = hc.rejoin_storage(&active, &survivor)?;
    notes.push(format!(
        "{active} back in sync after {:.0} s",
        resync.as_secs_f64()
    ));

    // 5. Unpublished: refused again.
    let unpublished = hc.hanfsctl(&["unpublish", &id, target, "--staging", staging])?;
    expect(
        &mut broken,
        &format!("hanfsctl unpublish did not ControllerUnpublish: {unpublished}"),
        unpublished.contains("unpublished from node"),
    );
    expect(
        &mut broken,
        "the client mounted the volume after it was unpublished",
        !client_can_mount(hc, dir, None)?,
    );

    // 6. Published read-only (PUBLISH_READONLY): the export entry says `ro` for the
    // client, so the server refuses writes even through a read-write mount.
    let created = hc.hanfsctl(&["volume", "create", "acl-ro", "--size", "64Mi"])?;
    let ro_id = first_word(&created)?;
    let ro_staging =
        format!("{STANDALONE_ROOT}/plugins/kubernetes.io/csi/hanfs/acl-ro/globalmount");
    let ro_target = format!("{STANDALONE_ROOT}/pods/acl/volumes/kubernetes.io~csi/acl-ro/mount");
    hc.client().run(
        &format!("mkdir -p {ro_staging} $(dirname {ro_target})"),
        SHORT,
    )?;
    let published = hc.hanfsctl(&[
        "publish",
        &ro_id,
        &ro_target,
        "--staging",
        &ro_staging,
        "--readonly",
    ])?;
    expect(
        &mut broken,
        &format!("hanfsctl publish --readonly did not publish read-only: {published}"),
        published.contains("(read-only)"),
    );
    let (now_active, _) = hc.wait_active(None, LONG)?;
    let table = exports_file(hc, &now_active)?;
    expect(
        &mut broken,
        &format!(
            "{now_active}'s exports file does not admit {client_ip} read-only to acl-ro:\n{table}"
        ),
        table
            .lines()
            .any(|l| l.starts_with(&format!("/export/volumes/acl-ro {client_ip}(ro,"))),
    );
    let (refused, said) = server_refuses_writes(hc, "acl-ro")?;
    expect(
        &mut broken,
        &format!(
            "a read-write mount of the read-only published volume could write (or not mount): {said}"
        ),
        refused,
    );
    let _ = hc.hanfsctl(&["unpublish", &ro_id, &ro_target, "--staging", &ro_staging]);
    let _ = hc.hanfsctl(&["volume", "delete", &ro_id]);

    let _ = hc.client().run("ip netns del second", SHORT);
    let _ = hc.hanfsctl(&["volume", "delete", &id]);
    if broken.is_empty() {
        notes.push(
            "refused before publish, after unpublish and from a second address; the ACL survived the hard kill; a read-only publish made the server refuse writes (EROFS)"
                .into(),
        );
        Ok(notes)
    } else {
        Err(broken.join("\n").into())
    }
}
