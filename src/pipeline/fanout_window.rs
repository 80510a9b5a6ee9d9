//! The bounded fan-out window, apart from any I/O: how many chunks of an upload the
//! dispatcher may send beyond those already applied, and when a paused fan-out goes on.
//! With chunks on SQS (no order) this is what keeps a small upload from queueing behind
//! every chunk of a large one: at most `size` of them are ahead of it.

/// An upload's chunks sent and not yet applied are at most `size` (0: no bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub size: u32,
}

impl Window {
    pub fn new(size: usize) -> Self {
        Self {
            size: u32::try_from(size).unwrap_or(u32::MAX),
        }
    }

    pub fn is_bounded(self) -> bool {
        self.size > 0
    }

    /// Chunks a paused fan-out waits to have room for before it reads the file again (half
    /// the window): each re-read of the file sends that many at least.
    pub fn refill(self) -> u32 {
        self.size.div_ceil(2).max(1)
    }

    /// Chunks that may be sent now, when chunks `0..sent` were sent and `applied` of them are
    /// applied. Unbounded: `u32::MAX`.
    pub fn room(self, sent: i32, applied: i64) -> u32 {
        if !self.is_bounded() {
            return u32::MAX;
        }
        let in_flight = (i64::from(sent) - applied).max(0);
        u32::try_from((i64::from(self.size) - in_flight).max(0)).unwrap_or(0)
    }

    /// Whether a fan-out paused before chunk `sent` goes on now: there is room for a refill,
    /// or for all the `remaining` chunks of the file.
    pub fn may_resume(self, sent: i32, applied: i64, remaining: i64) -> bool {
        let room = self.room(sent, applied);
        room >= self.refill() || (room > 0 && i64::from(room) >= remaining)
    }

    /// Applied chunks of the upload at which a fan-out paused before chunk `sent` has room
    /// for a refill (at least 1).
    pub fn resume_at_applied(self, sent: i32) -> i32 {
        let needed = i64::from(sent) - i64::from(self.size) + i64::from(self.refill());
        i32::try_from(needed.max(1)).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::Window;
    use proptest::prelude::*;

    #[test]
    fn a_full_window_has_no_room_until_half_of_it_is_applied() {
        let w = Window::new(16);
        assert_eq!(w.room(16, 0), 0);
        assert!(!w.may_resume(16, 7, 100));
        assert!(w.may_resume(16, 8, 100));
        assert_eq!(w.resume_at_applied(16), 8);
        assert_eq!(w.room(16, 8), 8);
    }

    #[test]
    fn the_last_chunks_go_as_soon_as_they_fit() {
        let w = Window::new(16);
        assert!(w.may_resume(16, 2, 2));
        assert!(!w.may_resume(16, 0, 2));
    }

    #[test]
    fn an_unbounded_window_always_has_room() {
        let w = Window::new(0);
        assert_eq!(w.room(1_000_000, 0), u32::MAX);
        assert!(w.may_resume(1_000_000, 0, 5));
    }

    #[test]
    fn a_window_of_one_sends_one_at_a_time() {
        let w = Window::new(1);
        assert_eq!(w.refill(), 1);
        assert_eq!(w.room(3, 2), 0);
        assert_eq!(w.room(3, 3), 1);
        assert_eq!(w.resume_at_applied(3), 3);
    }

    proptest! {
        /// Once the applied chunks reach `resume_at_applied`, the paused fan-out may go on;
        /// never does it send past the window.
        #[test]
        fn resume_point_means_room(size in 1u32..64, sent in 1i32..10_000, applied in 0i64..10_000) {
            let w = Window { size };
            let applied = applied.min(i64::from(sent));
            if applied >= i64::from(w.resume_at_applied(sent)) {
                prop_assert!(w.may_resume(sent, applied, i64::MAX));
            }
            prop_assert!(i64::from(sent) - applied + i64::from(w.room(sent, applied)) <= i64::from(size).max(i64::from(sent) - applied));
        }
    }
}
