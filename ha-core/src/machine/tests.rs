#![allow(clippy::unwrap_used)]
use super::*;
use crate::decide::{Disk, Ineligible, StandDown};

fn config() -> HaConfig {
    HaConfig::with_lease("a", "b", 6000)
}

fn drbd(role: Role) -> DrbdView {
    DrbdView {
        role,
        disk: Disk::UpToDate,
        connected: true,
        peer_role: Role::Secondary,
        peer_disk: Disk::UpToDate,
        io_frozen: false,
    }
}

fn secondary_all_down() -> StackObservation {
    StackObservation {
        drbd: Some(drbd(Role::Secondary)),
        stack: StackView::default(),
        unhealthy: Some(Unhealthy {
            problem: "old news".into(),
            lasting: false,
        }),
    }
}

const ALL_UP: StackView = StackView {
    mounted: true,
    nfsd: true,
    exported: true,
    vip: true,
};

/// Runs one lease-lane round against an in-memory Lease (the write succeeds).
fn lease_round(s: &mut AgentState, c: &HaConfig, lease: &mut LeaseRecord, now: Millis) {
    s.lease_read(lease.clone(), now);
    let (tick, _) = s.lease_tick(c, now, || "t".into());
    if let Some(write) = tick.write {
        let version = (lease.version.parse::<u64>().unwrap_or(0) + 1).to_string();
        *lease = LeaseRecord {
            version: version.clone(),
            ..write.record.clone()
        };
        s.lease_written(write, Ok(version), now);
    }
}

/// A node that acquired the Lease and brought its stack up, at time `now`.
fn active(now: Millis) -> (AgentState, LeaseRecord) {
    let c = config();
    let mut s = AgentState::default();
    let mut lease = LeaseRecord {
        version: "1".into(),
        ..Default::default()
    };
    s.stack_observed(&c, secondary_all_down(), true, 0);
    lease_round(&mut s, &c, &mut lease, 0);
    assert_eq!(s.tenure.id.as_deref(), Some("a-t"));
    let mut t = 0;
    while let Some((step, _)) = s.next_step(&c, t) {
        let (predicted, _) = s.step_finished(&step, Ok(()), t);
        s.stack_observed(&c, predicted.unwrap(), false, t);
        t += 10;
    }
    s.stack_observed(
        &c,
        StackObservation {
            drbd: Some(drbd(Role::Primary)),
            stack: ALL_UP,
            unhealthy: None,
        },
        true,
        now,
    );
    lease_round(&mut s, &c, &mut lease, now);
    assert_eq!(s.last_decision.phase, Phase::Active);
    (s, lease)
}

fn primary_up(unhealthy: Option<Unhealthy>) -> StackObservation {
    StackObservation {
        drbd: Some(drbd(Role::Primary)),
        stack: ALL_UP,
        unhealthy,
    }
}

#[test]
fn a_bring_up_chain_predicts_each_effect_and_nothing_else() {
    let mut o = secondary_all_down();
    for step in [
        StackAction::Promote,
        StackAction::Mount,
        StackAction::StartNfsd,
        StackAction::Export,
        StackAction::AddVip,
    ] {
        o = o.after(&step).unwrap();
    }
    let drbd = o.drbd.unwrap();
    assert_eq!(drbd.role, Role::Primary);
    assert_eq!((drbd.peer_disk, drbd.connected), (Disk::UpToDate, true));
    assert!(o.stack.mounted && o.stack.nfsd && o.stack.exported && o.stack.vip);
    assert_eq!(o.unhealthy, None, "health is never judged on a prediction");
}

#[test]
fn unknown_drbd_or_resume_io_needs_a_real_look() {
    let mut o = secondary_all_down();
    assert!(o.after(&StackAction::ResumeIo).is_none());
    o.drbd = None;
    assert!(o.after(&StackAction::Promote).is_none());
    assert!(o.after(&StackAction::Demote).is_none());
    assert!(!o.after(&StackAction::Unmount).unwrap().stack.mounted);
}

#[test]
fn the_takeover_is_timed_from_acquisition_to_vip() {
    let (s, _) = active(1000);
    assert_eq!(s.acquisitions, 1);
    assert!(s.last_takeover_ms.is_some());
    assert_eq!(s.acquired_at, None);
}

