//! The volume and snapshot record decoder (`volumes::meta`): records live on the
//! replicated disk, which a crash may tear and an admin may edit by hand.
//!
//! Beyond "no panic": whatever decodes encodes again and decodes to the same record, so
//! a record the backend rewrites never changes meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volumes::meta::{self, SnapshotMeta, VolumeMeta};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = meta::decode::<VolumeMeta>(data) {
        let bytes = serde_json::to_vec_pretty(&record).expect("a decoded record encodes");
        assert_eq!(meta::decode::<VolumeMeta>(&bytes).ok(), Some(record));
    }
    if let Ok(record) = meta::decode::<SnapshotMeta>(data) {
        let bytes = serde_json::to_vec_pretty(&record).expect("a decoded record encodes");
        assert_eq!(meta::decode::<SnapshotMeta>(&bytes).ok(), Some(record));
    }
    let _ = meta::decode::<u32>(data);
});
