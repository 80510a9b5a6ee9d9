//! The derived numbers of an upload's progress, as a pure function of its counters and times.

use chrono::{DateTime, Utc};
use entity::upload::UploadStatus;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// 0–100; 100 once the upload completed.
    pub percentage: f64,
    /// Rows processed per second since processing started; none before the first row.
    pub rows_per_second: Option<f64>,
    /// Seconds left at that rate; none when unknown, 0 once finished.
    pub eta_seconds: Option<f64>,
}

/// Rate and ETA are measured over the whole run (started → finished, or now), which is
/// what a second replica computes too, from the same row.
pub fn figures(
    status: UploadStatus,
    total_rows: Option<i32>,
    processed_rows: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Figures {
    let processed = f64::from(processed_rows.max(0));
    let percentage = match (status, total_rows) {
        (UploadStatus::Completed | UploadStatus::CompletedWithErrors, _) => 100.0,
        (_, Some(total)) if total > 0 => (processed * 100.0 / f64::from(total)).clamp(0.0, 100.0),
        _ => 0.0,
    };
    let elapsed = started_at.map(|start| {
        let end = finished_at.unwrap_or(now);
        ((end - start).num_milliseconds().max(1)) as f64 / 1000.0
    });
    let rows_per_second = match elapsed {
        Some(secs) if processed > 0.0 => Some(processed / secs),
        _ => None,
    };
    let eta_seconds = if status.is_terminal() {
        Some(0.0)
    } else {
        match (rows_per_second, total_rows) {
            (Some(rate), Some(total)) => Some((f64::from(total) - processed).max(0.0) / rate),
            _ => None,
        }
    };
    Figures {
        percentage,
        rows_per_second,
        eta_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn half_way_after_ten_seconds_has_ten_seconds_left() {
        let start = Utc::now();
        let f = figures(
            UploadStatus::Processing,
            Some(2000),
            1000,
            Some(start),
            None,
            start + Duration::seconds(10),
        );
        assert_eq!(f.percentage, 50.0);
        assert_eq!(f.rows_per_second, Some(100.0));
        assert_eq!(f.eta_seconds, Some(10.0));
    }

    #[test]
    fn nothing_is_known_before_the_file_is_read() {
        let f = figures(UploadStatus::Queued, None, 0, None, None, Utc::now());
        assert_eq!(
            (f.percentage, f.rows_per_second, f.eta_seconds),
            (0.0, None, None)
        );
    }

    #[test]
    fn a_finished_upload_is_complete_with_its_final_rate() {
        let start = Utc::now();
        let f = figures(
            UploadStatus::CompletedWithErrors,
            Some(10),
            10,
            Some(start),
            Some(start + Duration::seconds(2)),
            start + Duration::seconds(60),
        );
        assert_eq!(
            (f.percentage, f.rows_per_second, f.eta_seconds),
            (100.0, Some(5.0), Some(0.0))
        );
    }

    #[test]
    fn a_cancelled_upload_keeps_its_partial_percentage() {
        let f = figures(UploadStatus::Cancelled, Some(4), 1, None, None, Utc::now());
        assert_eq!(f.percentage, 25.0);
        assert_eq!(f.eta_seconds, Some(0.0));
    }
}
