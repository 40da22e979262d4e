//! When a backend call that failed is tried again, and after how long: pure, no clock.
//!
//! During a failover the VIP answers nothing for a while (the dead server's connections
//! stay silent until the HTTP/2 keepalive gives up on them), then refuses connections,
//! then reaches the new active. Calls that are idempotent by name (create, delete,
//! expand, snapshot create/delete, modify) can simply be sent again until the new active
//! answers: a create the dead server finished is found by name and returned as is, a
//! delete it finished is a delete of nothing. The loop that does it is in
//! [`crate::backend`]; this module only decides.

use std::time::Duration;
use tonic::Code;

/// Bounds of the retry loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the second attempt; it doubles per attempt up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// No more attempts than this, however much time is left.
    pub max_attempts: u32,
    /// The whole call's bound when the CSI caller sent no deadline.
    pub budget_without_deadline: Duration,
    /// An attempt is not started with less time left than this: it could not finish
    /// (and with less than twice this left, none is started).
    pub min_attempt: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            // Enough for a minute of failover at the cap; the deadline usually ends it.
            max_attempts: 40,
            budget_without_deadline: Duration::from_secs(120),
            min_attempt: Duration::from_millis(100),
        }
    }
}

/// What one failed attempt means for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this long.
    Retry { after: Duration },
    /// Answer the caller with this attempt's error.
    GiveUp(GiveUpReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The backend's answer is final (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, ...).
    Final,
    /// `max_attempts` reached.
    Attempts,
    /// The caller's deadline (or the budget) leaves no room for another attempt.
    OutOfTime,
}

/// Whether a failure can be a failover rather than an answer.
///
/// - UNAVAILABLE: refused or reset connections, the HTTP/2 keepalive giving up on a dead
///   server, a storage server that is not (or no longer) active.
/// - UNKNOWN: what tonic reports for a connection that broke mid-call.
/// - DEADLINE_EXCEEDED, and CANCELLED (tonic's client reports its own per-call timeout as
///   CANCELLED "Timeout expired"; no backend sends CANCELLED): the request may have
///   reached a server that died or hangs.
/// - ABORTED ("another call on this name is in progress") only after such an ambiguous
///   attempt of this same call: the busy call may be our own earlier attempt, still
///   running on a live server. Without one it is the CO's concurrent call, and CSI wants
///   ABORTED answered at once.
pub fn transient(code: Code, after_ambiguous_attempt: bool) -> bool {
    match code {
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Aborted => after_ambiguous_attempt,
        _ => false,
    }
}

/// Whether an attempt that failed with `code` may have been carried out by the server.
pub fn ambiguous(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown | Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable
    )
}

/// The wait after attempt number `attempt` (1 = the first) failed: exponential,
/// capped, and scaled by `jitter` in [0, 1] to between half and all of it, so that many
/// controllers' calls do not all arrive at the new active in the same instant.
pub fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    let full = policy
        .first_backoff
        .saturating_mul(1u32 << doublings)
        .min(policy.max_backoff);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The decision after attempt `attempt` failed with `code`, with `time_left` until the
