//! [`OutView`]: the output matrix shared by the threads of one matmul, each
//! writing its own groups of columns.
#![allow(unsafe_code)]

use std::marker::PhantomData;

use crate::packed::GROUP;

/// A row-major `rows` x `cols` f32 matrix that several threads write at
/// once, each to a disjoint set of column groups.
pub(crate) struct OutView<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: the view only hands out writes through `write_group`, and the
// matmul gives every column group to exactly one thread, so no two threads
// write the same element; the borrow it was made from outlives the threads.
unsafe impl Send for OutView<'_> {}
// SAFETY: as above.
unsafe impl Sync for OutView<'_> {}

impl<'a> OutView<'a> {
    /// Views `out`, which must hold `rows * cols` values.
    pub(crate) fn new(out: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(out.len(), rows * cols, "output buffer has the wrong size");
        Self {
            ptr: out.as_mut_ptr(),
            rows,
            cols,
            _out: PhantomData,
        }
    }

    /// Where the eight values of column group `group` in row `row` go, when
    /// the group lies wholly inside the matrix (`None` for the last group
    /// of a width that is not a multiple of eight): for paths that store a
    /// vector register straight there, as [`OutView::write_group`]'s copy
    /// of variable length compiles to a call to `memcpy` per group.
    ///
    /// Callers write only the eight values and give each group to one
    /// thread only (see the `Sync` impl); indices are checked.
    pub(crate) fn whole_group(&self, row: usize, group: usize) -> Option<*mut f32> {
        let start = group * GROUP;
        assert!(
            row < self.rows && start < self.cols,
            "output index out of range"
        );
        // SAFETY: row < rows and start + GROUP <= cols, so the offset stays
        // inside the buffer.
        (start + GROUP <= self.cols).then(|| unsafe { self.ptr.add(row * self.cols + start) })
    }

    /// Writes the eight values of column group `group` in row `row`,
    /// dropping the padding columns past the matrix's last one.
    ///
    /// Callers must give each group to one thread only (see the `Sync`
    /// impl); indices are checked.
    pub(crate) fn write_group(&self, row: usize, group: usize, values: &[f32; GROUP]) {
        let start = group * GROUP;
        assert!(
            row < self.rows && start < self.cols,
            "output index out of range"
        );
        let len = GROUP.min(self.cols - start);
        // SAFETY: row < rows and start + len <= cols, so the range lies inside
        // the buffer; no other thread writes this group (see the Sync impl).
        unsafe {
            let dst = self.ptr.add(row * self.cols + start);
            std::ptr::copy_nonoverlapping(values.as_ptr(), dst, len);
        }
    }
}
