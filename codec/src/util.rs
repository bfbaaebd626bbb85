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
}
