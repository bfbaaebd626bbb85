//! What a run reports: a table for people, JSON for machines, the HdrHistogram percentile
//! distribution in the format wrk2 prints, and SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::run::{RunConfig, Stats};

#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds, in milliseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct MinMedianMax {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl MinMedianMax {
    fn of(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Self {
            min: values[0],
            median: values[values.len() / 2],
            max: values[values.len() - 1],
        })
    }
}

/// The slowest, median and fastest whole second of the measured window.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Segments {
    pub seconds: usize,
    pub ops_per_second: Option<MinMedianMax>,
    pub bytes_per_second: Option<MinMedianMax>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpReport {
    pub ok: u64,
    pub errors: u64,
    pub bytes: u64,
    pub latency_ms: Percentiles,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub loadgen_version: &'static str,
    pub targets: Vec<String>,
    pub workload: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub target_rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    pub warmup_seconds: f64,
    /// The measured window: the duration, or until the last of `--requests` answered.
    pub seconds: f64,
    /// Measured requests: ok + errors.
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub error_sample: Option<String>,
    pub ops_per_second: f64,
    /// Body bytes of the answers counted (reads; a store counts its body).
    pub bytes: u64,
    /// Body bytes moved inside the measured window, as they moved: by every request, also
    /// one that began in the warm-up, failed, or was still running at the end. What a link
    /// carried; with big blobs, whose answers take seconds, this and not `bytes` is the
    /// throughput (a blob that began before the window or ended after it counts in part).
    pub moved_bytes: u64,
    /// `moved_bytes` per second of the window.
    pub bytes_per_second: f64,
    /// From the intended send time: corrected for coordinated omission in an open loop, the
    /// same as `serviceMs` in a closed loop.
    pub latency_ms: Percentiles,
    /// From the actual send.
    pub service_ms: Percentiles,
    /// Time to the first byte of the answer, reads only.
    pub ttfb_ms: Option<Percentiles>,
    /// Open loop: how late requests went out while their connection was idle (loadgen's own
    /// timer lateness, not counted in the latency).
    pub send_lag_ms: Option<Percentiles>,
    pub per_second: Segments,
    /// Answers completed and body bytes moved in each second of the measured window.
    pub timeline: Vec<(u64, u64)>,
    pub by_op: BTreeMap<&'static str, OpReport>,
    /// Reads whose bytes were checked, and stores whose answer was.
    pub verified: u64,
    pub verify_fraction: f64,
    /// Requests still running when the duration ended, not counted.
    pub unfinished: u64,
    pub connects: u64,
    #[serde(skip)]
    pub latency: Histogram<u64>,
    #[serde(skip)]
    pub service: Histogram<u64>,
}

pub fn build(config: &RunConfig, stats: Stats, start: Instant) -> Report {
    let measure_start = start + config.warmup;
    let seconds = match (config.requests, stats.last_done) {
        (Some(_), Some(last)) => (last - measure_start)
            .as_secs_f64()
            .min(config.duration.as_secs_f64()),
        _ => config.duration.as_secs_f64(),
    }
    .max(1e-6);
    let whole = seconds.floor() as usize;
    let mut timeline = stats.seconds.clone();
    timeline.resize(whole.max(timeline.len()), (0, 0));
    let moved_bytes: u64 = stats.seconds.iter().map(|s| s.1).sum();
    let mut ops: Vec<f64> = timeline[..whole].iter().map(|s| s.0 as f64).collect();
    let mut bytes: Vec<f64> = timeline[..whole].iter().map(|s| s.1 as f64).collect();
    let errors_total: u64 = stats.errors.values().sum();
    let reads = stats
        .per_op
        .iter()
        .filter(|(op, _)| op.needs_manifest())
        .map(|(_, s)| s.ok)
        .sum::<u64>();
    Report {
        loadgen_version: env!("CARGO_PKG_VERSION"),
        targets: config.targets.iter().map(|t| t.url.clone()).collect(),
        workload: config.workload(),
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        target_rate: config.rate,
        connections: config.connections,
        threads: config.threads,
        warmup_seconds: config.warmup.as_secs_f64(),
        seconds,
        requests: stats.ok + errors_total,
        ok: stats.ok,
        errors: stats.errors.clone(),
        error_sample: stats.error_sample.clone(),
        ops_per_second: stats.ok as f64 / seconds,
        bytes: stats.bytes,
        moved_bytes,
        bytes_per_second: moved_bytes as f64 / seconds,
        latency_ms: Percentiles::of(&stats.latency),
        service_ms: Percentiles::of(&stats.service),
        ttfb_ms: (!stats.ttfb.is_empty()).then(|| Percentiles::of(&stats.ttfb)),
        send_lag_ms: (!stats.send_lag.is_empty()).then(|| Percentiles::of(&stats.send_lag)),
        per_second: Segments {
            seconds: whole,
            ops_per_second: MinMedianMax::of(&mut ops),
            bytes_per_second: MinMedianMax::of(&mut bytes),
        },
        timeline: timeline[..whole].to_vec(),
        by_op: stats
            .per_op
            .iter()
            .map(|(op, s)| {
                (
                    op.name(),
                    OpReport {
                        ok: s.ok,
                        errors: s.errors,
                        bytes: s.bytes,
                        latency_ms: Percentiles::of(&s.latency),
                    },
                )
            })
            .collect(),
        verified: stats.verified,
        verify_fraction: if reads > 0 { config.verify } else { 0.0 },
        unfinished: stats.unfinished,
        connects: stats.connects,
        latency: stats.latency,
        service: stats.service,
    }
}

