//! What a run asks for, parsed from the command line: sizes, size distributions, key
//! popularity and the workload mix.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// A byte count written `1048576`, `4KiB`, `1MiB`, `2GiB`, `1kB`, `1MB` or `1GB`; a unit
/// may follow a decimal number (`1.5GiB`, `2.5GB`), rounded to the nearest byte.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let not_a_size = || format!("`{text}` is not a size (examples: 4096, 4KiB, 1MiB, 2.5GB)");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(not_a_size());
    }
    let whole: u64 = whole.parse().map_err(|_| not_a_size())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" | "m" => 1 << 20,
        "GiB" | "G" | "g" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (B, KiB, MiB, GiB, kB, MB, GB)"
            ))
        }
    };
    let too_large = || format!("`{text}` is too large");
    let mut bytes = whole.checked_mul(scale).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        if scale == 1 {
            return Err(format!("`{text}`: a number of bytes is whole"));
        }
        // Exact: the fraction's digits times the scale, rounded once.
        let digits = &fraction[..fraction.len().min(18)];
        let numerator: u128 = digits.parse().map_err(|_| not_a_size())?;
        let denominator = 10u128.pow(digits.len() as u32);
        let part = (numerator * u128::from(scale) * 2 + denominator) / (2 * denominator);
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Sizes of blobs or ranges: one size, or log-uniform between two (`4KiB..16MiB`), which gives
/// as many small objects per octave as large ones, the usual shape of object-store data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeDist {
    Fixed(u64),
    LogUniform { min: u64, max: u64 },
}

impl SizeDist {
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            SizeDist::Fixed(size) => size,
            SizeDist::LogUniform { min, max } => {
                let (lo, hi) = ((min.max(1) as f64).ln(), (max.max(1) as f64).ln());
                let size = rng.gen_range(lo..=hi).exp().round() as u64;
                size.clamp(min, max)
            }
        }
    }

    pub fn max(&self) -> u64 {
        match *self {
            SizeDist::Fixed(size) => size,
            SizeDist::LogUniform { max, .. } => max,
        }
    }
}

impl FromStr for SizeDist {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once("..") {
            None => Ok(SizeDist::Fixed(parse_size(text)?)),
            Some((min, max)) => {
                let (min, max) = (parse_size(min)?, parse_size(max)?);
                if min > max {
                    return Err(format!(
                        "`{text}`: the smallest size is larger than the largest"
                    ));
                }
                Ok(SizeDist::LogUniform { min, max })
            }
        }
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDist::Fixed(size) => write!(f, "{size} B"),
            SizeDist::LogUniform { min, max } => write!(f, "{min}..{max} B (log-uniform)"),
        }
    }
}

/// Which blob of the data set a request reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Popularity {
    Uniform,
    /// Zipf with this exponent: blob 0 is the most popular.
    Zipf(f64),
}

impl FromStr for Popularity {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "uniform" => Ok(Popularity::Uniform),
            "zipf" => Ok(Popularity::Zipf(1.0)),
            _ => match text.strip_prefix("zipf:").map(str::parse::<f64>) {
                Some(Ok(s)) if s > 0.0 && s.is_finite() => Ok(Popularity::Zipf(s)),
                _ => Err(format!(
                    "`{text}`: popularity is `uniform`, `zipf` or `zipf:S` with S > 0"
                )),
            },
        }
    }
}

/// Draws blob indexes `0..count` by a popularity.
pub enum KeyChooser {
    Uniform(u64),
    Zipf(Zipf<f64>),
}

impl KeyChooser {
    pub fn new(popularity: Popularity, count: u64) -> Self {
        match popularity {
            Popularity::Zipf(s) if count > 1 => {
                KeyChooser::Zipf(Zipf::new(count, s).expect("count >= 1 and s > 0"))
            }
            _ => KeyChooser::Uniform(count.max(1)),
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform(count) => rng.gen_range(0..*count),
            // Zipf draws 1..=count.
            KeyChooser::Zipf(zipf) => zipf.sample(rng) as u64 - 1,
        }
    }
}

/// One kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `GET /v1/blobs/{id}`: a whole blob through the aggregator.
    Blob,
    /// `GET /v1/blobs/{id}` with `Range: bytes=a-b`.
    Range,
    /// `GET /v1/blobs/{id}/slivers/{pair}/primary` from the node API.
    Sliver,
    /// `PUT /v1/blobs?epochs=N` of fresh content through the publisher.
    Store,
    /// `GET` of the target URL's own path (any HTTP server, e.g. nginx for a comparison).
    Url,
    /// GetObject of a manifest blob's S3 object (`prepare --s3`), from targets that are S3
    /// endpoints, signed (SigV4 presigned).
    S3,
    /// The same with `Range: bytes=a-b`.
    S3Range,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Blob,
        Op::Range,
        Op::Sliver,
        Op::Store,
        Op::Url,
        Op::S3,
        Op::S3Range,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Blob => "blob",
            Op::Range => "range",
            Op::Sliver => "sliver",
            Op::Store => "store",
            Op::Url => "url",
            Op::S3 => "s3",
            Op::S3Range => "s3range",
        }
    }

    pub fn needs_manifest(self) -> bool {
        matches!(
            self,
            Op::Blob | Op::Range | Op::Sliver | Op::S3 | Op::S3Range
        )
    }

    /// Whether its targets are S3 endpoints (not floe's API).
    pub fn is_s3(self) -> bool {
        matches!(self, Op::S3 | Op::S3Range)
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Op::ALL
            .into_iter()
            .find(|op| op.name() == text)
            .ok_or_else(|| {
                format!("unknown workload `{text}` (blob, range, sliver, store, url, s3, s3range)")
            })
    }
}

