//! What is wrong with a volume, from what the store observed: pure.
//!
//! The observations (a stat of the directory, its record, its project id and quota)
//! are made by [`crate::VolumeStore::volume_health`]; the judgement is here so every
//! combination is tested without a filesystem that can produce it (e.g. quota
//! accounting switched off after volumes were made with limits).

/// CSI v1.13 `VolumeHealthErrorType`, without UNKNOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Usable, but not as promised.
    Degraded,
    /// Clients cannot use it.
    Inaccessible,
    /// Its data is gone or suspected gone.
    DataLoss,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProblem {
    pub status: HealthStatus,
    /// CamelCase, for machines; unique per status within one report.
    pub reason: &'static str,
    pub message: String,
}

/// What a stat of `<export>/volumes/<dir>` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    Directory,
    Missing,
    NotADirectory,
    /// The stat failed otherwise (EIO on a failing disk, EACCES, ...).
    Unreadable(String),
}

/// The quota side, for a volume whose record names a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaObserved {
    /// The export enforces project quotas now.
    pub enforced: bool,
    /// The directory's project id (FS_IOC_FSGETXATTR), or why it could not be read.
    pub dir_project: Result<u32, String>,
    /// The project's hard limit in bytes (0 = none), or why it could not be read.
    pub limit_bytes: Result<u64, String>,
    /// Bytes charged to the project, or why it could not be read.
    pub used_bytes: Result<u64, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub dir: DirState,
    /// The record's (capacity, project id), `None` when there is no record.
    pub record: Option<(i64, u32)>,
    /// Only when the directory exists, the record names a project (id ≠ 0).
    pub quota: Option<QuotaObserved>,
}

fn problem(status: HealthStatus, reason: &'static str, message: String) -> HealthProblem {
    HealthProblem {
        status,
        reason,
        message,
    }
}

