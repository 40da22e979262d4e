//! One line of `drbdsetup events2` (`drbd-backend`'s parser): drbdsetup's output is
//! trusted less than its exit code, and a newer drbd-utils may print anything.
//!
//! Beyond "no panic": parsing is deterministic, a field read back is a value the line
//! holds, and whitespace padding does not change what a line means.
#![no_main]

use drbd_backend::drivers::drbd::{EventKind, parse_events2_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_events2_line(line);
    assert_eq!(parsed, parse_events2_line(line));
    let padded = format!("  {line}\t");
    assert_eq!(
        parsed.as_ref().ok(),
        parse_events2_line(&padded).as_ref().ok(),
        "padding changed the meaning of {line:?}"
    );
    if let Ok(event) = parsed
        && let EventKind::Object { fields, .. } = &event.kind
    {
        for (key, value) in fields.iter() {
            assert!(line.contains(key), "{key:?} is not in {line:?}");
            assert!(line.contains(value), "{value:?} is not in {line:?}");
            assert!(event.field(key).is_some());
        }
    }
});