/// caller's deadline (or the budget).
pub fn decide(
    policy: &RetryPolicy,
    code: Code,
    attempt: u32,
    after_ambiguous_attempt: bool,
    time_left: Duration,
    jitter: f64,
) -> Verdict {
    if !transient(code, after_ambiguous_attempt) {
        return Verdict::GiveUp(GiveUpReason::Final);
    }
    if attempt >= policy.max_attempts {
        return Verdict::GiveUp(GiveUpReason::Attempts);
    }
    if time_left < policy.min_attempt * 2 {
        return Verdict::GiveUp(GiveUpReason::OutOfTime);
    }
    // Near the deadline the wait shrinks, so the last attempt still gets its minimum
    // rather than the call giving up with time left that the new active could use.
    let after = backoff(policy, attempt, jitter).min(time_left - policy.min_attempt);
    Verdict::Retry { after }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn decide_now(code: Code, attempt: u32, ambiguous_before: bool) -> Verdict {
        decide(
            &RetryPolicy::default(),
            code,
            attempt,
            ambiguous_before,
            MINUTE,
            1.0,
        )
    }

    #[test]
    fn failover_failures_are_retried_and_answers_are_not() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Cancelled,
        ] {
            assert!(
                matches!(decide_now(code, 1, false), Verdict::Retry { .. }),
                "{code:?}"
            );
        }
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::DataLoss,
            Code::Unauthenticated,
            Code::Aborted,
        ] {
            assert_eq!(
                decide_now(code, 1, false),
                Verdict::GiveUp(GiveUpReason::Final),
                "{code:?}"
            );
        }
    }

    #[test]
    fn aborted_is_retried_only_behind_our_own_ambiguous_attempt() {
        assert_eq!(
            decide_now(Code::Aborted, 2, false),
            Verdict::GiveUp(GiveUpReason::Final)
        );
        assert!(matches!(
            decide_now(Code::Aborted, 2, true),
            Verdict::Retry { .. }
        ));
        assert!(ambiguous(Code::DeadlineExceeded) && ambiguous(Code::Unavailable));
        assert!(!ambiguous(Code::Aborted) && !ambiguous(Code::NotFound));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_keeps_half() {
        let p = RetryPolicy::default();
        let waits: Vec<_> = (1..=6).map(|a| backoff(&p, a, 1.0)).collect();
        assert_eq!(
            waits,
            [200, 400, 800, 1600, 2000, 2000].map(Duration::from_millis)
        );
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 3, 0.5), Duration::from_millis(600));
        // Out-of-range jitter and huge attempt numbers stay bounded.
        assert_eq!(backoff(&p, u32::MAX, 7.0), p.max_backoff);
        assert_eq!(backoff(&p, 0, -1.0), Duration::from_millis(100));
    }

    #[test]
    fn the_deadline_and_the_attempt_count_end_the_loop() {
        let p = RetryPolicy::default();
        let left = |ms| Duration::from_millis(ms);
        // 200 ms backoff + 100 ms minimum attempt fit in 300 ms.
        assert_eq!(
            decide(&p, Code::Unavailable, 1, false, left(300), 1.0),
            Verdict::Retry { after: left(200) }
        );
        // Less left: the wait shrinks so the last attempt keeps its 100 ms ...
        assert_eq!(
            decide(&p, Code::Unavailable, 4, false, left(250), 1.0),
            Verdict::Retry { after: left(150) }
        );
        // ... down to twice the minimum; below that nothing is started.
        assert_eq!(
            decide(&p, Code::Unavailable, 1, false, left(200), 1.0),
            Verdict::Retry { after: left(100) }
        );
        assert_eq!(
            decide(&p, Code::Unavailable, 1, false, left(199), 1.0),
            Verdict::GiveUp(GiveUpReason::OutOfTime)
        );
        assert_eq!(
            decide(&p, Code::Unavailable, 1, false, Duration::ZERO, 1.0),
            Verdict::GiveUp(GiveUpReason::OutOfTime)
        );
        assert_eq!(
            decide(&p, Code::Unavailable, p.max_attempts, false, MINUTE, 1.0),
            Verdict::GiveUp(GiveUpReason::Attempts)
        );
    }

    #[test]
    fn a_whole_failover_fits_in_the_bounds() {
        // Walk the loop as the client would, with a call failing every 10 ms: the waits
        // stay capped and the loop ends within the time given, never past it.
        let p = RetryPolicy::default();
        for budget_s in [1u64, 10, 60, 120, 3600] {
            let budget = Duration::from_secs(budget_s);
            let mut spent = Duration::ZERO;
            let mut attempt = 1;
            loop {
                spent += Duration::from_millis(10);
                match decide(
                    &p,
                    Code::Unavailable,
                    attempt,
                    true,
                    budget.saturating_sub(spent),
                    0.3,
                ) {
                    Verdict::Retry { after } => {
                        assert!(after <= p.max_backoff);
                        spent += after;
                        attempt += 1;
                    }
                    Verdict::GiveUp(_) => break,
                }
            }
            assert!(spent <= budget, "{budget_s} s: spent {spent:?}");
            assert!(attempt <= p.max_attempts);
        }
    }
}
