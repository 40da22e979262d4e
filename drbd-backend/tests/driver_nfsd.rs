//! The nfsd driver: pure command construction and `exportfs -v` parsing, then each step
//! against test doubles (`tests/doubles/fake-*.sh`) with a tempdir standing in for
//! /proc/fs/nfsd. The UTS-namespace start runs the real `unshare`, `sh` and `hostname`
//! (needs root) around a fake rpc.nfsd that reports the hostname it sees.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use drbd_backend::drivers::command::CommandError;
use drbd_backend::drivers::nfsd::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------

#[test]
fn start_command_is_exact() {
    let c = NfsdConfig::new("/srv/export", "nfs-vip.example.com");
    let (program, args) = start_command(&c);
    assert_eq!(program, Path::new("unshare"));
    let want: Vec<OsString> = [
        "--uts",
        "/bin/sh",
        "-c",
        r#""$1" "$2" && shift 2 && exec "$@""#,
        "hanfs-nfsd",
        "hostname",
        "nfs-vip.example.com",
        "rpc.nfsd",
        "-N",
        "3",
        "-N",
        "4",
        "-V",
        "4.1",
        "-V",
        "4.2",
        "8",
    ]
    .map(OsString::from)
    .to_vec();
    assert_eq!(args, want);

    let mut all = NfsdConfig::new("/srv/export", "nfs-vip");
    all.v41_only = false;
    all.threads = 16;
    assert_eq!(rpc_nfsd_args(&all), ["16"]);
}

#[test]
fn export_commands_are_exact() {
    let mut c = NfsdConfig::new("/srv/export", "nfs-vip");
    c.fsid = 7;
    c.clients = "10.0.0.0/24".into();
    assert_eq!(
        export_args(&c),
        [
            "-i",
            "-o",
            "rw,sync,insecure,no_subtree_check,fsid=7",
            "10.0.0.0/24:/srv/export"
        ]
        .map(OsString::from)
    );
    assert_eq!(
        unexport_args(&c),
        ["-u", "10.0.0.0/24:/srv/export"].map(OsString::from)
    );
}

/// `exportfs -v` as nfs-utils 2.6 prints it (`%-14s\t` for short paths, the client on
/// its own `\t\t` line for longer ones; `*` shown as `<world>`).
const EXPORTFS_V: &str = "\
/srv/export   \t<world>(sync,wdelay,hide,no_subtree_check,fsid=1,sec=sys,rw,insecure,root_squash,no_all_squash)
/srv/other-export-path
\t\t10.0.0.0/24(sync,wdelay,hide,no_subtree_check,sec=sys,ro,secure,root_squash,no_all_squash)
/srv/other-export-path
\t\tclient.example(async,wdelay,hide,no_subtree_check,fsid=2,sec=sys,rw,secure,no_root_squash,no_all_squash)
";

#[test]
fn exportfs_verbose_output_parses() {
    let entries = parse_exportfs_verbose(EXPORTFS_V);
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert_eq!(entries[0].path, "/srv/export");
    assert_eq!(entries[0].client, "<world>");
    assert!(entries[0].client_is("*"));
    assert!(entries[0].options.contains(&"fsid=1".to_owned()));
    assert!(entries[0].options.contains(&"insecure".to_owned()));
    assert_eq!(entries[1].path, "/srv/other-export-path");
    assert_eq!(entries[1].client, "10.0.0.0/24");
    assert_eq!(entries[2].client, "client.example");
    assert_eq!(
        entries[2].options.first().map(String::as_str),
        Some("async")
    );

    // Plain `exportfs` (no -v) has no options.
    let plain = parse_exportfs_verbose("/srv/export   \t<world>\n");
    assert_eq!(
        plain,
        [ExportEntry {
            path: "/srv/export".into(),
            client: "<world>".into(),
            options: vec![]
        }]
    );
    assert!(parse_exportfs_verbose("").is_empty());
}

