//! Resuming the scrubber's pass after a restart: the node saves the segment the walk is in
//! and, after opening the store again, sets the walk back to that segment's start (at most
//! one segment is walked twice; a segment reclaimed meanwhile is skipped as usual).

use super::{ScrubCursor, Store};
use crate::device::Dir;

impl<D: Dir> Store<D> {
    /// The segment the scrubber's walk is in (0 before a pass has started).
    pub fn scrub_segment(&self) -> u64 {
        self.live.scrub.segment
    }

    /// Sets the scrubber's walk to the start of `segment` (the next segment there is, if that
    /// one is gone).
    pub fn resume_scrub_at(&mut self, segment: u64) {
        self.live.scrub = ScrubCursor {
            segment,
            ..ScrubCursor::default()
        };
        self.scrub_recheck = None;
    }
}
