//! `/proc/self/mountinfo` (`common::mountinfo`): the node decides from it whether a
//! target is mounted, and by what; a mount point a tenant named may hold any byte.
//!
//! Beyond "no panic": the whole-table parse is the line parser applied per line (bad
//! lines skipped, never merged), the strict parse fails exactly when some line does,
//! and the lookups over what was parsed do not panic.
#![no_main]

use common::mountinfo::{self, parse, parse_line, parse_strict};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let per_line: Vec<_> = data
        .split(|b| *b == b'\n')
        // Blank (also whitespace-only) lines are no entries, as in the parser.
        .filter(|l| !l.trim_ascii().is_empty())
        .map(parse_line)
        .collect();
    let good: Vec<_> = per_line.iter().filter_map(|r| r.as_ref().ok()).collect();
    let table = parse(data);
    assert_eq!(table.len(), good.len());
    for (a, b) in table.iter().zip(good) {
        assert_eq!(a.mount_point, b.mount_point);
        assert_eq!(a.mount_options, b.mount_options);
        assert_eq!(a.super_options, b.super_options);
    }
    assert_eq!(
        parse_strict(data).is_ok(),
        per_line.iter().all(Result::is_ok)
    );
    for m in &table {
        let _ = m.device();
        let _ = m.read_only();
        let _ = m.is_nfs();
        let _ = mountinfo::topmost_at(&table, &m.mount_point);
        let _ = mountinfo::origin_of(&table, &m.mount_point);
    }
    let _ = mountinfo::mounts_below(&table, Path::new("/"));
});
