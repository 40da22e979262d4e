//! The tables the runs print (markdown, so they paste into notes and the README).

use crate::writer::Trial;

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// One row per trial.
pub fn trials_table(trials: &[Trial]) -> String {
    let mut out = String::from(
        "| setup | scenario | lock | stall (s) | acked | lost | I/O errors | locks lost | split-brain | stale handles | notes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in trials {
        let mut notes = t.notes.clone();
        notes.extend(t.broken.iter().map(|b| format!("BROKEN: {b}")));
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.setup,
            t.scenario,
            if t.lock { "yes" } else { "no" },
            t.stall_s,
            t.acked,
            t.lost,
            t.io_errors,
            t.locks_lost,
            t.split_brain,
            t.stale_handles,
            notes.join("; ")
        ));
    }
    out
}

/// One row per (setup, scenario): trials, stalls, median, and whether every trial was clean.
pub fn summary_table(trials: &[Trial]) -> String {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for t in trials {
        if !keys.contains(&(t.setup, t.scenario.as_str())) {
            keys.push((t.setup, t.scenario.as_str()));
        }
    }
    let mut out = String::from(
        "| setup | scenario | trials | stall per trial (s) | median stall (s) | lost | I/O errors | locks lost | split-brain | stale handles |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (setup, scenario) in keys {
        let rows: Vec<&Trial> = trials
            .iter()
            .filter(|t| t.setup == setup && t.scenario == scenario)
            .collect();
        let mut stalls: Vec<f64> = rows.iter().map(|t| t.stall_s).collect();
        let per_trial = stalls
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sum = |f: fn(&Trial) -> usize| rows.iter().map(|t| f(t)).sum::<usize>();
        out.push_str(&format!(
            "| {setup} | {scenario} | {} | {per_trial} | {:.2} | {} | {} | {} | {} | {} |\n",
            rows.len(),
            median(&mut stalls).unwrap_or(f64::NAN),
            sum(|t| t.lost),
            sum(|t| t.io_errors),
            sum(|t| t.locks_lost),
            sum(|t| t.split_brain),
            sum(|t| t.stale_handles),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