#[test]
fn a_regression_and_a_lasting_problem_count_and_a_healthy_window_forgets() {
    let c = config();
    let (mut s, mut lease) = active(1000);
    let mut down = primary_up(None);
    down.stack.nfsd = false;
    let notes = s.stack_observed(&c, down, true, 1100);
    assert_eq!(s.health_failures, 1, "{notes:?}");
    s.stack_observed(&c, primary_up(None), true, 1200);
    // Healthy for the whole window: forgotten.
    s.stack_observed(&c, primary_up(None), true, 1200 + HEALTH_FORGET_MS - 1);
    assert_eq!(s.health_failures, 1);
    let notes = s.stack_observed(&c, primary_up(None), true, 1200 + HEALTH_FORGET_MS);
    assert_eq!(s.health_failures, 0);
    assert_eq!(notes, vec![Note::FailuresForgotten { forgotten: 1 }]);
    // A lasting problem (EIO on every write) hands over at once.
    let now = 1300 + HEALTH_FORGET_MS;
    // (Overdue first: this round renews, the next one is active again.)
    lease_round(&mut s, &c, &mut lease, now);
    lease_round(&mut s, &c, &mut lease, now);
    assert_eq!(s.last_decision.phase, Phase::Active);
    let eio = Unhealthy {
        problem: "EIO".into(),
        lasting: true,
    };
    s.stack_observed(&c, primary_up(Some(eio)), true, now);
    assert_eq!(s.health_failures, c.health_failures_to_step_down);
    lease_round(&mut s, &c, &mut lease, now);
    assert_eq!(
        s.last_decision.phase,
        Phase::StandingDown(StandDown::Unhealthy)
    );
}

#[test]
fn a_healthy_since_in_the_future_never_forgets() {
    let c = config();
    let (mut s, _) = active(1000);
    let mut down = primary_up(None);
    down.stack.nfsd = false;
    s.stack_observed(&c, down, true, 1100);
    s.healthy_since = Some(u64::MAX - 5);
    s.stack_observed(&c, primary_up(None), true, 1200 + 10 * HEALTH_FORGET_MS);
    assert_eq!(
        s.health_failures, 1,
        "an unknown healthy time proves nothing"
    );
}

#[test]
fn a_timeout_is_a_health_failure_at_once_refusals_and_failures_count_by_five() {
    let c = config();
    let mut s = AgentState::default();
    let mut lease = LeaseRecord {
        version: "1".into(),
        ..Default::default()
    };
    s.stack_observed(&c, secondary_all_down(), true, 0);
    lease_round(&mut s, &c, &mut lease, 0);
    lease_round(&mut s, &c, &mut lease, 10);
    assert_eq!(s.last_decision.phase, Phase::BringingUp);
    for (i, error) in [
        StepError::Refused("peer is Primary".into()),
        StepError::Failed("exit 1".into()),
    ]
    .into_iter()
    .cycle()
    .take(FAILED_STEPS_PER_HEALTH_FAILURE as usize - 1)
    .enumerate()
    {
        let (step, _) = s.next_step(&c, 20 + i as u64).unwrap();
        assert_eq!(step, StackAction::Promote);
        let (predicted, _) = s.step_finished(&step, Err(error), 20 + i as u64);
        assert!(predicted.is_none(), "a failed step needs a real look");
        assert!(s.stack_busy, "busy until that look");
        s.stack_observed(&c, secondary_all_down(), true, 20 + i as u64);
    }
    assert_eq!((s.health_failures, s.failed_steps), (0, 4));
    let (step, _) = s.next_step(&c, 30).unwrap();
    s.step_finished(&step, Err(StepError::Failed("exit 1".into())), 30);
    assert_eq!((s.health_failures, s.failed_steps), (1, 0));
    s.stack_observed(&c, secondary_all_down(), true, 31);
    let (step, _) = s.next_step(&c, 32).unwrap();
    let (_, notes) = s.step_finished(
        &step,
        Err(StepError::Timeout("did not finish within 1500 ms".into())),
        40,
    );
    assert_eq!(s.health_failures, 2, "one timeout is one failure");
    assert_eq!(notes, vec![Note::BringUpFailing { failures: 2 }]);
    assert!(
        s.last_step_error
            .as_deref()
            .unwrap()
            .contains("within 1500 ms")
    );
}

