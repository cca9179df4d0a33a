//! Finding bit-equal rows: an open-addressing hash table of row indices keyed by the
//! rows' bits (xxh3), in caller-provided slots (no allocation).
//!
//! Used where equal rows have equal answers and the first of them stands for all: the
//! bank search's queries (`pipeline::score`) and the coreset's candidates (`fit::banks`).

/// u32 slots a [`RowTable`] for up to `rows` rows needs.
pub fn row_table_len(rows: usize) -> usize {
    (2 * rows).next_power_of_two()
}

/// The table over `slots` (each holds a stored index + 1; 0 is empty).
pub struct RowTable<'a> {
    slots: &'a mut [u32],
}

impl<'a> RowTable<'a> {
    /// An empty table for up to `rows` rows; `slots` holds at least
    /// [`row_table_len`]`(rows)` entries.
    pub fn new(slots: &'a mut [u32], rows: usize) -> Self {
        let slots = &mut slots[..row_table_len(rows)];
        slots.fill(0);
        RowTable { slots }
    }

    /// The index of a stored row bit-equal to `row` (`stored(k)` gives stored row `k`);
    /// otherwise stores `index` for `row` and returns `None`.
    pub fn find_or_insert<'r>(
        &mut self,
        row: &[f32],
        index: usize,
        stored: impl Fn(usize) -> &'r [f32],
    ) -> Option<usize> {
        let bits: &[u32] = bytemuck::cast_slice(row);
        let mask = self.slots.len() - 1;
        let mut slot = xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(bits)) as usize & mask;
        loop {
            match self.slots[slot] {
                0 => {
                    self.slots[slot] = index as u32 + 1;
                    return None;
                }
                k => {
                    let k = k as usize - 1;
                    let other: &[u32] = bytemuck::cast_slice(stored(k));
                    if other == bits {
                        return Some(k);
                    }
                }
            }
            slot = (slot + 1) & mask;
        }
    }
}
