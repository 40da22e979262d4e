//! The DRBD driver: events2 parsing and folding with literal lines of both kernels we
//! meet, the unsafe-options check, and the runner against test doubles
//! (`tests/doubles/fake-drbd*.sh`). Real DRBD runs only in the VM tests.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use drbd_backend::drivers::command::CommandError;
use drbd_backend::drivers::drbd::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Literal dumps
// ---------------------------------------------------------------------------------------

/// DRBD 9.2 kernel, drbd-utils 9.2x, `drbdsetup events2 --now --statistics r0` on the
/// Primary of a connected pair. Line shapes follow drbd-utils `user/v9/drbdsetup_events2.c`
/// (`print_resource_changes` … `print_path_changes`) and `print_*_statistics` in
/// `user/v9/drbdsetup.c`; values are made up.
const DRBD9_PRIMARY_CONNECTED: &str = "\
exists resource name:r0 role:Primary suspended:no force-io-failures:no write-ordering:flush may_promote:no promotion_score:10102
exists device name:r0 volume:0 minor:0 backing_dev:/dev/vdb disk:UpToDate client:no open:yes quorum:yes size:262144 read:1208 written:53412 al-writes:12 bm-writes:0 upper-pending:0 lower-pending:0 al-suspended:no blocked:no
exists connection name:r0 peer-node-id:1 conn-name:beta connection:Connected role:Secondary ap-in-flight:0 rs-in-flight:0
exists peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no received:0 sent:53412 out-of-sync:0 pending:0 unacked:0
exists path name:r0 peer-node-id:1 conn-name:beta local:ipv4:10.0.0.1:7789 peer:ipv4:10.0.0.2:7789 established:yes
exists -
";

/// Debian kernel 6.1 (in-tree DRBD 8.4.11) with drbd-utils 9.x: drbdsetup execs
/// `drbdsetup-84`, whose `print_notifications`/`event_key` (drbd-utils
/// `user/v84/drbdsetup.c`) print a fake `peer-node-id:0` and `conn-name:peer`, `minor:`
/// on device and peer-device lines, no `done:`, and with `--statistics` the 8.4 counters.
/// The Secondary of a connected pair.
const DRBD84_SECONDARY_CONNECTED: &str = "\
exists resource name:r0 role:Secondary suspended:no write-ordering:flush
exists device name:r0 volume:0 minor:0 disk:UpToDate read:0 written:53412
exists connection name:r0 peer-node-id:0 conn-name:peer connection:Connected role:Primary congested:no
exists peer-device name:r0 peer-node-id:0 conn-name:peer volume:0 minor:0 replication:Established peer-disk:UpToDate resync-suspended:no received:53412 sent:0
exists -
";

/// 8.4: after `drbdadm disconnect` the net config is gone, so drbdsetup-84 prints no
/// `conn-name` and the peer device shows the raw 8.4 connection state.
const DRBD84_STANDALONE_OUTDATED: &str = "\
exists resource name:r0 role:Secondary suspended:no
exists device name:r0 volume:0 minor:0 disk:Outdated
exists connection name:r0 peer-node-id:0 connection:StandAlone role:Unknown
exists peer-device name:r0 peer-node-id:0 volume:0 minor:0 replication:StandAlone peer-disk:DUnknown resync-suspended:no
exists -
";

// ---------------------------------------------------------------------------------------
// Parser and fold
// ---------------------------------------------------------------------------------------

#[test]
fn drbd9_primary_dump_folds_to_a_healthy_primary() {
    let s = DrbdStatus::from_now_dump(DRBD9_PRIMARY_CONNECTED.lines());
    assert!(s.complete && s.resource_up && !s.stale);
    assert_eq!(s.role, Some(Role::Primary));
    assert_eq!(s.disk, Some(DiskState::UpToDate));
    assert_eq!(s.connection, Some(ConnectionState::Connected));
    assert_eq!(s.peer_role, Some(Role::Secondary));
    assert_eq!(s.peer_disk, Some(DiskState::UpToDate));
    assert_eq!(s.replication, Some(ReplicationState::Established));
    assert_eq!((s.may_promote, s.quorum), (Some(false), Some(true)));
    assert_eq!(s.out_of_sync_kib, Some(0));
    assert!(!s.io_suspended() && !s.split_brain && s.sync_percent.is_none());
}

