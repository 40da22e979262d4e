//! Per-name locks. Two calls on the same volume or snapshot never run at once: the
//! second gets ABORTED ("in progress, retry"), which is what the CSI spec asks for and
//! what the external-provisioner retries on. Copying from a volume (snapshot, clone)
//! takes it shared, so several copies may read one source while a delete must wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Shared(u32),
    Exclusive,
}

#[derive(Debug, Default, Clone)]
pub struct NameLocks {
    held: Arc<Mutex<HashMap<String, Held>>>,
}

/// Releases its locks when dropped.
#[derive(Debug)]
pub struct LockGuard {
    locks: NameLocks,
    taken: Vec<(String, Access)>,
}

impl NameLocks {
    /// Takes all `wanted` locks or none; on conflict returns the busy key.
    pub fn try_lock(&self, wanted: &[(String, Access)]) -> Result<LockGuard, String> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, access) in wanted {
            let compatible = matches!(
                (held.get(key), access),
                (None, _) | (Some(Held::Shared(_)), Access::Shared)
            );
            let conflict = !compatible;
            if conflict {
                return Err(key.clone());
            }
        }
        for (key, access) in wanted {
            let entry = held.get(key).copied();
            let next = match (entry, access) {
                (Some(Held::Shared(n)), Access::Shared) => Held::Shared(n + 1),
                (_, Access::Shared) => Held::Shared(1),
                (_, Access::Exclusive) => Held::Exclusive,
            };
            held.insert(key.clone(), next);
        }
        Ok(LockGuard {
            locks: self.clone(),
            taken: wanted.to_vec(),
        })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, _) in &self.taken {
            match held.get(key).copied() {
                Some(Held::Shared(n)) if n > 1 => {
                    held.insert(key.clone(), Held::Shared(n - 1));
                }
                _ => {
                    held.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(key: &str, access: Access) -> Vec<(String, Access)> {
        vec![(key.to_string(), access)]
    }

    #[test]
    fn exclusive_excludes_everything_shared_shares() {
        let locks = NameLocks::default();
        let a = locks.try_lock(&want("v", Access::Shared)).unwrap();
        let b = locks.try_lock(&want("v", Access::Shared)).unwrap();
        assert_eq!(
            locks.try_lock(&want("v", Access::Exclusive)).unwrap_err(),
            "v"
        );
        drop(a);
        assert!(locks.try_lock(&want("v", Access::Exclusive)).is_err());
        drop(b);
        let c = locks.try_lock(&want("v", Access::Exclusive)).unwrap();
        assert!(locks.try_lock(&want("v", Access::Shared)).is_err());
        drop(c);
        assert!(locks.try_lock(&want("v", Access::Shared)).is_ok());
    }

    #[test]
    fn all_or_nothing() {
        let locks = NameLocks::default();
        let _x = locks.try_lock(&want("b", Access::Exclusive)).unwrap();
        let both = vec![
            ("a".to_string(), Access::Exclusive),
            ("b".to_string(), Access::Shared),
        ];
        assert_eq!(locks.try_lock(&both).unwrap_err(), "b");
        // "a" was not left locked by the failed attempt.
        assert!(locks.try_lock(&want("a", Access::Exclusive)).is_ok());
    }
}
