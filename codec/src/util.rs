//! Small helpers shared by the encoder and decoder.

/// A slice that concurrent tasks write at disjoint offsets.
pub(crate) struct DisjointWriter<'a> {
    ptr: *mut u8,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [u8]>,
}

// SAFETY: the writer only hands out writes through `write`, whose contract makes concurrent
// writes target disjoint ranges; the underlying slice is mutably borrowed for 'a, so nothing
// reads it meanwhile.
unsafe impl Send for DisjointWriter<'_> {}
// SAFETY: as above.
unsafe impl Sync for DisjointWriter<'_> {}

impl<'a> DisjointWriter<'a> {
    pub(crate) fn new(slice: &'a mut [u8]) -> Self {
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// Copies `data` to `offset`.
    ///
    /// # Safety
    /// No other thread may write an overlapping range while this writer lives.
    pub(crate) unsafe fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len, "write within the slice");
        // SAFETY: in bounds (asserted); disjoint from concurrent writes (caller's contract);
        // `data` cannot alias the target, which is exclusively borrowed by this writer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) }
    }

    /// The `len` bytes at `offset`, to be written in place.
    ///
    /// # Safety
    /// No other thread may access an overlapping range while the returned slice lives.
    // Handing out `&mut` from `&self` is the point: tasks share the writer and each takes its
    // own disjoint run, which the `unsafe` contract states.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len, "range within the slice");
        // SAFETY: in bounds (asserted); exclusive for its lifetime (caller's contract); the
        // underlying slice is mutably borrowed by this writer for 'a.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }
}