#[test]
fn drbd84_dumps_fold_the_same_way() {
    let s = DrbdStatus::from_now_dump(DRBD84_SECONDARY_CONNECTED.lines());
    assert!(s.complete && s.resource_up);
    assert_eq!(s.role, Some(Role::Secondary));
    assert_eq!(s.peer_role, Some(Role::Primary));
    assert!(s.is_connected() && s.local_up_to_date() && s.peer_up_to_date());
    assert_eq!(s.replication, Some(ReplicationState::Established));
    // 8.4 knows no quorum and no may_promote.
    assert_eq!((s.may_promote, s.quorum), (None, None));

    let s = DrbdStatus::from_now_dump(DRBD84_STANDALONE_OUTDATED.lines());
    assert_eq!(s.connection, Some(ConnectionState::StandAlone));
    assert_eq!(s.disk, Some(DiskState::Outdated));
    assert_eq!(s.peer_disk, Some(DiskState::DUnknown));
    assert_eq!(s.peer_role, Some(Role::Unknown));
    assert_eq!(s.replication, Some(ReplicationState::Off));
}

#[test]
fn drbd84_lines_without_fake_node_ids_parse_too() {
    // Older drbd-utils 9.x releases print 8.4 lines without the fake peer-node-id.
    let s = DrbdStatus::from_now_dump([
        "exists resource name:r0 role:Primary suspended:no",
        "exists device name:r0 volume:0 minor:0 disk:UpToDate",
        "exists connection name:r0 conn-name:peer connection:WFConnection role:Unknown",
        "exists peer-device name:r0 conn-name:peer volume:0 replication:WFConnection peer-disk:DUnknown",
        "exists -",
    ]);
    assert_eq!(s.connection, Some(ConnectionState::Connecting));
    assert_eq!(s.replication, Some(ReplicationState::Off));
    assert!(s.is_primary() && !s.is_connected());
}

#[test]
fn a_connection_line_with_peer_role_uses_it_for_the_peer() {
    // Defensive: if a tool prints our role as `role:` and the peer's as `peer-role:`.
    let mut s = DrbdStatus::default();
    s.apply(
        &parse_events2_line(
            "exists connection name:r0 conn-name:peer connection:Connected role:Primary peer-role:Secondary",
        )
        .unwrap(),
    );
    assert_eq!(s.peer_role, Some(Role::Secondary));
}

#[test]
fn resync_progress_and_its_end_both_formats() {
    // DRBD 9 prints done: during a resync even without --statistics.
    let mut s = DrbdStatus::from_now_dump(DRBD9_PRIMARY_CONNECTED.lines());
    s.apply(
        &parse_events2_line(
            "change peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:SyncSource peer-disk:Inconsistent done:42.10",
        )
        .unwrap(),
    );
    assert_eq!(s.replication, Some(ReplicationState::SyncSource));
    assert_eq!(s.sync_percent, Some(42.10));
    assert!(!s.peer_up_to_date());
    s.apply(
        &parse_events2_line(
            "change peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established peer-disk:UpToDate",
        )
        .unwrap(),
    );
    assert_eq!(s.sync_percent, None);
    assert!(s.peer_up_to_date());

    // 8.4 prints the 8.4 names and, with --statistics, how much is left.
    let mut s = DrbdStatus::from_now_dump(DRBD84_SECONDARY_CONNECTED.lines());
    s.apply(
        &parse_events2_line(
            "change peer-device name:r0 peer-node-id:0 conn-name:peer volume:0 minor:0 replication:SyncTarget peer-disk:UpToDate received:100 sent:0 out-of-sync:2048",
        )
        .unwrap(),
    );
    s.apply(
        &parse_events2_line("change device name:r0 volume:0 minor:0 disk:Inconsistent").unwrap(),
    );
    assert_eq!(s.replication, Some(ReplicationState::SyncTarget));
    assert_eq!(s.out_of_sync_kib, Some(2048));
    assert_eq!(s.sync_percent, None);
    assert_eq!(s.disk, Some(DiskState::Inconsistent));
}

#[test]
fn suspended_io_reasons_both_formats() {
    let mut s = DrbdStatus::from_now_dump(DRBD84_SECONDARY_CONNECTED.lines());
    s.apply(&parse_events2_line("change resource name:r0 suspended:fencing").unwrap());
    assert_eq!(s.suspended, vec![SuspendReason::Fencing]);
    s.apply(&parse_events2_line("change resource name:r0 suspended:user,fencing").unwrap());
    assert_eq!(
        s.suspended,
        vec![SuspendReason::User, SuspendReason::Fencing]
    );
    s.apply(&parse_events2_line("change resource name:r0 suspended:no").unwrap());
    assert!(!s.io_suspended());
    s.apply(
        &parse_events2_line("change resource name:r0 suspended:quorum may_promote:no").unwrap(),
    );
    assert_eq!(s.suspended, vec![SuspendReason::Quorum]);
}

