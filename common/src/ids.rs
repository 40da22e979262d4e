//! Validated names and self-describing ids.
//!
//! A volume lives in `<export>/volumes/<dir>`; its CSI id is `v1/<cluster>/<dir>`, so
//! every CSI call can find it without any state. A snapshot lives in
//! `<export>/snapshots/<name>` with the id `s1/<cluster>/<name>`. Ids stay within the
//! 128 bytes the CSI spec recommends for ids.
//!
//! Names are restricted to `[A-Za-z0-9._-]`, starting with a letter or digit: no `/`,
//! no `..`, no hidden files, nothing a shell or NFS path could misread.

use std::fmt;
use thiserror::Error;

/// Longest CSI id we hand out (the CSI spec's recommended size limit for ids).
pub const MAX_ID_LEN: usize = 128;
/// Longest CSI request name we accept (a Kubernetes object name is at most 253).
pub const MAX_REQUEST_NAME_LEN: usize = 253;
/// Longest cluster id.
pub const MAX_CLUSTER_ID_LEN: usize = 32;

const VOLUME_ID_VERSION: &str = "v1";
const SNAPSHOT_ID_VERSION: &str = "s1";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The name or id is empty.
    #[error("{what} is empty")]
    Empty { what: &'static str },
    /// The name is longer than allowed.
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A character outside `[A-Za-z0-9._-]`, or a leading `.`/`-`/`_`.
    #[error(
        "{what} {shown:?} may only contain letters, digits, '.', '_' and '-', and must start with a letter or digit"
    )]
    BadCharacters { what: &'static str, shown: String },
    /// Not of the form `v1/<cluster>/<dir>` (or `s1/...` for snapshots).
    #[error("{what} {shown:?} is not an id made by hanfs (expected {expected})")]
    NotOurs {
        what: &'static str,
        shown: String,
        expected: &'static str,
    },
    /// Made by hanfs for another cluster.
    #[error(
        "{what} {shown:?} belongs to hanfs cluster {their_cluster:?}, but this driver serves cluster {our_cluster:?}"
    )]
    OtherCluster {
        what: &'static str,
        shown: String,
        their_cluster: String,
        our_cluster: String,
    },
}

/// Shows at most 80 characters of untrusted input in an error message.
fn shown(input: &str) -> String {
    let mut s: String = input.chars().take(80).collect();
    if s.len() < input.len() {
        s.push('…');
    }
    s
}

fn check_name(what: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok {
        return Err(IdError::BadCharacters {
            what,
            shown: shown(value),
        });
    }
    Ok(())
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, IdError> {
                check_name($what, value, $max)?;
                Ok(Self(value.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }
    };
}

validated_name!(
    /// The id of one hanfs installation; part of every volume id so that ids from
    /// another cluster are recognised instead of misread.
    ClusterId, "cluster id", MAX_CLUSTER_ID_LEN
);
validated_name!(
    /// A directory name under `<export>/volumes/`: one path component, safe to join.
    VolumeDir, "volume directory name", MAX_ID_LEN
);
validated_name!(
    /// A directory name under `<export>/snapshots/`: one path component, safe to join.
    SnapshotName, "snapshot name", MAX_ID_LEN
);
validated_name!(
    /// A name given in a CSI CreateVolume/CreateSnapshot request.
    RequestName, "name", MAX_REQUEST_NAME_LEN
);

/// Turns a CSI request name into a directory name that fits into an id of at most
/// [`MAX_ID_LEN`] bytes for `cluster`. Short names are kept as they are (so the
/// directory is recognisable, e.g. `pvc-<uuid>`); longer names are cut and get a hash
/// of the whole name appended, so the mapping stays deterministic (idempotent creates)
/// and distinct names stay distinct.
pub fn dir_name_for(cluster: &ClusterId, name: &RequestName) -> String {
    let budget = MAX_ID_LEN - VOLUME_ID_VERSION.len() - cluster.as_str().len() - 2;
    let name = name.as_str();
    if name.len() <= budget {
        return name.to_owned();
    }
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
        .simple()
        .to_string();
    let hash = &hash[..16];
    // The name is ASCII (validated), so byte slicing is on character boundaries.
    let keep = budget - hash.len() - 1;
    format!("{}-{hash}", name[..keep].trim_end_matches(['.', '-', '_']))
}

/// `v1/<cluster>/<dir>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeId {
    pub cluster: ClusterId,
    pub dir: VolumeDir,
}

/// `s1/<cluster>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotId {
    pub cluster: ClusterId,
    pub name: SnapshotName,
}

/// Splits `<version>/<cluster>/<name>` and checks length, version and cluster: every
/// hanfs id (volume, snapshot, group snapshot) is parsed through here, so they all
/// refuse the same things with the same errors.
pub fn split_id<'a>(
    what: &'static str,
    expected: &'static str,
    version: &str,
    id: &'a str,
    ours: &ClusterId,
) -> Result<&'a str, IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { what });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            len: id.len(),
            max: MAX_ID_LEN,
        });
    }
    let not_ours = || IdError::NotOurs {
        what,
        shown: shown(id),
        expected,
    };
    let mut parts = id.splitn(3, '/');
    let (Some(v), Some(cluster), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(not_ours());
    };
    if v != version {
        return Err(not_ours());
    }
    if cluster != ours.as_str() {
        return Err(IdError::OtherCluster {
            what,
            shown: shown(id),
            their_cluster: shown(cluster),
            our_cluster: ours.to_string(),
        });
    }
    Ok(name)
}

impl VolumeId {
    pub fn new(cluster: ClusterId, dir: VolumeDir) -> Self {
        Self { cluster, dir }
    }