impl Report {
    /// The table people read.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mode = match self.target_rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "floe-loadgen: {} on {}, {mode}, {} connections, {} threads",
            self.workload,
            self.targets.join(" "),
            self.connections,
            self.threads
        );
        let _ = writeln!(
            out,
            "  {:.2} s measured after {:.2} s of warm-up\n",
            self.seconds, self.warmup_seconds
        );
        let errors = if self.errors.is_empty() {
            "no errors".to_string()
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            format!(
                "{} errors ({})",
                self.errors.values().sum::<u64>(),
                kinds.join(", ")
            )
        };
        let _ = writeln!(out, "  requests    {} ok, {errors}", self.ok);
        if let Some(sample) = &self.error_sample {
            let _ = writeln!(out, "  first error {sample}");
        }
        let _ = writeln!(
            out,
            "  throughput  {:.1} req/s, {:.3} GB/s",
            self.ops_per_second,
            self.bytes_per_second / 1e9
        );
        if self.verify_fraction > 0.0 || self.by_op.contains_key("store") {
            let _ = writeln!(
                out,
                "  verified    {} of {} answers (reads sampled at {:.2})",
                self.verified, self.ok, self.verify_fraction
            );
        }
        if self.unfinished > 0 {
            let _ = writeln!(
                out,
                "  unfinished  {} requests still running at the end (not counted)",
                self.unfinished
            );
        }
        let _ = writeln!(
            out,
            "\n  latency ms          p50       p90       p99     p99.9       max      mean"
        );
        let mut row = |name: &str, p: &Percentiles| {
            let _ = writeln!(
                out,
                "  {name:<14} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean
            );
        };
        if self.mode == "open" {
            row("corrected", &self.latency_ms);
            row("uncorrected", &self.service_ms);
        } else {
            row("all", &self.latency_ms);
        }
        if let Some(ttfb) = &self.ttfb_ms {
            row("first byte", ttfb);
        }
        if let Some(lag) = &self.send_lag_ms {
            row("send lag", lag);
        }
        if self.by_op.len() > 1 {
            for (op, report) in &self.by_op {
                row(op, &report.latency_ms);
            }
        }
        if let (Some(ops), Some(bytes)) = (
            &self.per_second.ops_per_second,
            &self.per_second.bytes_per_second,
        ) {
            let _ = writeln!(
                out,
                "\n  per second ({} s)   slowest    median   fastest",
                self.per_second.seconds
            );
            let _ = writeln!(
                out,
                "  req/s          {:>11.0} {:>9.0} {:>9.0}",
                ops.min, ops.median, ops.max
            );
            let _ = writeln!(
                out,
                "  GB/s           {:>11.3} {:>9.3} {:>9.3}",
                bytes.min / 1e9,
                bytes.median / 1e9,
                bytes.max / 1e9
            );
        }
        out
    }
}

/// Writes a histogram of microseconds as the percentile distribution wrk2 and HdrHistogram
/// print (values in milliseconds), which HdrHistogram's plotter reads.
pub fn write_percentiles(histogram: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>12} {:>12} {:>12}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(5) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / 1000.0;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(
                    out,
                    "{value:>12.3} {quantile:>12.6} {total:>12} {:>12.2}",
                    1.0 / (1.0 - quantile)
                )?;
            } else {
                writeln!(out, "{value:>12.3} {quantile:>12.6} {total:>12}")?;
            }
        }
    }
    let sub_buckets = (2.0 * 10f64.powi(histogram.sigfig().into()))
        .log2()
        .ceil()
        .exp2() as u64;
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / 1000.0,
        histogram.stdev() / 1000.0
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / 1000.0,
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        sub_buckets
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_file_has_wrk2s_shape_and_ends_at_the_maximum() {
        let mut histogram = crate::run::histogram();
        for us in 1..=10_000u64 {
            histogram.record(us).unwrap();
        }
        let mut out = Vec::new();
        write_percentiles(&histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0]
            .trim_start()
            .starts_with("Value   Percentile   TotalCount"));
        assert_eq!(lines[1], "");
        let rows: Vec<Vec<f64>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20);
        // Values, percentiles and counts rise; the last row is the maximum with every count.
        for pair in rows.windows(2) {
            assert!(
                pair[1][0] >= pair[0][0] && pair[1][1] >= pair[0][1] && pair[1][2] >= pair[0][2]
            );
        }
        let last = rows.last().unwrap();
        assert_eq!((last[1], last[2]), (1.0, 10_000.0));
        assert!((last[0] - 10.0).abs() < 0.01, "{last:?}");
        assert!(text.contains("Total count    =        10000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        let p = Percentiles::of(&histogram);
        assert!(
            (p.p50 - 5.0).abs() < 0.01 && (p.p99 - 9.9).abs() < 0.01,
            "{p:?}"
        );
    }
}