#[test]
fn disk_states_of_both_kernels() {
    for (value, want) in [
        ("Consistent", DiskState::Consistent),
        ("Diskless", DiskState::Diskless),
        ("Outdated", DiskState::Outdated),
        ("Inconsistent", DiskState::Inconsistent),
        ("Negotiating", DiskState::Negotiating),
        ("Detaching", DiskState::Detaching),
    ] {
        let mut s = DrbdStatus::default();
        s.apply(
            &parse_events2_line(&format!(
                "change device name:r0 volume:0 minor:0 disk:{value}"
            ))
            .unwrap(),
        );
        assert_eq!(s.disk, Some(want));
    }
}

#[test]
fn helper_lines_both_formats() {
    // 8.4 fence-peer call and response (status is the handler's exit code).
    let e = parse_events2_line(
        "call helper name:r0 peer-node-id:0 conn-name:peer volume:0 minor:0 helper:fence-peer",
    )
    .unwrap();
    assert!(matches!(
        e.kind,
        EventKind::Object {
            action: Action::Call,
            object: Object::Helper,
            ..
        }
    ));
    let e = parse_events2_line(
        "response helper name:r0 peer-node-id:1 conn-name:beta volume:0 helper:fence-peer status:4",
    )
    .unwrap();
    assert_eq!(e.field("status"), Some("4"));
    // Helpers do not change the summary.
    let mut s = DrbdStatus::default();
    s.apply(&e);
    assert_eq!(s, DrbdStatus::default());
}

#[test]
fn unknown_keys_objects_and_values_are_kept() {
    let e = parse_events2_line(
        "change resource name:r0 role:Primary brand-new_key:42 suspended:no future-thing:a:b",
    )
    .unwrap();
    assert_eq!(e.field("brand-new_key"), Some("42"));
    assert_eq!(e.field("future-thing"), Some("a:b"));
    let EventKind::Object { object, fields, .. } =
        parse_events2_line("exists gadget name:r0 shiny:yes")
            .unwrap()
            .kind
    else {
        panic!("not an object line")
    };
    assert_eq!(object, Object::Other("gadget".into()));
    assert_eq!(fields.iter().count(), 2);
    let mut s = DrbdStatus::default();
    s.apply(&parse_events2_line("exists device name:r0 volume:0 minor:0 disk:Sparkly").unwrap());
    assert_eq!(s.disk, Some(DiskState::Other("Sparkly".into())));
}

#[test]
fn other_volumes_are_ignored() {
    let mut s = DrbdStatus::default();
    s.apply(&parse_events2_line("exists device name:r0 volume:1 minor:1 disk:Diskless").unwrap());
    assert_eq!(s.disk, None);
}

#[test]
fn garbage_lines_fail_with_the_line_and_a_dump_skips_them() {
    let err = parse_events2_line("drbdsetup: unknown command").unwrap_err();
    assert_eq!(err.line, "drbdsetup: unknown command");
    assert!(
        err.to_string().contains("drbdsetup: unknown command"),
        "{err}"
    );

    let s = DrbdStatus::from_now_dump([
        "exists resource name:r0 role:Secondary suspended:no",
        "garbage in the middle",
        "exists -",
    ]);
    assert!(s.complete && s.resource_up);
}

#[test]
fn skipped_events_mark_the_state_stale() {
    let mut s = DrbdStatus::from_now_dump(DRBD9_PRIMARY_CONNECTED.lines());
    s.apply(&parse_events2_line("- skipped 3").unwrap());
    assert!(s.stale);
}

// ---------------------------------------------------------------------------------------
// unsafe_options
// ---------------------------------------------------------------------------------------

/// Shaped like `drbdadm-84 dump r0` (global/common, then the resource with its hosts).
const SAFE_DUMP_84: &str = r#"# /etc/drbd.conf
global {
    usage-count no;
}

common {
}

