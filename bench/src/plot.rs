//! The pictures, as SVG (plotters' SVG backend: text is left to the viewer's fonts, so
//! no font files are needed to render).

use plotters::prelude::*;
use std::path::Path;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One driver's throughput at each concurrency: (concurrency, creates/s, deletes/s).
#[derive(Debug, Clone)]
pub struct Throughput {
    pub target: String,
    pub points: Vec<(usize, f64, f64)>,
}

/// One failover trial's timeline: (s since the fault, records acknowledged since it).
#[derive(Debug, Clone)]
pub struct Timeline {
    /// "hanfs" or "stock": the colour.
    pub setup: String,
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn draw_err<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| format!("{what}: {e:?}").into()
}

/// CreateVolume and DeleteVolume per second against requests in flight (log x axis),
/// one colour per driver, solid creates, hollow-marker deletes.
pub fn provisioning_chart(path: &Path, series: &[Throughput]) -> Result<(), Error> {
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|p| [p.1, p.2]))
        .fold(0.0, f64::max);
    let max_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .ok_or("provisioning chart: no points")? as f64;
    if !(max_y.is_finite() && max_y > 0.0) {
        return Err("provisioning chart: no throughput above 0".into());
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err("background"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Provisioning throughput (volumes/s)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((0.8f64..max_x * 1.25).log_scale(), 0.0..max_y * 1.15)
        .map_err(draw_err("axes"))?;
    chart
        .configure_mesh()
        .x_desc("requests in flight")
        .y_desc("calls per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(draw_err("mesh"))?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let creates: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 as f64, p.1)).collect();
        let deletes: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 as f64, p.2)).collect();
        chart
            .draw_series(LineSeries::new(creates.clone(), color.stroke_width(3)))
            .map_err(draw_err("create line"))?
            .label(format!("{} CreateVolume", s.target))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        chart
            .draw_series(creates.iter().map(|p| Circle::new(*p, 5, color.filled())))
            .map_err(draw_err("create points"))?;
        chart
            .draw_series(LineSeries::new(deletes.clone(), color.stroke_width(1)))
            .map_err(draw_err("delete line"))?
            .label(format!("{} DeleteVolume", s.target))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(1)));
        chart
            .draw_series(
                deletes
                    .iter()
                    .map(|p| Circle::new(*p, 5, color.stroke_width(2))),
            )
            .map_err(draw_err("delete points"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err("legend"))?;
    root.present().map_err(draw_err("writing the SVG"))?;
    Ok(())
}

/// Records acknowledged over time around the fault (x = 0), hanfs in blue and the
/// stock setup in red, one line per trial: a stall is a flat stretch after 0.
pub fn failover_timeline(path: &Path, trials: &[Timeline]) -> Result<(), Error> {
    let points = || trials.iter().flat_map(|t| t.points.iter());
    let (min_x, max_x) = points().fold((0.0f64, 0.0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let (min_y, max_y) = points().fold((0.0f64, 0.0f64), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if trials.iter().all(|t| t.points.is_empty()) {
        return Err("failover timeline: no acknowledgements in any trial".into());
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err("background"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Failover: records acknowledged around the kill",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(min_x - 0.5..max_x + 0.5, min_y - 1.0..max_y * 1.05 + 1.0)
        .map_err(draw_err("axes"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the fault")
        .y_desc("records acknowledged since the fault")
        .draw()
        .map_err(draw_err("mesh"))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, min_y - 1.0), (0.0, max_y * 1.05 + 1.0)],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(draw_err("fault line"))?;
    let mut labelled = Vec::new();
    for t in trials {
        let color = if t.setup == "hanfs" {
            PALETTE[0]
        } else {
            PALETTE[1]
        };
        let drawn = chart
            .draw_series(LineSeries::new(t.points.clone(), color.stroke_width(2)))
            .map_err(draw_err("trial line"))?;
        // One legend entry per setup, not per trial.
        if !labelled.contains(&t.setup) {
            labelled.push(t.setup.clone());
            drawn.label(t.label.clone()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err("legend"))?;
    root.present().map_err(draw_err("writing the SVG"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_provisioning_chart_draws_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let series = vec![
            Throughput {
                target: "hanfs".into(),
                points: vec![(1, 100.0, 120.0), (8, 400.0, 500.0), (32, 450.0, 600.0)],
            },
            Throughput {
                target: "peer".into(),
                points: vec![(1, 10.0, 12.0), (8, 20.0, 25.0), (32, 22.0, 30.0)],
            },
        ];
        provisioning_chart(&path, &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for label in [
            "hanfs CreateVolume",
            "peer DeleteVolume",
            "requests in flight",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        // Per driver: a create and a delete line, each with its legend sample, and a
        // marker per point.
        assert_eq!(
            svg.matches(r##"<polyline fill="none" opacity="1" stroke="#1F77B4""##)
                .count(),
            4
        );
        assert_eq!(
            svg.matches(r##"<polyline fill="none" opacity="1" stroke="#D62728""##)
                .count(),
            4
        );
        assert_eq!(svg.matches("<circle").count(), 12);
        assert!(provisioning_chart(&path, &[]).is_err());
        let zero = Throughput {
            target: "x".into(),
            points: vec![(1, 0.0, 0.0)],
        };
        assert!(provisioning_chart(&path, &[zero]).is_err());
    }

    #[test]
    fn the_timeline_draws_one_line_per_trial_and_one_legend_per_setup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        let trial = |setup: &str, stall: f64| Timeline {
            setup: setup.into(),
            label: format!("{setup} hard kill"),
            points: vec![(-1.0, -10.0), (0.0, 0.0), (stall, 0.0), (stall + 1.0, 10.0)],
        };
        let trials = [
            trial("hanfs", 4.0),
            trial("hanfs", 5.0),
            trial("stock", 40.0),
        ];
        failover_timeline(&path, &trials).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // hanfs: two trial lines + one legend sample; stock: one line + one sample.
        let lines = |color: &str| {
            svg.matches(&format!(
                r#"<polyline fill="none" opacity="1" stroke="{color}""#
            ))
            .count()
        };
        assert_eq!((lines("#1F77B4"), lines("#D62728")), (3, 2));
        assert_eq!(svg.matches("hanfs hard kill").count(), 1);
        assert_eq!(svg.matches("stock hard kill").count(), 1);
        let empty = Timeline {
            setup: "hanfs".into(),
            label: "x".into(),
            points: Vec::new(),
        };
        assert!(failover_timeline(&path, &[empty]).is_err());
    }
}
