//! The decisions of a multipart transfer, apart from its I/O: which bytes of the file each
//! part holds, whether a server's upload can be the local file, and when a failed part is
//! tried again.

use std::time::Duration;

/// One part of the local file: S3 numbers them from 1, each `part_size` long but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
}

/// A part the store already holds, as `uploadParts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    pub number: u32,
    pub size: u64,
    pub etag: String,
}

/// The parts a file of `file_size` bytes is cut into; an empty file is one empty part.
pub fn parts(file_size: u64, part_size: u64) -> Vec<Part> {
    let part_size = part_size.max(1);
    let count = file_size.div_ceil(part_size).max(1);
    (0..count)
        .map(|i| {
            let offset = i * part_size;
            Part {
                number: u32::try_from(i + 1).unwrap_or(u32::MAX),
                offset,
                len: part_size.min(file_size - offset),
            }
        })
        .collect()
}

/// What resuming has to do: the stored parts whose bytes are still to be compared with the
/// local file's, and the parts still to send.
#[derive(Debug, PartialEq, Eq)]
pub struct ResumePlan {
    pub to_verify: Vec<(Part, String)>,
    pub to_send: Vec<Part>,
}

/// Matches the server's state of an upload against the local file by shape (part count and
/// each stored part's size); the MD5 of each stored part is compared afterwards, by I/O.
pub fn plan_resume(
    file_size: u64,
    part_size: u64,
    stored: &[StoredPart],
    missing: &[u32],
) -> Result<ResumePlan, String> {
    let local = parts(file_size, part_size);
    let server_count = stored.len() + missing.len();
    if server_count != local.len() {
        return Err(format!(
            "the upload has {server_count} part(s) of {part_size} bytes, a file of {file_size} bytes makes {}",
            local.len()
        ));
    }
    let mut to_verify = Vec::with_capacity(stored.len());
    for s in stored {
        let Some(part) = local.iter().find(|p| p.number == s.number) else {
            return Err(format!(
                "the upload holds a part {} the file does not have",
                s.number
            ));
        };
        if part.len != s.size {
            return Err(format!(
                "part {} holds {} bytes on the server, the file's is {} bytes",
                s.number, s.size, part.len
            ));
        }
        to_verify.push((*part, normalize_etag(&s.etag)));
    }
    let mut to_send = Vec::with_capacity(missing.len());
    for &number in missing {
        let Some(part) = local.iter().find(|p| p.number == number) else {
            return Err(format!(
                "the upload asks for a part {number} the file does not have"
            ));
        };
        to_send.push(*part);
    }
    Ok(ResumePlan { to_verify, to_send })
}

/// An ETag as S3 writes it (`"hex"`) compared as bare lowercase hex.
pub fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// How one attempt at a part PUT ended, as far as trying again is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The connection failed, or the store answered 5xx / 429 (it may do better later).
    Transient,
    /// 403: the URL may have expired on a slow link; a fresh one may be accepted.
    Forbidden,
    /// The store accepted the bytes but its ETag is not their MD5: they were damaged on the way.
    Corrupted,
    /// Any other refusal (too large, bad request): sending the same again cannot help.
    Refused,
}

/// Attempts per part, the first included.
pub const ATTEMPTS: u32 = 4;

/// Whether attempt `attempt` (1-based) that ended as `how` is followed by another, and after
/// which pause: 0.5 s, 1 s, 2 s.
pub fn retry_after(attempt: u32, how: Attempt) -> Option<Duration> {
    if how == Attempt::Refused || attempt >= ATTEMPTS {
        return None;
    }
    Some(Duration::from_millis(500) * 2u32.pow(attempt - 1))
}

/// How an HTTP status of a part PUT is treated.
pub fn classify_status(status: u16) -> Attempt {
    match status {
        403 => Attempt::Forbidden,
        429 | 500..=599 => Attempt::Transient,
        _ => Attempt::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part(number: u32, offset: u64, len: u64) -> Part {
        Part { number, offset, len }
    }

    fn stored(number: u32, size: u64) -> StoredPart {
        StoredPart {
            number,
            size,
            etag: format!("\"ABC{number}\""),
        }
    }

    #[test]
    fn parts_cover_the_file_once_with_a_short_last_part() {
        let p = parts(25, 10);
        assert_eq!(p, vec![part(1, 0, 10), part(2, 10, 10), part(3, 20, 5)]);
        assert_eq!(parts(20, 10).len(), 2);
        assert_eq!(parts(0, 10), vec![part(1, 0, 0)]);
    }

    proptest! {
        #[test]
        fn parts_are_contiguous_and_add_up(size in 0u64..10_000_000, part_size in 1u64..3_000_000) {
            let p = parts(size, part_size);
            let mut next = 0;
            for (i, part) in p.iter().enumerate() {
                prop_assert_eq!(part.number as usize, i + 1);
                prop_assert_eq!(part.offset, next);
                prop_assert!(part.len <= part_size);
                if i + 1 < p.len() {
                    prop_assert_eq!(part.len, part_size);
                }
                next += part.len;
            }
            prop_assert_eq!(next, size);
        }
    }

    #[test]
    fn a_matching_upload_sends_only_the_missing_parts() {
        let plan = plan_resume(25, 10, &[stored(2, 10)], &[1, 3]).unwrap();
        assert_eq!(plan.to_verify, vec![(part(2, 10, 10), "abc2".to_owned())]);
        assert_eq!(plan.to_send, vec![part(1, 0, 10), part(3, 20, 5)]);
    }

    #[test]
    fn a_file_of_another_size_is_refused() {
        let err = plan_resume(35, 10, &[stored(1, 10)], &[2, 3]).unwrap_err();
        assert!(
            err.contains("3 part(s) of 10 bytes") && err.contains("makes 4"),
            "{err}"
        );
        // Same part count, but the stored last part is longer than the file's.
        let err = plan_resume(24, 10, &[stored(3, 5)], &[1, 2]).unwrap_err();
        assert!(
            err.contains("part 3 holds 5 bytes") && err.contains("4 bytes"),
            "{err}"
        );
    }

    #[test]
    fn part_numbers_outside_the_file_are_refused() {
        assert!(plan_resume(25, 10, &[stored(4, 10)], &[1, 2]).is_err());
        assert!(plan_resume(25, 10, &[stored(1, 10)], &[2, 9]).is_err());
    }

    #[test]
    fn etags_compare_without_quotes_or_case() {
        assert_eq!(
            normalize_etag("\"9E107D9D372BB6826BD81D3542A419D6\""),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
    }

    #[test]
    fn transient_failures_are_retried_with_growing_pauses_and_refusals_are_not() {
        assert_eq!(
            retry_after(1, Attempt::Transient),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_after(2, Attempt::Forbidden), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(3, Attempt::Corrupted), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(ATTEMPTS, Attempt::Transient), None);
        assert_eq!(retry_after(1, Attempt::Refused), None);
        assert_eq!(classify_status(503), Attempt::Transient);
        assert_eq!(classify_status(429), Attempt::Transient);
        assert_eq!(classify_status(403), Attempt::Forbidden);
        assert_eq!(classify_status(400), Attempt::Refused);
    }
}