# resource r0 on alpha: not ignored, not stacked
# defined at /etc/drbd.d/r0.res:1
resource r0 {
    on alpha {
        device           /dev/drbd0 minor 0;
        disk             /dev/vdb;
        meta-disk        internal;
        address          ipv4 10.0.0.1:7789;
    }
    on beta {
        device           /dev/drbd0 minor 0;
        disk             /dev/vdb;
        meta-disk        internal;
        address          ipv4 10.0.0.2:7789;
    }
    net {
        protocol           C;
        ping-int           1;
        after-sb-0pri    discard-zero-changes;
        after-sb-1pri    disconnect;
        after-sb-2pri    disconnect;
    }
    disk {
        fencing          resource-and-stonith;
    }
    handlers {
        fence-peer       "/usr/sbin/hanfs-backend fence-peer";
    }
}
"#;

#[test]
fn a_safe_config_has_no_warnings() {
    assert_eq!(unsafe_options(SAFE_DUMP_84), Vec::<String>::new());
    // DRBD 9 puts fencing under net.
    let nine = SAFE_DUMP_84
        .replace(
            "    disk {\n        fencing          resource-and-stonith;\n    }\n",
            "",
        )
        .replace(
            "protocol           C;",
            "protocol C; fencing resource-and-stonith;",
        );
    assert_eq!(unsafe_options(&nine), Vec::<String>::new());
}

#[test]
fn each_unsafe_option_is_named() {
    let cases = [
        (
            "fencing          resource-and-stonith;",
            "fencing          dont-care;",
            "fencing",
        ),
        (
            "ping-int           1;",
            "ping-int 1; allow-two-primaries yes;",
            "allow-two-primaries",
        ),
        (
            "ping-int           1;",
            "ping-int 1; allow-two-primaries;",
            "allow-two-primaries",
        ),
        ("protocol           C;", "protocol A;", "protocol A"),
        (
            "after-sb-0pri    discard-zero-changes;",
            "after-sb-0pri discard-younger-primary;",
            "discard-younger-primary",
        ),
        (
            "after-sb-0pri    discard-zero-changes;",
            "after-sb-0pri discard-least-changes;",
            "discard-least-changes",
        ),
        (
            "after-sb-0pri    discard-zero-changes;",
            "after-sb-0pri discard-node-alpha;",
            "discard-node-alpha",
        ),
        (
            "after-sb-1pri    disconnect;",
            "after-sb-1pri discard-secondary;",
            "discard-secondary",
        ),
        (
            "after-sb-2pri    disconnect;",
            "after-sb-2pri violently-as0p;",
            "violently-as0p",
        ),
        (
            "fence-peer       \"/usr/sbin/hanfs-backend fence-peer\";",
            "",
            "fence-peer",
        ),
        (
            "        fencing          resource-and-stonith;\n",
            "",
            "fencing is not set",
        ),
    ];
    for (from, to, needle) in cases {
        let text = SAFE_DUMP_84.replace(from, to);
        assert_ne!(
            text, SAFE_DUMP_84,
            "case {needle}: replacement did not apply"
        );
        let warnings = unsafe_options(&text);
        assert_eq!(warnings.len(), 1, "case {needle}: {warnings:#?}");
        assert!(warnings[0].contains(needle), "case {needle}: {warnings:#?}");
    }
    // allow-two-primaries no is fine.
    let text = SAFE_DUMP_84.replace("ping-int           1;", "allow-two-primaries no;");
    assert!(unsafe_options(&text).is_empty());
}

// ---------------------------------------------------------------------------------------
// Runner against test doubles
// ---------------------------------------------------------------------------------------

fn double(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/doubles")
        .join(name)
}

/// A tempdir with `name` symlinked to the double, so the double writes its logs there.
fn linked(dir: &Path, double_name: &str, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(double(double_name), &link).unwrap();
    link
}

fn drbd(dir: &Path, drbdadm: &str, drbdsetup: &str) -> Drbd {
    Drbd {
        drbdadm: linked(dir, drbdadm, "drbdadm"),
        drbdsetup: linked(dir, drbdsetup, "drbdsetup"),
        resource: "r0".into(),
        timeout: Duration::from_secs(5),
    }
}

fn argv_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("argv.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_command_passes_the_documented_argv() {
    let dir = tempfile::tempdir().unwrap();
    let d = drbd(
        dir.path(),
        "fake-records-argv.sh",
        "fake-drbdsetup-events2-from-file.sh",
    );
    d.promote().await.unwrap();
    d.force_promote().await.unwrap();
    d.demote().await.unwrap();
    d.resume_io().await.unwrap();
    d.dump_config().await.unwrap();
    assert_eq!(
        argv_log(dir.path()),
        [
            "primary r0",
            "primary --force r0",
            "secondary r0",
            "resume-io r0",
            "dump r0",
        ]
    );
}

