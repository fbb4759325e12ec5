//! Replacing an outbound data channel that died unused (webrtc-rs 0.21.1, beside [`super::reuse`]).
//!
//! A channel created while a reset for its stream id is still in flight, or whose open message
//! got lost, closes (or never opens) before carrying a byte. Nothing was sent or received on
//! it, so the opener replaces it with a fresh one, after a doubling delay, a bounded number of
//! times; writers wait meanwhile. The accepting side never hands such channels to the
//! application (it surfaces an inbound stream only once its first message arrived).

use std::time::Duration;

/// How often an outbound stream replaces a channel that died unused.
pub(super) const ATTEMPTS: u32 = 8;
/// Delay before the first replacement; doubled for each further one (10 ms .. 1.28 s).
pub(super) const FIRST_DELAY: Duration = Duration::from_millis(10);

/// The replacements an outbound stream has left.
#[derive(Debug, Clone)]
pub(super) struct Reopen {
    left: u32,
    delay: Duration,
}

impl Reopen {
    /// For an outbound stream: [`ATTEMPTS`] replacements; inbound streams get none.
    pub(super) fn new(outbound: bool) -> Self {
        Self {
            left: if outbound { ATTEMPTS } else { 0 },
            delay: FIRST_DELAY,
        }
    }

    /// Whether a replacement is left.
    pub(super) fn available(&self) -> bool {
        self.left > 0
    }

    /// Takes one replacement: the delay to wait before it, or `None` when none is left.
    pub(super) fn take(&mut self) -> Option<Duration> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let delay = self.delay;
        self.delay = self.delay.saturating_mul(2);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_doubling() {
        let mut r = Reopen::new(true);
        let delays: Vec<Duration> = std::iter::from_fn(|| r.take()).collect();
        assert_eq!(delays.len(), ATTEMPTS as usize);
        assert_eq!(delays.first(), Some(&FIRST_DELAY));
        assert_eq!(delays.last(), Some(&Duration::from_millis(1280)));
        assert!(!r.available());
    }

    #[test]
    fn inbound_streams_never_reopen() {
        let mut r = Reopen::new(false);
        assert!(!r.available());
        assert_eq!(r.take(), None);
    }
}
