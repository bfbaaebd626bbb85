//! The scrubber's pace: every live record of a data directory is re-read from the disk and
//! checked once per `scrub_interval_seconds`, at the rate that period needs, never faster than
//! `scrub_bytes_per_second` (a ceiling, not a target).
//!
//! A pass starts with the bytes the store holds live; each second, the bytes the pass should
//! have reached by now (its share of the interval), less what it checked, become the owner's
//! allowance for that second. Once a pass is complete, the next starts one interval after it
//! started: a node with nothing due does nothing. The pass's start and the segment the scrub walk is in
//! are saved in the core's directory (`scrub-pass.json`, at most once a minute), so a restart
//! resumes the pass where it was instead of starting over (a node restarted daily would never
//! reach its last segments otherwise).
//!
//! Boundary: the pace only; the owner runs the steps (`owner::scrub_step`), the store reads
//! and checks (`Store::scrub`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use floe_storage::device::Dir;
use floe_storage::store::Store;
use serde::{Deserialize, Serialize};

/// How often the saved progress is rewritten at most. Why: a restart repeats at most this much
/// of a pass, and the file is written a thousand times less often than once a second.
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// When no data was there to scrub, how soon to look again.
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// One data directory's scrubbing pace.
pub struct ScrubPacer {
    /// Bytes per second at most; 0: the scrubber is off.
    ceiling: u64,
    interval: Duration,
    pass: Option<Pass>,
    next_pass: Instant,
    /// Where progress is saved (`None`: not saved, as in tests).
    file: Option<PathBuf>,
    saved: Instant,
}

struct Pass {
    started: Instant,
    /// Live bytes when the pass started.
    bytes: u64,
    checked: u64,
}

/// What `scrub-pass.json` holds.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    pass_started_unix_seconds: u64,
    /// The segment the store's scrub walk was in.
    segment: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ScrubPacer {
    /// A pace of one pass per `interval`, at most `ceiling` bytes per second, saving progress
    /// in `file`.
    pub fn new(ceiling: u64, interval: Duration, file: Option<PathBuf>) -> Self {
        let now = Instant::now();
        Self {
            ceiling,
            interval: interval.max(Duration::from_secs(1)),
            pass: None,
            next_pass: now,
            file,
            saved: now,
        }
    }

    /// Picks up a pass saved by an earlier run: its start, and the store's cursor.
    pub fn resume<D: Dir>(&mut self, store: &mut Store<D>) {
        let Some(file) = &self.file else { return };
        let Ok(text) = std::fs::read(file) else {
            return;
        };
        let Ok(saved) = serde_json::from_slice::<Saved>(&text) else {
            tracing::warn!(file = %file.display(), "ignoring an unreadable scrub progress file");
            return;
        };
        let ago = Duration::from_secs(unix_now().saturating_sub(saved.pass_started_unix_seconds));
        let now = Instant::now();
        let Some(started) = now.checked_sub(ago) else {
            return;
        };
        let bytes = store.live_bytes();
        // Where the pass should be by now: the cursor says where it is.
        let on_pace =
            (bytes as f64 * (ago.as_secs_f64() / self.interval.as_secs_f64()).min(1.0)) as u64;
        store.resume_scrub_at(saved.segment);
        self.pass = Some(Pass {
            started,
            bytes,
            checked: on_pace,
        });
    }

    /// Bytes the scrubber may check in the coming second.
    pub fn due<D: Dir>(&mut self, store: &Store<D>, now: Instant) -> u64 {
        if self.ceiling == 0 {
            return 0;
        }
        if self.pass.is_none() {
            if now < self.next_pass {
                return 0;
            }
            let bytes = store.live_bytes();
            if bytes == 0 {
                self.next_pass = now + IDLE_RECHECK;
                return 0;
            }
            self.pass = Some(Pass {
                started: now,
                bytes,
                checked: 0,
            });
        }
        let pass = self.pass.as_ref().expect("set above");
        let elapsed = now.saturating_duration_since(pass.started);
        let target = if elapsed >= self.interval {
            // Late (the store grew, or the disk was busy): finish at the ceiling.
            u64::MAX
        } else {
            // One more second's share, so that the allowance is never zero while on pace.
            let share =
                (elapsed + Duration::from_secs(1)).as_secs_f64() / self.interval.as_secs_f64();
            (pass.bytes as f64 * share).ceil() as u64
        };
        target.saturating_sub(pass.checked).min(self.ceiling)
    }

    /// Records a step: `bytes` checked, and whether that completed the pass.
    pub fn checked<D: Dir>(&mut self, store: &Store<D>, bytes: u64, complete: bool) {
        let Some(pass) = &mut self.pass else { return };
        pass.checked += bytes;
        if complete {
            self.next_pass = pass.started + self.interval;
            self.pass = None;
            if let Some(file) = &self.file {
                let _ = std::fs::remove_file(file);
            }
            return;
        }
        if self.saved.elapsed() >= SAVE_EVERY {
            self.save(store);
        }
    }

    fn save<D: Dir>(&mut self, store: &Store<D>) {
        self.saved = Instant::now();
        let (Some(file), Some(pass)) = (&self.file, &self.pass) else {
            return;
        };
        let segment = store.scrub_segment();
        let saved = Saved {
            pass_started_unix_seconds: unix_now().saturating_sub(pass.started.elapsed().as_secs()),
            segment,
        };
        let temp = file.with_extension("json.tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&temp, text))
            .and_then(|()| std::fs::rename(&temp, file));
        if let Err(err) = written {
            tracing::debug!(%err, file = %file.display(), "could not save scrub progress");
        }
    }
}