#[tokio::test]
async fn status_runs_events2_now_and_folds_the_dump() {
    let dir = tempfile::tempdir().unwrap();
    let d = drbd(
        dir.path(),
        "fake-records-argv.sh",
        "fake-drbdsetup-events2-from-file.sh",
    );
    std::fs::write(dir.path().join("events2.txt"), DRBD84_SECONDARY_CONNECTED).unwrap();
    let s = d.status().await.unwrap();
    assert_eq!(argv_log(dir.path()), ["events2 --now --statistics r0"]);
    assert_eq!(
        s,
        DrbdStatus::from_now_dump(DRBD84_SECONDARY_CONNECTED.lines())
    );

    std::fs::write(dir.path().join("events2.txt"), DRBD9_PRIMARY_CONNECTED).unwrap();
    assert!(d.status().await.unwrap().is_primary());

    // A resource the kernel does not know: drbdsetup prints only the terminator.
    std::fs::write(dir.path().join("events2.txt"), "exists -\n").unwrap();
    let s = d.status().await.unwrap();
    assert!(!s.resource_up && s.role.is_none());

    // Cut short: no terminator is an error, not a half-known state.
    std::fs::write(
        dir.path().join("events2.txt"),
        "exists resource name:r0 role:Primary suspended:no\n",
    )
    .unwrap();
    let err = d.status().await.unwrap_err();
    assert!(matches!(err, DrbdError::IncompleteDump { .. }), "{err}");
}

#[tokio::test]
async fn a_resource_missing_from_the_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = drbd(
        dir.path(),
        "fake-drbdadm-not-defined.sh",
        "fake-drbdsetup-events2-from-file.sh",
    );
    let err = d.promote().await.unwrap_err();
    match &err {
        DrbdError::NoSuchResource {
            resource, stderr, ..
        } => {
            assert_eq!(resource, "r0");
            assert!(
                stderr.contains("'r0' not defined in your config"),
                "{stderr}"
            );
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(err.to_string().contains("r0"), "{err}");
}

#[tokio::test]
async fn refusals_and_a_resource_the_kernel_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let d = drbd(
        dir.path(),
        "fake-drbdadm-fails-with-stderr.sh",
        "fake-drbdsetup-events2-from-file.sh",
    );
    // What drbdsetup-84 prints when promoting without UpToDate data.
    std::fs::write(
        dir.path().join("stderr.txt"),
        "0: State change failed: (-2) Need access to UpToDate data\n\
         Command 'drbdsetup-84 primary 0' terminated with exit code 17\n",
    )
    .unwrap();
    let err = d.promote().await.unwrap_err();
    assert!(
        matches!(
            &err,
            DrbdError::StateChangeRefused {
                action: "promote",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("Need access to UpToDate data"),
        "{err}"
    );

    // drbdadm secondary on a resource that is configured but not up (8.4 wording).
    std::fs::write(
        dir.path().join("stderr.txt"),
        "r0: Failure: (158) Unknown resource\nadditional info from kernel:\nunknown resource\n",
    )
    .unwrap();
    let err = d.demote().await.unwrap_err();
    assert!(matches!(&err, DrbdError::ResourceDown { .. }), "{err:?}");

    // status() reports such a resource as down instead of failing.
    std::fs::write(dir.path().join("fail.txt"), "r0: No such resource\n").unwrap();
    let s = d.status().await.unwrap();
    assert!(s.complete && !s.resource_up);
}

#[tokio::test]
async fn a_hanging_drbdadm_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = drbd(
        dir.path(),
        "fake-drbdadm-hangs.sh",
        "fake-drbdsetup-events2-from-file.sh",
    );
    d.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = d.demote().await.unwrap_err();
    assert!(
        matches!(
            &err,
            DrbdError::Command {
                source: CommandError::TimedOut { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_missing_tool_is_a_spawn_error() {
    let d = Drbd {
        drbdadm: "/nonexistent/drbdadm".into(),
        drbdsetup: "/nonexistent/drbdsetup".into(),
        resource: "r0".into(),
        timeout: Duration::from_secs(5),
    };
    let err = d.promote().await.unwrap_err();
    assert!(
        matches!(
            &err,
            DrbdError::Command {
                source: CommandError::Spawn { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let err = d.status().await.unwrap_err();
    assert!(
        matches!(
            &err,
            DrbdError::Command {
                source: CommandError::Spawn { .. },
                ..
            }
        ),
        "{err:?}"
    );
}
