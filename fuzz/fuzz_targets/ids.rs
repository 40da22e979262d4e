//! Volume and snapshot ids, request names and the name → directory mapping
//! (`common::ids`): what every CSI call parses first.
//!
//! Input: `<cluster>\n<text>`. Beyond "no panic", a parsed id must print back to exactly
//! its input (so no two spellings name one directory), and every valid request name must
//! map to a directory whose id parses again and fits the id limit.
#![no_main]

use common::ids::{
    ClusterId, MAX_ID_LEN, RequestName, SnapshotId, SnapshotName, VolumeDir, VolumeId,
    dir_name_for,
};
use libfuzzer_sys::fuzz_target;

/// What a validated name must never hold: the kernel and the export tree read these.
fn assert_safe_component(name: &str) {
    assert!(!name.is_empty());
    assert!(name != "." && name != "..", "{name:?}");
    assert!(
        !name.contains(['/', '\0', '\n', ',', ' ']),
        "{name:?} got through"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cluster, rest) = text.split_once('\n').unwrap_or(("test", text));
    let Ok(cluster) = ClusterId::parse(cluster) else {
        return;
    };
    assert_safe_component(cluster.as_str());

    if let Ok(id) = VolumeId::parse(rest, &cluster) {
        assert_eq!(id.to_string(), rest);
        assert!(rest.len() <= MAX_ID_LEN);
        assert_safe_component(id.dir.as_str());
    }
    if let Ok(id) = SnapshotId::parse(rest, &cluster) {
        assert_eq!(id.to_string(), rest);
        assert_safe_component(id.name.as_str());
    }
    if let Ok(dir) = VolumeDir::parse(rest) {
        assert_safe_component(dir.as_str());
    }
    if let Ok(name) = SnapshotName::parse(rest) {
        assert_safe_component(name.as_str());
    }
    if let Ok(name) = RequestName::parse(rest) {
        let dir = dir_name_for(&cluster, &name);
        // Deterministic: a retried CreateVolume must land on the same directory.
        assert_eq!(dir, dir_name_for(&cluster, &name));
        let dir = VolumeDir::parse(&dir)
            .unwrap_or_else(|e| panic!("{rest:?} maps to an invalid directory {dir:?}: {e}"));
        let id = VolumeId::new(cluster.clone(), dir).to_string();
        assert!(id.len() <= MAX_ID_LEN, "{id:?} is too long");
        let parsed = VolumeId::parse(&id, &cluster)
            .unwrap_or_else(|e| panic!("the id {id:?} made for {rest:?} does not parse: {e}"));
        assert_eq!(parsed.to_string(), id);
    }
});
