//! The NFS mount-option builder (`node::mount_spec::nfs`): StorageClass `mountOptions`
//! and the volume context's server/share become one comma-joined mount(2) data string,
//! so one unchecked character would add options the admin never wrote.
//!
//! Beyond "no panic": the data string splits (at commas outside SELinux quotes) into
//! exactly the options given (after defaults are overridden) plus the driver's `addr=`,
//! and the source's path is the volume's path.
#![no_main]

use common::ids::VolumeDir;
use libfuzzer_sys::fuzz_target;
use node::mount_spec::{self, MountKind};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

const DEFAULTS: &[&str] = &[
    "vers=4.2",
    "proto=tcp",
    "hard",
    "timeo=50",
    "retrans=2",
    "noresvport",
];

/// Splits at the commas the kernel splits at: a double-quoted span is one piece.
fn kernel_split(data: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in data.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.last_mut().map(|s| s.push(c));
            }
            ',' if !quoted => out.push(String::new()),
            c => {
                out.last_mut().map(|s| s.push(c));
            }
        }
    }
    out
}

fuzz_target!(|input: (Vec<String>, Option<String>, Option<String>, bool)| {
    let (mount_flags, server, share, readonly) = input;
    let mut context = HashMap::new();
    if let Some(server) = server {
        context.insert("server".to_owned(), server);
    }
    if let Some(share) = share {
        context.insert("share".to_owned(), share);
    }
    let Ok(location) = mount_spec::nfs_location(&context, Some("10.0.0.1"), "/export") else {
        return;
    };
    let addr = location
        .server_ip()
        .unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    let dir = VolumeDir::parse("pvc-1").expect("a valid literal");
    let path = location.volume_path(&dir);
    let base: Vec<String> = DEFAULTS.iter().map(|s| s.to_string()).collect();
    let Ok(spec) = mount_spec::nfs(&location, addr, &path, &base, &mount_flags, readonly) else {
        return;
    };
    let MountKind::Nfs4 { data } = &spec.kind else {
        panic!("an NFS spec that is not nfs4: {spec:?}");
    };
    assert!(!data.contains(['\n', '\0', ' ']), "{data:?}");
    let pieces = kernel_split(data);
    let addr_option = format!("addr={addr}");
    assert_eq!(pieces.last(), Some(&addr_option), "{data:?}");
    assert_eq!(
        pieces.iter().filter(|p| p.starts_with("addr=")).count(),
        1,
        "{data:?}"
    );
    // Each piece is an option the caller or the defaults gave, whole.
    for piece in &pieces[..pieces.len() - 1] {
        assert!(
            mount_flags.contains(piece) || DEFAULTS.contains(&piece.as_str()),
            "{piece:?} in {data:?} was not given by {mount_flags:?}"
        );
    }
    if readonly {
        assert!(spec.read_only());
    }
    assert_eq!(mount_spec::nfs_source_path(&spec.source), Some(path.as_str()));
});
