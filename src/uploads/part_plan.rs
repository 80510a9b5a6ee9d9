//! How a multipart upload's file is cut into parts, and what the parts a store holds mean
//! for it: pure rules, apart from any store.

use crate::error::ApiError;
use crate::storage::{MAX_PARTS, StoredPart};

/// The part size when the client names none.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// A file of `file_size` bytes in parts of `part_size` (the last one shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub file_size: u64,
    pub part_size: u64,
}

/// The store's parts sorted against a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sorted {
    /// Parts of the plan with exactly their planned size, by number.
    pub complete: Vec<StoredPart>,
    /// Part numbers still to upload (absent, or cut short or too long).
    pub missing: Vec<u32>,
}

impl PartPlan {
    /// Checks the client's sizes: each bad value answers its own code.
    pub fn new(
        file_size: i64,
        part_size: Option<i64>,
        min_part_size: u64,
        max_file_size: u64,
    ) -> Result<Self, ApiError> {
        let file_size = u64::try_from(file_size)
            .ok()
            .filter(|&s| s >= 1)
            .ok_or(ApiError::InvalidFileSize)?;
        if file_size > max_file_size {
            return Err(ApiError::FileTooLarge { max: max_file_size });
        }
        let part_size = match part_size {
            None => DEFAULT_PART_SIZE.max(min_part_size),
            Some(size) => u64::try_from(size)
                .ok()
                .filter(|s| (min_part_size.max(1)..=MAX_PART_SIZE).contains(s))
                .ok_or(ApiError::InvalidPartSize {
                    min: min_part_size.max(1),
                    max: MAX_PART_SIZE,
                })?,
        };
        let plan = Self { file_size, part_size };
        let parts = file_size.div_ceil(part_size);
        if parts > u64::from(MAX_PARTS) {
            return Err(ApiError::TooManyParts {
                parts,
                max: MAX_PARTS,
            });
        }
        Ok(plan)
    }

    pub fn part_count(&self) -> u32 {
        // At most MAX_PARTS, checked by `new` (and by construction from a stored plan).
        self.file_size.div_ceil(self.part_size) as u32
    }

    /// The size part `number` (1-based) must have.
    pub fn part_len(&self, number: u32) -> u64 {
        let start = u64::from(number - 1) * self.part_size;
        self.part_size.min(self.file_size.saturating_sub(start))
    }

    /// Splits the store's parts into the usable ones and the numbers still missing. A part
    /// of the wrong size is missing: uploading it again replaces it.
    pub fn sort(&self, stored: &[StoredPart]) -> Sorted {
        let count = self.part_count();
        let mut complete: Vec<StoredPart> = stored
            .iter()
            .filter(|p| (1..=count).contains(&p.part_number) && p.size == self.part_len(p.part_number))
            .cloned()
            .collect();
        complete.sort_by_key(|p| p.part_number);
        complete.dedup_by_key(|p| p.part_number);
        let mut have = complete.iter().map(|p| p.part_number).peekable();
        let missing = (1..=count)
            .filter(|n| {
                if have.peek() == Some(n) {
                    have.next();
                    false
                } else {
                    true
                }
            })
            .collect();
        Sorted { complete, missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    fn part(n: u32, size: u64) -> StoredPart {
        StoredPart {
            part_number: n,
            size,
            etag: format!("\"{n}\""),
        }
    }

    #[test]
    fn each_bad_size_has_its_own_code() {
        let plan = |file, part| PartPlan::new(file, part, 5 * MIB, 100 * MIB);
        assert!(matches!(plan(0, None), Err(ApiError::InvalidFileSize)));
        assert!(matches!(plan(-1, None), Err(ApiError::InvalidFileSize)));
        assert!(matches!(
            plan(100 * MIB as i64 + 1, None),
            Err(ApiError::FileTooLarge { max }) if max == 100 * MIB
        ));
        assert!(matches!(
            plan(10 * MIB as i64, Some(5 * MIB as i64 - 1)),
            Err(ApiError::InvalidPartSize { min, .. }) if min == 5 * MIB
        ));
        assert!(matches!(plan(10, Some(0)), Err(ApiError::InvalidPartSize { .. })));
        assert!(matches!(
            PartPlan::new(10_001, Some(1), 1, 100 * MIB),
            Err(ApiError::TooManyParts {
                parts: 10_001,
                max: 10_000
            })
        ));
        assert_eq!(
            PartPlan::new(10_000, Some(1), 1, 100 * MIB).unwrap().part_count(),
            10_000
        );
    }

    #[test]
    fn the_default_part_size_is_8_mib_and_the_last_part_takes_the_rest() {
        let plan = PartPlan::new(20 * MIB as i64, None, 5 * MIB, 100 * MIB).unwrap();
        assert_eq!(plan.part_size, 8 * MIB);
        assert_eq!(plan.part_count(), 3);
        assert_eq!(
            (1..=3).map(|n| plan.part_len(n)).collect::<Vec<_>>(),
            [8 * MIB, 8 * MIB, 4 * MIB]
        );
        // A file smaller than a part is one (short) part.
        let small = PartPlan::new(10, None, 5 * MIB, 100 * MIB).unwrap();
        assert_eq!((small.part_count(), small.part_len(1)), (1, 10));
    }

    #[test]
    fn parts_of_the_wrong_size_or_number_are_missing() {
        let plan = PartPlan::new(25, Some(10), 1, 100).unwrap();
        let stored = [part(1, 10), part(2, 7), part(3, 5), part(4, 10)];
        let sorted = plan.sort(&stored);
        assert_eq!(sorted.complete, [part(1, 10), part(3, 5)]);
        assert_eq!(sorted.missing, [2]);
    }

    proptest! {
        #[test]
        fn complete_and_missing_partition_the_plan(
            file in 1u64..10_000,
            part_size in 1u64..3_000,
            present in proptest::collection::vec(any::<bool>(), 0..10_000),
        ) {
            let Ok(plan) = PartPlan::new(file as i64, Some(part_size as i64), 1, 10_000) else {
                return Ok(());
            };
            prop_assert_eq!((1..=plan.part_count()).map(|n| plan.part_len(n)).sum::<u64>(), file);
            let stored: Vec<_> = (1..=plan.part_count())
                .filter(|n| present.get(*n as usize).copied().unwrap_or(false))
                .map(|n| part(n, plan.part_len(n)))
                .collect();
            let sorted = plan.sort(&stored);
            prop_assert_eq!(sorted.complete.len() + sorted.missing.len(), plan.part_count() as usize);
            prop_assert_eq!(sorted.complete, stored);
        }
    }
}
