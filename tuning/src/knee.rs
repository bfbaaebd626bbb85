//! Finding the queue depth past which a device stops getting faster.

/// Throughput and tail latency at one queue depth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub depth: u32,
    /// Bytes or operations per second.
    pub throughput: f64,
    pub p99_us: u64,
}

/// The chosen depth reaches at least this fraction of the best throughput seen. Why 0.9:
/// deeper queues past it buy little throughput for latency that keeps climbing (each extra
/// queued I/O waits behind the others).
pub const KNEE_FRACTION: f64 = 0.9;

/// A step that gains less than this fraction of throughput counts as flat.
pub const FLAT_GAIN: f64 = 0.05;

/// The knee: the smallest depth whose throughput is within [`KNEE_FRACTION`] of the best.
/// `None` for no points.
pub fn knee(points: &[Point]) -> Option<u32> {
    let best = points.iter().map(|p| p.throughput).fold(f64::NAN, f64::max);
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by_key(|p| p.depth);
    sorted
        .into_iter()
        .find(|p| p.throughput >= KNEE_FRACTION * best)
        .map(|p| p.depth)
}

/// Whether a sweep in increasing depth can stop: the last two steps were flat (or worse) while
/// tail latency grew.
pub fn past_the_knee(points: &[Point]) -> bool {
    let n = points.len();
    if n < 3 {
        return false;
    }
    let [a, b, c] = [points[n - 3], points[n - 2], points[n - 1]];
    let flat = |from: Point, to: Point| to.throughput < from.throughput * (1.0 + FLAT_GAIN);
    flat(a, b) && flat(b, c) && c.p99_us > a.p99_us
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(values: &[(u32, f64, u64)]) -> Vec<Point> {
        values
            .iter()
            .map(|&(depth, throughput, p99_us)| Point {
                depth,
                throughput,
                p99_us,
            })
            .collect()
    }

    #[test]
    fn a_saturating_curve_has_its_knee_where_it_flattens() {
        // Doubles up to 8, then flat while latency doubles: an NVMe-like curve.
        let points = curve(&[
            (1, 100.0, 100),
            (2, 200.0, 100),
            (4, 390.0, 110),
            (8, 700.0, 130),
            (16, 760.0, 250),
            (32, 770.0, 500),
            (64, 772.0, 1000),
        ]);
        // Depth 8 reaches 91% of the best at half the p99 of depth 16.
        assert_eq!(knee(&points), Some(8));
        // Two flat steps (16 -> 32 -> 64) end a sweep; 8 -> 16 still gained 8.6%.
        assert!(past_the_knee(&points));
        assert!(!past_the_knee(&points[..6]));
        assert!(!past_the_knee(&points[..4]));
    }

    #[test]
    fn a_flat_curve_has_its_knee_at_depth_one() {
        // A device (or a page cache) that does not scale with depth.
        let points = curve(&[(1, 1000.0, 10), (2, 1010.0, 20), (4, 1005.0, 40)]);
        assert_eq!(knee(&points), Some(1));
        assert!(past_the_knee(&points));
    }

    #[test]
    fn a_curve_that_falls_off_keeps_the_best_region() {
        // Throughput peaks then collapses (thrashing): the knee is before the peak's region ends.
        let points = curve(&[
            (1, 100.0, 10),
            (2, 300.0, 12),
            (4, 500.0, 15),
            (8, 300.0, 90),
        ]);
        assert_eq!(knee(&points), Some(4));
    }

    #[test]
    fn order_does_not_matter_and_empty_is_none() {
        let points = curve(&[(8, 700.0, 130), (1, 100.0, 100), (4, 690.0, 110)]);
        assert_eq!(knee(&points), Some(4));
        assert_eq!(knee(&[]), None);
        // Still rising at the deepest point measured: not past the knee.
        let rising = curve(&[(1, 1.0, 1), (2, 2.0, 1), (4, 4.0, 1)]);
        assert!(!past_the_knee(&rising));
        assert_eq!(knee(&rising), Some(4));
    }
}