#[test]
fn bad_settings_are_refused_with_the_field() {
    let check = |edit: &dyn Fn(&mut NfsdConfig), field: &str| {
        let mut c = NfsdConfig::new("/srv/export", "nfs-vip");
        edit(&mut c);
        match Nfsd::new(c) {
            Err(NfsdError::InvalidConfig { field: f, reason }) => assert_eq!(f, field, "{reason}"),
            other => panic!("{field}: {other:?}"),
        }
    };
    check(&|c| c.lease_secs = 5, "lease_secs");
    check(&|c| c.grace_secs = 4000, "grace_secs");
    check(&|c| (c.lease_secs, c.grace_secs) = (30, 15), "grace_secs");
    check(&|c| c.threads = 0, "threads");
    check(
        &|c| c.server_scope = "bad name; reboot".into(),
        "server_scope",
    );
    check(&|c| c.server_scope = "x".repeat(65), "server_scope");
    check(&|c| c.clients = "* evil(rw)".into(), "clients");
    check(&|c| c.options.push("fsid=9".into()), "options");
    check(&|c| c.options.push("rw,async".into()), "options");
    check(&|c| c.export_path = "relative".into(), "export_path");

    let err = Nfsd::new({
        let mut c = NfsdConfig::new("/srv/export", "nfs-vip");
        c.lease_secs = 5;
        c
    })
    .unwrap_err();
    assert!(err.to_string().contains("5 s"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Steps against doubles
// ---------------------------------------------------------------------------------------

fn double(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/doubles")
        .join(name)
}

/// A tempdir with the doubles linked in under their tools' names (they log to
/// `argv.log` there), a fake /proc/fs/nfsd with nfsd stopped, and an export dir.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        for (double_name, tool) in [
            ("fake-rpc-nfsd-records-hostname.sh", "rpc.nfsd"),
            ("fake-exportfs.sh", "exportfs"),
            ("fake-nfsdcld.sh", "nfsdcld"),
            ("fake-records-argv.sh", "modprobe"),
            ("fake-records-argv.sh", "mount"),
        ] {
            std::os::unix::fs::symlink(double(double_name), dir.path().join(tool)).unwrap();
        }
        let procfs = dir.path().join("proc-fs-nfsd");
        std::fs::create_dir(&procfs).unwrap();
        for (file, content) in [
            ("threads", "0\n"),
            ("nfsv4leasetime", "90\n"),
            ("nfsv4gracetime", "90\n"),
        ] {
            std::fs::write(procfs.join(file), content).unwrap();
        }
        std::fs::create_dir(dir.path().join("export")).unwrap();
        World { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> NfsdConfig {
        let p = self.path();
        let mut c = NfsdConfig::new(p.join("export"), "nfs-vip.example.com");
        c.lease_secs = 15;
        c.grace_secs = 20;
        c.cld_dir = p.join("var-lib-nfs/nfsdcld");
        c.procfs = p.join("proc-fs-nfsd");
        c.rpc_pipefs = p.join("rpc_pipefs");
        c.timeout = Duration::from_secs(10);
        c.tools = NfsdTools {
            rpc_nfsd: p.join("rpc.nfsd"),
            exportfs: p.join("exportfs"),
            nfsdcld: p.join("nfsdcld"),
            modprobe: p.join("modprobe"),
            mount: p.join("mount"),
            ..NfsdTools::default()
        };
        c
    }

    fn nfsd(&self) -> Nfsd {
        Nfsd::new(self.config()).unwrap()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("argv.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn export(&self) -> String {
        self.path().join("export").display().to_string()
    }
}

#[tokio::test]
async fn write_times_writes_both_files_before_start_only() {
    let w = World::new();
    let nfsd = w.nfsd();
    nfsd.write_times().await.unwrap();
    let procfs = w.path().join("proc-fs-nfsd");
    assert_eq!(
        std::fs::read_to_string(procfs.join("nfsv4leasetime")).unwrap(),
        "15\n"
    );
    assert_eq!(
        std::fs::read_to_string(procfs.join("nfsv4gracetime")).unwrap(),
        "20\n"
    );

    std::fs::write(procfs.join("threads"), "8\n").unwrap();
    assert_eq!(nfsd.threads().await.unwrap(), 8);
    let err = nfsd.write_times().await.unwrap_err();
    assert!(
        matches!(err, NfsdError::AlreadyRunning { threads: 8 }),
        "{err}"
    );

    std::fs::write(procfs.join("threads"), "lots\n").unwrap();
    assert!(matches!(
        nfsd.threads().await.unwrap_err(),
        NfsdError::BadProcValue { .. }
    ));
}

#[tokio::test]
async fn start_runs_rpc_nfsd_under_the_shared_hostname() {
    let w = World::new();
    let own_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    w.nfsd().start().await.unwrap();
    assert_eq!(
        w.log(),
        ["rpc.nfsd nfs-vip.example.com -N 3 -N 4 -V 4.1 -V 4.2 8"]
    );
    // The namespace kept the node's own hostname untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        own_hostname
    );
}

#[tokio::test]
async fn export_unexport_stop_and_is_exported() {
    let w = World::new();
    let nfsd = w.nfsd();
    nfsd.export().await.unwrap();
    nfsd.unexport().await.unwrap();
    nfsd.stop().await.unwrap();
    let export = w.export();
    assert_eq!(
        w.log(),
        [
            format!("exportfs -i -o rw,sync,insecure,no_subtree_check,fsid=1 *:{export}"),
            format!("exportfs -u *:{export}"),
            // The rpc.nfsd double logs the hostname it sees; stop needs no namespace.
            format!("rpc.nfsd {} 0", own_hostname()),
            "exportfs -ua".to_owned(),
        ]
    );

    assert!(!nfsd.is_exported().await.unwrap(), "nothing exported yet");
    let table = format!(
        "{export}\n\t\t<world>(sync,wdelay,hide,no_subtree_check,fsid=1,sec=sys,rw,insecure,root_squash,no_all_squash)\n"
    );
    std::fs::write(w.path().join("exportfs-v.txt"), &table).unwrap();
    assert!(nfsd.is_exported().await.unwrap());
    // Another fsid hands out other file handles: not our export.
    std::fs::write(
        w.path().join("exportfs-v.txt"),
        table.replace("fsid=1", "fsid=2"),
    )
    .unwrap();
    assert!(!nfsd.is_exported().await.unwrap());
}

fn own_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_failing_tool_names_the_step() {
    let w = World::new();
    let mut c = w.config();
    c.tools.exportfs = "/nonexistent/exportfs".into();
    let err = Nfsd::new(c).unwrap().export().await.unwrap_err();
    assert!(
        matches!(
            &err,
            NfsdError::Command {
                step: "export",
                source: CommandError::Spawn { .. }
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn keep_warm_loads_the_module_and_mounts_the_control_fs_only_if_needed() {
    let w = World::new();
    // rpc_pipefs is not mounted yet (no <rpc_pipefs>/nfsd): keep_warm mounts it.
    w.nfsd().keep_warm().await.unwrap();
    let pipes = w.path().join("rpc_pipefs").display().to_string();
    assert_eq!(
        w.log(),
        ["nfsd".to_owned(), format!("-t rpc_pipefs sunrpc {pipes}")]
    );

    std::fs::create_dir_all(w.path().join("rpc_pipefs/nfsd")).unwrap();
    std::fs::remove_file(w.path().join("proc-fs-nfsd/threads")).unwrap();
    w.nfsd().keep_warm().await.unwrap();
    let procfs = w.path().join("proc-fs-nfsd").display().to_string();
    assert_eq!(
        w.log(),
        [
            "nfsd".to_owned(),
            format!("-t rpc_pipefs sunrpc {pipes}"),
            "nfsd".to_owned(),
            format!("-t nfsd nfsd {procfs}")
        ]
    );
}

#[tokio::test]
async fn prepare_state_dir_links_the_cld_dir_to_the_replicated_fs() {
    let w = World::new();
    let c = w.config();
    let nfsd = w.nfsd();
    nfsd.prepare_state_dir().await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&c.state_dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::read_link(&c.cld_dir).unwrap(), c.state_dir);
    // Idempotent.
    nfsd.prepare_state_dir().await.unwrap();
    assert_eq!(std::fs::read_link(&c.cld_dir).unwrap(), c.state_dir);

    // A link elsewhere is replaced.
    std::fs::remove_file(&c.cld_dir).unwrap();
    std::os::unix::fs::symlink("/elsewhere", &c.cld_dir).unwrap();
    nfsd.prepare_state_dir().await.unwrap();
    assert_eq!(std::fs::read_link(&c.cld_dir).unwrap(), c.state_dir);

    // An empty local directory (as nfs-kernel-server's package leaves it) is replaced.
    std::fs::remove_file(&c.cld_dir).unwrap();
    std::fs::create_dir(&c.cld_dir).unwrap();
    nfsd.prepare_state_dir().await.unwrap();
    assert_eq!(std::fs::read_link(&c.cld_dir).unwrap(), c.state_dir);

    // A local database is moved aside, not deleted.
    std::fs::remove_file(&c.cld_dir).unwrap();
    std::fs::create_dir(&c.cld_dir).unwrap();
    std::fs::write(c.cld_dir.join("main.sqlite"), "local").unwrap();
    nfsd.prepare_state_dir().await.unwrap();
    assert_eq!(std::fs::read_link(&c.cld_dir).unwrap(), c.state_dir);
    let aside = w.path().join("var-lib-nfs/nfsdcld.hanfs-local/main.sqlite");
    assert_eq!(std::fs::read_to_string(aside).unwrap(), "local");

    // A plain file in the way is an error, not silently removed.
    std::fs::remove_file(&c.cld_dir).unwrap();
    std::fs::write(&c.cld_dir, "?").unwrap();
    let err = nfsd.prepare_state_dir().await.unwrap_err();
    assert!(matches!(err, NfsdError::CldDirInTheWay { .. }), "{err}");
}

#[tokio::test]
async fn nfsdcld_is_supervised_and_an_early_exit_is_reported() {
    let w = World::new();
    let c = w.config();
    let cld = w.nfsd().start_cld().await.unwrap();
    let pid = cld.pid().unwrap();
    assert_eq!(
        w.log(),
        [format!(
            "nfsdcld -F -p {} -s {}",
            c.rpc_pipefs.display(),
            c.cld_dir.display()
        )]
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    cld.stop().await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "nfsdcld {pid} still there"
    );

    std::fs::write(w.path().join("nfsdcld-fails"), "").unwrap();
    let err = w.nfsd().start_cld().await.unwrap_err();
    match err {
        NfsdError::DaemonExited { stderr, .. } => {
            assert!(stderr.contains("cannot open database"), "{stderr}")
        }
        other => panic!("wrong error: {other:?}"),
    }
}