#[test]
fn teardown_failures_do_not_count() {
    let c = config();
    let (mut s, mut lease) = active(1000);
    s.request(Request::Switchover);
    lease_round(&mut s, &c, &mut lease, 1100);
    let (step, _) = s.next_step(&c, 1100).unwrap();
    assert_eq!(step, StackAction::RemoveVip);
    s.step_finished(&step, Err(StepError::Timeout("umount".into())), 1200);
    assert_eq!((s.health_failures, s.failed_steps), (0, 0));
}

#[test]
fn a_release_forgets_failures_and_completes_the_switchover() {
    let c = config();
    let (mut s, mut lease) = active(1000);
    s.request(Request::Switchover);
    s.health_failures = 1;
    lease_round(&mut s, &c, &mut lease, 1100);
    let mut t = 1100;
    while let Some((step, _)) = s.next_step(&c, t) {
        let (predicted, _) = s.step_finished(&step, Ok(()), t);
        s.stack_observed(&c, predicted.unwrap(), false, t);
        t += 10;
    }
    lease_round(&mut s, &c, &mut lease, t);
    assert_eq!(lease.holder, None);
    assert_eq!(lease.handover_to.as_deref(), Some("b"));
    assert_eq!((s.request, s.health_failures), (Request::None, 0));
    assert_eq!(s.tenure.id, None);
}

#[test]
fn a_forced_acquisition_clears_the_fence_record_naming_this_node() {
    let c = config();
    let mut s = AgentState::default();
    s.stack_observed(&c, secondary_all_down(), true, 0);
    s.request(Request::ForcePromote);
    let mut lease = LeaseRecord {
        version: "1".into(),
        outdated: Some("a".into()),
        ..Default::default()
    };
    s.lease_read(lease.clone(), 0);
    let (tick, notes) = s.lease_tick(&c, 0, || "x".into());
    let write = tick.write.unwrap();
    assert_eq!(write.action, LeaseAction::Acquire);
    assert_eq!(write.record.outdated, None);
    assert_eq!(
        notes,
        vec![Note::FenceRecordOverridden {
            outdated: Some("a".into())
        }]
    );
    lease.outdated = Some("a".into());
    // Without the request the record is kept and the node stays out.
    let mut plain = AgentState::default();
    plain.stack_observed(&c, secondary_all_down(), true, 0);
    plain.lease_read(lease, 0);
    let (tick, _) = plain.lease_tick(&c, 0, || "x".into());
    assert_eq!(tick.write, None);
    assert_eq!(
        plain.last_decision.phase,
        Phase::Ineligible(Ineligible::MarkedOutdated)
    );
}

#[test]
fn a_conflict_changes_nothing_and_an_error_is_reported() {
    let c = config();
    let mut s = AgentState::default();
    s.stack_observed(&c, secondary_all_down(), true, 0);
    s.lease_read(
        LeaseRecord {
            version: "1".into(),
            ..Default::default()
        },
        0,
    );
    let (tick, _) = s.lease_tick(&c, 0, || "x".into());
    let write = tick.write.unwrap();
    let (persist, _) = s.lease_written(write.clone(), Err(WriteError::Conflict), 5);
    assert_eq!(
        (persist, s.tenure.id.clone(), s.acquisitions),
        (None, None, 0)
    );
    s.lease_written(write, Err(WriteError::Failed("503".into())), 6);
    assert_eq!(s.lease_error.as_deref(), Some("503"));
    assert_eq!(s.tenure, Tenure::default());
}