/// The volume's problems; empty when healthy. `None` when there is no such volume at
/// all (no directory and no record).
pub fn judge(o: &Observed) -> Option<Vec<HealthProblem>> {
    use HealthStatus::*;
    let mut out = Vec::new();
    match (&o.dir, &o.record) {
        (DirState::Missing, None) => return None,
        (DirState::Missing, Some(_)) => {
            let message =
                "the volume's directory is gone from the export (removed behind hanfs's back?)"
                    .to_string();
            out.push(problem(Inaccessible, "VolumeDirectoryMissing", message.clone()));
            out.push(problem(DataLoss, "VolumeDirectoryMissing", message));
            return Some(out);
        }
        (DirState::NotADirectory, _) => {
            out.push(problem(
                Inaccessible,
                "NotADirectory",
                "something other than a directory sits at the volume's path".into(),
            ));
            return Some(out);
        }
        (DirState::Unreadable(why), _) => {
            out.push(problem(
                Inaccessible,
                "VolumeUnreadable",
                format!("the volume's directory cannot be read: {why}"),
            ));
            return Some(out);
        }
        (DirState::Directory, None) => out.push(problem(
            Degraded,
            "NoRecord",
            "the volume has no hanfs record (made by hand, or the record was lost): its size and on-delete policy are unknown".into(),
        )),
        (DirState::Directory, Some(_)) => {}
    }
    let (Some((capacity, project)), Some(q)) = (o.record, &o.quota) else {
        return Some(out);
    };
    if !q.enforced {
        out.push(problem(
            Degraded,
            "QuotaNotEnforced",
            format!("the volume was made with a {capacity}-byte project quota, but the export no longer enforces project quotas"),
        ));
        return Some(out);
    }
    match &q.dir_project {
        Ok(id) if *id == project => {}
        Ok(id) => out.push(problem(
            Degraded,
            "QuotaProjectMismatch",
            format!("the directory belongs to project {id}, its record says {project}: its size is not enforced"),
        )),
        Err(e) => out.push(problem(
            Degraded,
            "QuotaUnreadable",
            format!("cannot read the directory's project id: {e}"),
        )),
    }
    match &q.limit_bytes {
        Ok(0) => out.push(problem(
            Degraded,
            "QuotaLimitMissing",
            format!("project {project} has no limit: its {capacity}-byte size is not enforced"),
        )),
        Ok(_) => {}
        Err(e) => out.push(problem(
            Degraded,
            "QuotaUnreadable",
            format!("cannot read project {project}'s quota: {e}"),
        )),
    }
    if let (Ok(used), Ok(limit)) = (&q.used_bytes, &q.limit_bytes)
        && *limit > 0
        && used >= limit
    {
        out.push(problem(
            Degraded,
            "VolumeFull",
            format!("{used} of {limit} bytes used: writes fail with ENOSPC until it is expanded or emptied"),
        ));
    }
    // Two failed reads give one QuotaUnreadable (CSI: one entry per status and reason).
    let mut seen = Vec::new();
    out.retain(|p| {
        let key = (p.status, p.reason);
        let first = !seen.contains(&key);
        seen.push(key);
        first
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::*;

    fn quota(enforced: bool, project: Result<u32, String>, limit: u64, used: u64) -> QuotaObserved {
        QuotaObserved {
            enforced,
            dir_project: project,
            limit_bytes: Ok(limit),
            used_bytes: Ok(used),
        }
    }

    fn reasons(o: &Observed) -> Vec<(HealthStatus, &'static str)> {
        judge(o)
            .unwrap()
            .iter()
            .map(|p| (p.status, p.reason))
            .collect()
    }

    #[test]
    fn a_missing_volume_is_no_volume_unless_its_record_remains() {
        let gone = Observed {
            dir: DirState::Missing,
            record: None,
            quota: None,
        };
        assert_eq!(judge(&gone), None);
        let lost = Observed {
            record: Some((1 << 20, 0)),
            ..gone
        };
        assert_eq!(
            reasons(&lost),
            [
                (Inaccessible, "VolumeDirectoryMissing"),
                (DataLoss, "VolumeDirectoryMissing")
            ]
        );
    }

    #[test]
    fn directory_states() {
        let healthy = Observed {
            dir: DirState::Directory,
            record: Some((1 << 20, 0)),
            quota: None,
        };
        assert_eq!(judge(&healthy), Some(Vec::new()));
        let by_hand = Observed {
            record: None,
            ..healthy.clone()
        };
        assert_eq!(reasons(&by_hand), [(Degraded, "NoRecord")]);
        let eio = Observed {
            dir: DirState::Unreadable("Input/output error".into()),
            ..healthy.clone()
        };
        assert_eq!(reasons(&eio), [(Inaccessible, "VolumeUnreadable")]);
        let file = Observed {
            dir: DirState::NotADirectory,
            ..healthy
        };
        assert_eq!(reasons(&file), [(Inaccessible, "NotADirectory")]);
    }

    #[test]
    fn quota_states() {
        let with = |q: QuotaObserved| Observed {
            dir: DirState::Directory,
            record: Some((1000, 7)),
            quota: Some(q),
        };
        assert!(reasons(&with(quota(true, Ok(7), 1024, 10))).is_empty());
        assert_eq!(
            reasons(&with(quota(false, Ok(7), 0, 0))),
            [(Degraded, "QuotaNotEnforced")]
        );
        assert_eq!(
            reasons(&with(quota(true, Ok(8), 1024, 10))),
            [(Degraded, "QuotaProjectMismatch")]
        );
        assert_eq!(
            reasons(&with(quota(true, Ok(7), 0, 10))),
            [(Degraded, "QuotaLimitMissing")]
        );
        assert_eq!(
            reasons(&with(quota(true, Ok(7), 1024, 1024))),
            [(Degraded, "VolumeFull")]
        );
        let unreadable = QuotaObserved {
            enforced: true,
            dir_project: Err("EIO".into()),
            limit_bytes: Err("EIO".into()),
            used_bytes: Err("EIO".into()),
        };
        assert_eq!(reasons(&with(unreadable)), [(Degraded, "QuotaUnreadable")]);
    }
}