    /// Parses an id handed to this driver, which serves `ours`.
    pub fn parse(id: &str, ours: &ClusterId) -> Result<Self, IdError> {
        let dir = split_id(
            "volume id",
            "v1/<cluster>/<dir>",
            VOLUME_ID_VERSION,
            id,
            ours,
        )?;
        Ok(Self {
            cluster: ours.clone(),
            dir: VolumeDir::parse(dir)?,
        })
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{VOLUME_ID_VERSION}/{}/{}", self.cluster, self.dir)
    }
}

impl SnapshotId {
    pub fn new(cluster: ClusterId, name: SnapshotName) -> Self {
        Self { cluster, name }
    }

    pub fn parse(id: &str, ours: &ClusterId) -> Result<Self, IdError> {
        let name = split_id(
            "snapshot id",
            "s1/<cluster>/<name>",
            SNAPSHOT_ID_VERSION,
            id,
            ours,
        )?;
        Ok(Self {
            cluster: ours.clone(),
            name: SnapshotName::parse(name)?,
        })
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SNAPSHOT_ID_VERSION}/{}/{}", self.cluster, self.name)
    }
}

impl IdError {
    /// True when the id is well-formed but names nothing hanfs could have made for this
    /// cluster: callers answer NOT_FOUND for those (and OK for deletes), and
    /// INVALID_ARGUMENT for ids that are malformed in a way only an attacker or a bug
    /// produces (traversal, bad characters).
    pub fn means_not_found(&self) -> bool {
        matches!(self, IdError::NotOurs { .. } | IdError::OtherCluster { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cluster() -> ClusterId {
        ClusterId::parse("prod-1").unwrap()
    }

    #[test]
    fn volume_id_round_trips() {
        let id = VolumeId::new(cluster(), VolumeDir::parse("pvc-1234").unwrap());
        assert_eq!(id.to_string(), "v1/prod-1/pvc-1234");
        assert_eq!(
            VolumeId::parse("v1/prod-1/pvc-1234", &cluster()).unwrap(),
            id
        );
    }

    #[test]
    fn traversal_and_separators_are_rejected_as_bad_characters() {
        for bad in [
            "..", ".", "../etc", "a/b", "a\0b", ".hidden", "-x", "a b", "ü",
        ] {
            let err = VolumeDir::parse(bad).unwrap_err();
            assert!(
                matches!(err, IdError::BadCharacters { .. }),
                "{bad:?}: {err:?}"
            );
        }
        let err = VolumeId::parse("v1/prod-1/../../etc", &cluster()).unwrap_err();
        assert!(matches!(err, IdError::BadCharacters { .. }), "{err:?}");
        assert!(!err.means_not_found());
    }

    #[test]
    fn huge_names_are_rejected_with_the_limit() {
        let name = "a".repeat(4096);
        let err = RequestName::parse(&name).unwrap_err();
        assert_eq!(
            err,
            IdError::TooLong {
                what: "name",
                len: 4096,
                max: MAX_REQUEST_NAME_LEN
            }
        );
        // The message shows the limit and not the whole input.
        assert!(err.to_string().contains("253"));
        let err = VolumeId::parse(&format!("v1/prod-1/{name}"), &cluster()).unwrap_err();
        assert!(matches!(err, IdError::TooLong { .. }));
    }

    #[test]
    fn foreign_and_other_cluster_ids_mean_not_found() {
        let err = VolumeId::parse("fake-vol-id-1234", &cluster()).unwrap_err();
        assert!(matches!(err, IdError::NotOurs { .. }) && err.means_not_found());
        let err = VolumeId::parse("v1/other/pvc-1", &cluster()).unwrap_err();
        assert!(matches!(err, IdError::OtherCluster { .. }) && err.means_not_found());
        assert!(err.to_string().contains("\"other\""), "{err}");
        // A snapshot id is not a volume id.
        assert!(
            VolumeId::parse("s1/prod-1/snap", &cluster())
                .unwrap_err()
                .means_not_found()
        );
    }

    #[test]
    fn long_request_names_map_to_distinct_dirs_that_fit_an_id() {
        let a = RequestName::parse(&format!("{}-A", "x".repeat(126))).unwrap();
        let b = RequestName::parse(&format!("{}-B", "x".repeat(126))).unwrap();
        let (da, db) = (dir_name_for(&cluster(), &a), dir_name_for(&cluster(), &b));
        assert_ne!(da, db);
        assert_eq!(da, dir_name_for(&cluster(), &a), "deterministic");
        let id = VolumeId::new(cluster(), VolumeDir::parse(&da).unwrap()).to_string();
        assert_eq!(id.len(), MAX_ID_LEN);
    }

    proptest! {
        #[test]
        fn every_valid_request_name_maps_to_a_valid_dir_whose_id_parses(
            name in "[A-Za-z0-9][A-Za-z0-9._-]{0,252}",
            cluster in "[a-z0-9][a-z0-9-]{0,31}",
        ) {
            let cluster = ClusterId::parse(&cluster).unwrap();
            let name = RequestName::parse(&name).unwrap();
            let dir = VolumeDir::parse(&dir_name_for(&cluster, &name)).unwrap();
            let id = VolumeId::new(cluster.clone(), dir).to_string();
            prop_assert!(id.len() <= MAX_ID_LEN);
            prop_assert_eq!(VolumeId::parse(&id, &cluster).unwrap().to_string(), id);
        }

        #[test]
        fn parsing_arbitrary_input_never_panics_and_never_yields_a_path_escape(input in ".{0,300}") {
            if let Ok(id) = VolumeId::parse(&input, &cluster()) {
                prop_assert!(!id.dir.as_str().contains('/'));
                prop_assert!(!id.dir.as_str().starts_with('.'));
            }
        }
    }
}
