//! The StorageClass `subDir` template expander (`controller::params`): its inputs are a
//! cluster admin's template and PVC names and namespaces that any namespace user picks.
//!
//! Input: NUL-separated `template, pvc name, pvc namespace, pv name, cluster id`. Beyond
//! "no panic": whatever renders is one safe directory whose volume id parses back and
//! fits the id limit, so a template can never reach outside `<export>/volumes/`.
#![no_main]

use common::ids::{ClusterId, MAX_ID_LEN, VolumeDir, VolumeId};
use controller::params::{ExportConfig, parse_volume_params, render_sub_dir};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or_default();
    let mut params = HashMap::from([("subDir".to_owned(), template.to_owned())]);
    for key in [
        "csi.storage.k8s.io/pvc/name",
        "csi.storage.k8s.io/pvc/namespace",
        "csi.storage.k8s.io/pv/name",
    ] {
        if let Some(value) = parts.next().filter(|v| !v.is_empty()) {
            params.insert(key.to_owned(), value.to_owned());
        }
    }
    let cluster = parts.next().unwrap_or("test");
    let Ok(cluster) = ClusterId::parse(cluster) else {
        return;
    };
    let Ok(parsed) = parse_volume_params(&params, &ExportConfig::default()) else {
        return;
    };
    if let Ok(dir) = render_sub_dir(template, &parsed, &cluster) {
        let again = VolumeDir::parse(dir.as_str())
            .unwrap_or_else(|e| panic!("rendered {dir:?} is not a directory name: {e}"));
        assert!(again.as_str() != "." && again.as_str() != "..");
        assert!(!again.as_str().contains(['/', '\0']));
        let id = VolumeId::new(cluster.clone(), dir).to_string();
        assert!(id.len() <= MAX_ID_LEN, "{id:?} is too long");
        assert!(VolumeId::parse(&id, &cluster).is_ok(), "{id:?} does not parse");
    }
});