#[test]
fn after_a_restart_the_stack_waits_for_the_first_lease_read() {
    let c = config();
    let tenure = Tenure {
        id: Some("a-1".into()),
        renewed_at: Some(1000),
    };
    let mut s = AgentState::restored(tenure.clone(), None);
    s.stack_observed(&c, primary_up(None), true, 1500);
    assert_eq!(s.next_step(&c, 1500), None, "may still hold: wait");
    // A renewal in this node's future is of unknown age: may be valid, wait too.
    let mut future = AgentState::restored(
        Tenure {
            renewed_at: Some(9000),
            ..tenure.clone()
        },
        None,
    );
    future.stack_observed(&c, primary_up(None), true, 1500);
    assert_eq!(future.next_step(&c, 1500), None);
    // Past the deadline nothing is held: tear down.
    let (step, _) = s.next_step(&c, 1000 + c.renew_deadline).unwrap();
    assert_eq!(step, StackAction::RemoveVip);
}

#[test]
fn an_unreadable_boot_id_drops_the_persisted_tenure_and_keeps_the_node_standby() {
    let c = config();
    let tenure = Tenure {
        id: Some("a-1".into()),
        renewed_at: Some(1000),
    };
    let mut s = AgentState::restored(tenure, Some(LocalFault::BootIdUnreadable));
    assert_eq!(s.tenure, Tenure::default());
    s.stack_observed(&c, secondary_all_down(), true, 2000);
    s.lease_read(
        LeaseRecord {
            version: "1".into(),
            ..Default::default()
        },
        2000,
    );
    let (tick, _) = s.lease_tick(&c, 100_000, || "x".into());
    assert_eq!(tick.write, None, "never acquires");
    assert_eq!(
        s.last_decision.phase,
        Phase::Ineligible(Ineligible::Local(LocalFault::BootIdUnreadable))
    );
}

#[test]
fn an_unreadable_clock_makes_the_holder_stand_down_and_release() {
    let c = config();
    let (mut s, mut lease) = active(1000);
    s.clock_unreadable();
    // The agent goes on with the last time it could read.
    let now = s.now;
    lease_round(&mut s, &c, &mut lease, now);
    assert_eq!(
        s.last_decision.phase,
        Phase::StandingDown(StandDown::Ineligible(Ineligible::Local(
            LocalFault::ClockUnreadable
        )))
    );
    let mut t = now;
    while let Some((step, _)) = s.next_step(&c, t) {
        let (predicted, _) = s.step_finished(&step, Ok(()), t);
        s.stack_observed(&c, predicted.unwrap(), false, t);
    }
    t += 1;
    lease_round(&mut s, &c, &mut lease, t);
    assert_eq!(lease.holder, None, "released once down");
    lease_round(&mut s, &c, &mut lease, t + 100_000);
    assert_eq!(lease.holder, None, "and never acquires again");
}

#[test]
fn a_switchover_whose_release_answer_was_lost_is_still_over() {
    let c = config();
    let (mut s, mut lease) = active(1000);
    s.request(Request::Switchover);
    lease_round(&mut s, &c, &mut lease, 1100);
    let mut t = 1100;
    while let Some((step, _)) = s.next_step(&c, t) {
        let (predicted, _) = s.step_finished(&step, Ok(()), t);
        s.stack_observed(&c, predicted.unwrap(), false, t);
        t += 10;
    }
    // The release lands, but its answer is lost.
    s.lease_read(lease.clone(), t);
    let (tick, _) = s.lease_tick(&c, t, || "x".into());
    let write = tick.write.unwrap();
    assert!(matches!(write.action, LeaseAction::Release { .. }));
    lease = LeaseRecord {
        version: "9".into(),
        ..write.record.clone()
    };
    s.lease_written(write, Err(WriteError::Failed("no answer".into())), t);
    assert_eq!(s.request, Request::Switchover, "not known to be over yet");
    // The next read shows it released: the switchover is over.
    lease_round(&mut s, &c, &mut lease, t + 100);
    assert!(s.last_decision.phase.is_standby());
    assert_eq!(s.request, Request::None);
    // Later the peer is gone and the Lease expires: this node takes over and stays.
    let later = t + 100 + c.lease_duration;
    lease_round(&mut s, &c, &mut lease, later);
    assert_eq!(s.last_decision.phase, Phase::Acquiring);
    lease_round(&mut s, &c, &mut lease, later + 10);
    assert_eq!(
        s.last_decision.phase,
        Phase::BringingUp,
        "no stale hand-over"
    );
}
