//! The tables the bench prints: a row per figure, a column per driver (or mount), and
//! ratios such as hanfs / peer where both were measured in this run. A figure that was not measured
//! says why in its cell instead of showing a number.

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Value(f64),
    /// Not measured, and why (e.g. "needs --vm").
    Missing(String),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub values: Vec<Cell>,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub columns: Vec<String>,
    /// (numerator, denominator) column indexes of each ratio column (none without a
    /// peer column).
    pub ratios: Vec<(usize, usize)>,
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(columns: Vec<String>, ratios: Vec<(usize, usize)>) -> Self {
        Self {
            columns,
            ratios,
            rows: Vec::new(),
        }
    }

    /// Adds a row; `values` has one cell per column (missing ones are filled in as
    /// "—", so a short row cannot shift figures into the wrong column).
    pub fn row(&mut self, label: impl Into<String>, mut values: Vec<Cell>) {
        values.resize(self.columns.len(), Cell::Missing("—".into()));
        self.rows.push(Row {
            label: label.into(),
            values,
        });
    }

    /// Markdown, so it pastes into notes and the README.
    pub fn render(&self) -> String {
        let mut header = vec!["figure".to_owned()];
        header.extend(self.columns.iter().cloned());
        for &(a, b) in &self.ratios {
            header.push(format!("{} / {}", self.columns[a], self.columns[b]));
        }
        let mut out = format!("| {} |\n", header.join(" | "));
        out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
        for row in &self.rows {
            let mut cells = vec![row.label.clone()];
            cells.extend(row.values.iter().map(format_cell));
            for &(a, b) in &self.ratios {
                cells.push(match ratio(&row.values[a], &row.values[b]) {
                    Some(r) => format!("{r:.2}"),
                    None => "—".into(),
                });
            }
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }
}

/// `a / b` when both were measured and `b` is not 0.
pub fn ratio(a: &Cell, b: &Cell) -> Option<f64> {
    match (a, b) {
        (Cell::Value(a), Cell::Value(b)) if *b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn format_cell(cell: &Cell) -> String {
    match cell {
        Cell::Value(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Cell::Value(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Cell::Value(v) => format!("{v:.2}"),
        Cell::Missing(why) => why.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ratios_only_where_both_ran() {
        let mut t = Table::new(vec!["hanfs".into(), "peer".into()], vec![(0, 1)]);
        t.row("RSS idle (MiB)", vec![Cell::Value(6.5), Cell::Value(35.5)]);
        t.row(
            "CreateVolume c=8 (/s)",
            vec![Cell::Value(400.0), Cell::Missing("needs --vm".into())],
        );
        t.row("volumes", vec![Cell::Value(2000.0)]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "| figure | hanfs | peer | hanfs / peer |");
        assert_eq!(lines[1], "|---|---|---|---|");
        assert_eq!(lines[2], "| RSS idle (MiB) | 6.50 | 35.50 | 0.18 |");
        assert_eq!(lines[3], "| CreateVolume c=8 (/s) | 400 | needs --vm | — |");
        assert_eq!(lines[4], "| volumes | 2000 | — | — |");

        let mut two = Table::new(
            vec!["a".into(), "b".into(), "c".into()],
            vec![(0, 1), (0, 2)],
        );
        two.row(
            "x",
            vec![Cell::Value(2.0), Cell::Value(4.0), Cell::Value(1.0)],
        );
        let text = two.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "| figure | a | b | c | a / b | a / c |");
        assert_eq!(lines[2], "| x | 2 | 4 | 1 | 0.50 | 2.00 |");
    }

    #[test]
    fn no_ratio_column_without_a_peer_and_no_division_by_zero() {
        let mut t = Table::new(vec!["hanfs".into()], Vec::new());
        t.row("x", vec![Cell::Value(1.25)]);
        assert_eq!(t.render().lines().nth(2), Some("| x | 1.25 |"));
        assert_eq!(ratio(&Cell::Value(1.0), &Cell::Value(0.0)), None);
    }
}
