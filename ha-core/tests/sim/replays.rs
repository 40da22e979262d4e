//! Replays of scenarios that once broke a safety rule or liveness, plus proofs that the
//! checks can fail. Each runs the real state machine in the simulated world.

use super::*;

fn replay(seed: u64, lease: Millis, events: &[(u16, Fault)]) -> World {
    run_scenario(
        seed,
        lease,
        events,
        std::env::var_os("HANFS_SIM_TRACE").is_some(),
    )
}

#[test]
fn a_hand_edit_naming_the_old_holder_after_a_switchover_is_safe() {
    let world = replay(
        2118576506160205736,
        15000,
        &[(28, Fault::Switchover(0)), (0, Fault::SetHolder(Some(0)))],
    );
    assert!(world.violations.is_empty(), "{:?}", world.violations);
    assert!(world.one_serving());
}

#[test]
fn scenario_two() {
    use Fault::*;
    let world = replay(
        3514700358563122236,
        15000,
        &[
            (9, Slow(0, true)),
            (14, Switchover(0)),
            (0, HealApi(0)),
            (28, Restart(0)),
            (54, Slow(1, true)),
            (22, SetHolder(Some(0))),
            (52, Restart(0)),
            (39, Restart(0)),
            (38, HealApi(0)),
            (3, Switchover(0)),
        ],
    );
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[test]
fn scenario_three() {
    use Fault::*;
    let world = replay(
        3082468365312321550,
        15000,
        &[
            (0, CutApi(0)),
            (10, CutLink),
            (21, AgentRestart(0)),
            (79, Restart(0)),
        ],
    );
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[test]
fn scenario_four() {
    use Fault::*;
    let world = replay(
        991706522318,
        6000,
        &[
            (20, HealApi(0)),
            (0, SetHolder(None)),
            (31, HealLink),
            (38, Crash(1)),
            (0, KillNfsd(0)),
            (2, CutApi(0)),
            (0, KillNfsd(0)),
            (0, SetHolder(None)),
        ],
    );
    assert!(world.violations.is_empty(), "{:?}", world.violations);
    assert!(world.one_serving());
}

/// The checks can fail: a node that never gives up Primary when it loses the API
/// (no deadline, no last resort) is caught as soon as the peer takes over.
#[test]
fn the_checker_catches_a_holder_that_never_steps_down() {
    let reckless = HaConfig {
        renew_deadline: u64::MAX / 4,
        last_resort_after: u64::MAX / 2,
        lease_duration: 6000,
        ..HaConfig::with_lease("a", "b", 6000)
    };
    // The first seed under which the reckless node is the one that became active.
    let mut world = (1..100)
        .map(|seed| {
            let mut world =
                World::with_configs(seed, reckless.clone(), HaConfig::with_lease("b", "a", 6000));
            for _ in 0..200 {
                world.tick();
            }
            world
        })
        .find(|world| world.one_serving() && world.nodes[0].serving())
        .expect("a became active under some seed");
    world.apply(Fault::CutApi(0));
    world.apply(Fault::CutLink);
    for _ in 0..200 {
        world.tick();
    }
    assert!(
        world
            .violations
            .iter()
            .any(|v| v.what.contains("both nodes")),
        "{:?}",
        world.violations
    );
}

/// The classic VM-pause hazard: the active stops (clock included) long enough for the
/// peer to take over, then wakes believing its Lease is fresh. It is still Primary
/// (nothing could demote it), but DRBD lost the connection, freezes its I/O, and the
/// fence-peer handler refuses (it no longer holds the Lease): it never acknowledges a
/// write again, and the peer keeps every acknowledged one.
#[test]
fn a_paused_active_whose_clock_stopped_never_acknowledges_after_waking() {
    let mut world = World::new(11, 6000);
    for _ in 0..170 {
        world.tick();
    }
    let active = if world.nodes[0].serving() { 0 } else { 1 };
    world.apply(Fault::Pause(active, 150, true));
    let mut peer_served = false;
    for _ in 0..300 {
        world.tick();
        peer_served |= world.nodes[1 - active].serving();
        let woke = world.now >= world.nodes[active].paused_until;
        if woke && world.nodes[active].serving() {
            assert!(
                world.nodes[active].frozen,
                "a woken stale active must be frozen"
            );
        }
    }
    assert!(peer_served, "the peer took over during the pause");
    assert!(world.violations.is_empty(), "{:?}", world.violations);
    assert!(
        world.stats.last_resorts >= 1 || !world.nodes[active].serving(),
        "the stale active stood down"
    );
}

#[test]
fn scenario_five() {
    use Fault::*;
    let world = replay(
        14803522750110324434,
        6000,
        &[
            (31, KillNfsd(0)),
            (13, Pause(1, 5, false)),
            (4, Pause(1, 2, false)),
            (0, Crash(0)),
            (0, Restart(1)),
            (19, CutApi(0)),
            (45, Failing(0, 0)),
        ],
    );
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

/// A promotion started before a pause lands after the peer took over and fenced this
/// node. Without a peer, DRBD's fence-peer handler at promotion time refuses it; with
/// the peer connected and in sync, the data is current and nothing is lost.
#[test]
fn a_promotion_landing_after_a_pause_is_refused_by_the_fence_handler() {
    use Fault::*;
    let world = replay(
        2953117642372001580,
        6000,
        &[
            (11, HangUnmount(0, false)),
            (17, Restart(0)),
            (23, Restart(0)),
            (18, Switchover(1)),
            (15, Pause(0, 74, false)),
            (48, CutApi(0)),
            (0, Switchover(1)),
        ],
    );
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}
