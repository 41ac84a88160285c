//! The benchmark's SVG plots (plotters): the latency CDF FT against non-FT, execution lag over time and logging
//! bandwidth over time for every FT run.

use plotters::prelude::*;

use super::measure::{percentile, Latency};
use super::run::Sample;
use super::BenchReport;
use crate::error::CliError;

const SIZE: (u32, u32) = (800, 480);
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn plot_error(error: impl std::fmt::Display) -> CliError {
    CliError::Protocol(format!("bench: drawing a plot: {error}"))
}

/// A named line of (x, y) points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Draws `series` on one chart and returns the SVG.
fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<String, CliError> {
    let points = series.iter().flat_map(|line| line.points.iter());
    let x_max = points.clone().map(|point| point.0).fold(0.0, f64::max).max(1e-9);
    let y_max = points.map(|point| point.1).filter(|y| y.is_finite()).fold(0.0, f64::max).max(1e-9) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(plot_error)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(plot_error)?;
        for (line, colour) in series.iter().zip(COLOURS.iter().cycle()) {
            let points = line.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite());
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(line.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The fraction of requests answered within x µs, up to the p99.9 of the slower side (the tail beyond it would
/// squash the rest).
fn cdf(name: &str, latencies_us: &[f64], x_max: f64) -> Series {
    let mut sorted = latencies_us.to_vec();
    sorted.sort_by(f64::total_cmp);
    let count = sorted.len().max(1) as f64;
    let points = sorted
        .iter()
        .enumerate()
        .filter(|(_, us)| **us <= x_max)
        .map(|(at, us)| (*us, (at + 1) as f64 / count))
        .collect();
    Series { name: name.into(), points }
}

pub fn latency_cdf(latency: &Latency) -> Result<String, CliError> {
    let x_max = percentile(&latency.ft_us, 0.999).max(percentile(&latency.plain_us, 0.999));
    let series = [cdf("non-FT", &latency.plain_us, x_max), cdf("FT", &latency.ft_us, x_max)];
    let title = format!("{}: request latency, one request at a time", latency.guest);
    chart(&title, "latency (us)", "fraction of requests", &series)
}

/// Every FT run's samples, named by their workload.
fn runs(report: &BenchReport) -> Vec<(String, &[Sample])> {
    let mut runs: Vec<(String, &[Sample])> = Vec::new();
    runs.extend(report.table1.iter().map(|row| (row.guest.clone(), row.samples.as_slice())));
    runs.extend(report.table2.iter().map(|row| (row.guest.clone(), row.samples.as_slice())));
    if let Some(slow) = &report.slow_backup {
        runs.push((format!("{}, backup at {} % CPU", slow.guest, slow.backup_cpu_percent), slow.samples.as_slice()));
    }
    runs
}

pub fn lag(report: &BenchReport) -> Result<String, CliError> {
    let series: Vec<Series> = runs(report)
        .into_iter()
        .map(|(name, samples)| Series {
            name,
            points: samples.iter().map(|sample| (sample.at_ms / 1e3, sample.execution_lag_ms)).collect(),
        })
        .collect();
    chart("execution lag of the backup, per FT run", "time since the run started (s)", "lag (ms)", &series)
}

pub fn bandwidth(report: &BenchReport) -> Result<String, CliError> {
    let series: Vec<Series> = runs(report)
        .into_iter()
        .map(|(name, samples)| Series {
            name,
            points: samples
                .windows(2)
                .filter(|pair| pair[1].at_ms > pair[0].at_ms)
                .map(|pair| {
                    let bits = pair[1].channel_bytes_sent.saturating_sub(pair[0].channel_bytes_sent) as f64 * 8.0;
                    (pair[1].at_ms / 1e3, bits / 1e3 / (pair[1].at_ms - pair[0].at_ms))
                })
                .collect(),
        })
        .collect();
    chart("logging bandwidth, primary to backup, per FT run", "time since the run started (s)", "Mbit/s", &series)
}
