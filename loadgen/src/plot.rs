//! SVG plots of a run: latency by percentile (the plot HdrHistogram's tools draw, on a log
//! axis of 1/(1-percentile)) and throughput over the measured seconds.

use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

/// Writes `{prefix}-latency.svg` and `{prefix}-throughput.svg`; returns their paths.
pub fn write(report: &Report, prefix: &Path) -> Result<Vec<std::path::PathBuf>> {
    let name = |suffix: &str| {
        let mut file = prefix.as_os_str().to_owned();
        file.push(suffix);
        std::path::PathBuf::from(file)
    };
    let latency = name("-latency.svg");
    let throughput = name("-throughput.svg");
    latency_plot(report, &latency)?;
    throughput_plot(report, &throughput)?;
    Ok(vec![latency, throughput])
}

/// (1/(1-q), milliseconds) points of a histogram of microseconds.
fn percentile_points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    histogram
        .iter_quantiles(5)
        .map(|step| (step.quantile_iterated_to(), step.value_iterated_to()))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, us)| (1.0 / (1.0 - q), us as f64 / 1000.0))
        .collect()
}

fn latency_plot(report: &Report, path: &Path) -> Result<()> {
    let corrected = percentile_points(&report.latency);
    let uncorrected = percentile_points(&report.service);
    let x_max = corrected
        .iter()
        .map(|p| p.0)
        .fold(100.0f64, f64::max)
        .min(1e7);
    let y_max = corrected
        .iter()
        .chain(&uncorrected)
        .map(|p| p.1)
        .fold(0.001f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "latency by percentile: {} ({})",
                report.workload, report.mode
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{}%", trim(100.0 * (1.0 - 1.0 / x))))
        .draw()
        .map_err(draw)?;
    let label = if report.mode == "open" {
        "corrected (from the intended send)"
    } else {
        "latency"
    };
    chart
        .draw_series(LineSeries::new(corrected, BLUE.stroke_width(2)))
        .map_err(draw)?
        .label(label)
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    if report.mode == "open" {
        chart
            .draw_series(LineSeries::new(uncorrected, RED.stroke_width(2)))
            .map_err(draw)?
            .label("uncorrected (from the actual send)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)
}

fn throughput_plot(report: &Report, path: &Path) -> Result<()> {
    let seconds = report.timeline.len().max(1) as f64;
    let y_max = report
        .timeline
        .iter()
        .map(|s| s.0 as f64)
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "throughput per second: {} ({})",
                report.workload, report.mode
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..seconds, 0.0..y_max)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("second of the measured window")
        .y_desc("answers per second")
        .draw()
        .map_err(draw)?;
    // Each second's count drawn at its middle.
    let points = report
        .timeline
        .iter()
        .enumerate()
        .map(|(i, s)| (i as f64 + 0.5, s.0 as f64));
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(draw)?;
    root.present().map_err(draw)
}

fn trim(value: f64) -> String {
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow!("drawing the plot: {error}")
}
