//! The simulator's replay tests (`tests/sim/replays.rs`) under the normal test harness.

mod sim;