/// The workload: one op, or a mix by weight (`blob:70,range:25,store:5`).
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.weights.iter().map(|(op, _)| *op)
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Op {
        if self.weights.len() == 1 {
            return self.weights[0].0;
        }
        let mut ticket = rng.gen_range(0..self.total);
        for (op, weight) in &self.weights {
            if ticket < *weight {
                return *op;
            }
            ticket -= weight;
        }
        unreachable!("tickets are below the total weight")
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(op, _)] = self.weights.as_slice() {
            return f.write_str(op.name());
        }
        for (i, (op, weight)) in self.weights.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            write!(f, "{comma}{}:{weight}", op.name())?;
        }
        Ok(())
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights: Vec<(Op, u32)> = Vec::new();
        for part in text.split(',') {
            let (name, weight) = match part.split_once(':') {
                Some((name, weight)) => (
                    name,
                    weight
                        .parse::<u32>()
                        .map_err(|_| format!("`{part}`: a weight is a whole number"))?,
                ),
                None => (part, 1),
            };
            let op: Op = name.trim().parse()?;
            if weights.iter().any(|(o, _)| *o == op) {
                return Err(format!("`{text}` names {} twice", op.name()));
            }
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let total = weights.iter().map(|(_, w)| *w).sum::<u32>();
        if total == 0 {
            return Err(format!("`{text}`: no workload with a weight above 0"));
        }
        if weights.iter().any(|(op, _)| *op == Op::Url) && weights.len() > 1 {
            return Err("the url workload cannot be mixed with floe workloads".into());
        }
        Ok(Mix { weights, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("2.5GB"), Ok(2_500_000_000));
        assert_eq!(parse_size("0.1KiB"), Ok(102));
        assert_eq!(parse_size("14.6GB"), Ok(14_600_000_000));
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("1.MiB").is_err());
        assert!(parse_size(".5MiB").is_err());
        assert!(parse_size("1.2.3MiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1PiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!("1MiB".parse(), Ok(SizeDist::Fixed(1 << 20)));
        assert_eq!(
            "4KiB..1MiB".parse(),
            Ok(SizeDist::LogUniform {
                min: 4096,
                max: 1 << 20
            })
        );
        assert!("1MiB..4KiB".parse::<SizeDist>().is_err());
    }

    #[test]
    fn log_uniform_sizes_stay_in_bounds_and_spread_over_octaves() {
        let dist: SizeDist = "1KiB..1MiB".parse().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let sizes: Vec<u64> = (0..10_000).map(|_| dist.sample(&mut rng)).collect();
        assert!(sizes.iter().all(|s| (1024..=1 << 20).contains(s)));
        // Ten octaves: about a tenth below 2 KiB, a tenth above 512 KiB.
        let small = sizes.iter().filter(|s| **s < 2048).count();
        let large = sizes.iter().filter(|s| **s > 512 << 10).count();
        assert!((700..1300).contains(&small), "{small}");
        assert!((700..1300).contains(&large), "{large}");
    }

    #[test]
    fn mixes_pick_by_weight_and_zipf_favours_the_first_keys() {
        let mix: Mix = "blob:70,range:30".parse().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let blobs = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == Op::Blob)
            .count();
        assert!((6_700..7_300).contains(&blobs), "{blobs}");
        assert!("blob,blob".parse::<Mix>().is_err());
        assert!("blob:0".parse::<Mix>().is_err());
        assert!("url,blob".parse::<Mix>().is_err());
        assert!("read".parse::<Mix>().is_err());

        let zipf = KeyChooser::new(Popularity::Zipf(1.0), 100);
        let uniform = KeyChooser::new(Popularity::Uniform, 100);
        let first = |chooser: &KeyChooser, rng: &mut rand::rngs::StdRng| {
            (0..10_000).filter(|_| chooser.sample(rng) == 0).count()
        };
        let (z, u) = (first(&zipf, &mut rng), first(&uniform, &mut rng));
        // Zipf(1) over 100 keys gives key 0 about 1/H(100) = 19 %; uniform 1 %.
        assert!(z > 1_500 && u < 200, "zipf {z} uniform {u}");
        assert!((0..1000).all(|_| zipf.sample(&mut rng) < 100));
        assert_eq!("zipf:1.2".parse(), Ok(Popularity::Zipf(1.2)));
        assert!("zipf:-1".parse::<Popularity>().is_err());
    }
}
