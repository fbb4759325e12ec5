//! The state of one libp2p stream over a data channel: plain data, no I/O.
//!
//! Follows the libp2p WebRTC spec: `FIN` half-closes the sender's side and is answered with
//! `FIN_ACK`; the write side counts as closed once `FIN_ACK` arrives (or a timeout fires);
//! `STOP_SENDING` ends the receiver's interest; `RESET_STREAM` aborts the stream. The data
//! channel may be closed once both halves are finished.

use std::io;

use crate::direct::framing::Flag;

/// The read half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadHalf {
    /// Data may still arrive.
    Open,
    /// The remote sent `FIN`: end of stream.
    Finished,
    /// The remote reset the stream, or the channel closed without `FIN`.
    Reset,
}

/// The write half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteHalf {
    /// Writes are accepted.
    Open,
    /// `FIN` was sent; waiting for `FIN_ACK`.
    FinSent,
    /// Closed: `FIN_ACK` arrived or the wait timed out.
    Closed,
    /// The remote sent `STOP_SENDING`: writes fail.
    Stopped,
    /// Reset by either side: writes fail.
    Reset,
}

/// Both halves of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) read: ReadHalf,
    pub(crate) write: WriteHalf,
    /// The remote sent `RESET_STREAM`.
    pub(crate) reset_by_remote: bool,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            read: ReadHalf::Open,
            write: WriteHalf::Open,
            reset_by_remote: false,
        }
    }

    /// Applies a received flag; returns the flag to answer with, if any.
    pub(crate) fn on_flag(&mut self, flag: Flag) -> Option<Flag> {
        match flag {
            Flag::Fin => {
                if self.read == ReadHalf::Open {
                    self.read = ReadHalf::Finished;
                }
                // Answer every FIN, even a duplicate: the remote may have missed our FIN_ACK.
                (self.read == ReadHalf::Finished).then_some(Flag::FinAck)
            }
            Flag::FinAck => {
                if self.write == WriteHalf::FinSent {
                    self.write = WriteHalf::Closed;
                }
                None
            }
            Flag::StopSending => {
                if self.write == WriteHalf::Open {
                    self.write = WriteHalf::Stopped;
                }
                None
            }
            Flag::ResetStream => {
                self.reset_by_remote = true;
                self.reset();
                None
            }
        }
    }

    /// Aborts both halves (a reset sent or received, or malformed input).
    pub(crate) fn reset(&mut self) {
        if self.read == ReadHalf::Open {
            self.read = ReadHalf::Reset;
        }
        if matches!(
            self.write,
            WriteHalf::Open | WriteHalf::FinSent | WriteHalf::Stopped
        ) {
            self.write = WriteHalf::Reset;
        }
    }

    /// The data channel closed underneath the stream.
    pub(crate) fn on_channel_closed(&mut self) {
        if self.read == ReadHalf::Open {
            self.read = ReadHalf::Reset;
        }
        self.write = match self.write {
            // The remote cannot acknowledge any more; what it read, it read.
            WriteHalf::FinSent => WriteHalf::Closed,
            WriteHalf::Open | WriteHalf::Stopped => WriteHalf::Reset,
            done => done,
        };
    }

    /// Whether received data is delivered (data after `FIN` or a reset is dropped).
    pub(crate) fn accepts_data(&self) -> bool {
        self.read == ReadHalf::Open
    }

    /// `Ok` if a write may proceed, else the error to report.
    pub(crate) fn check_write(&self) -> io::Result<()> {
        match self.write {
            WriteHalf::Open => Ok(()),
            WriteHalf::Reset => Err(io::ErrorKind::ConnectionReset.into()),
            WriteHalf::Stopped => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "remote stopped reading",
            )),
            WriteHalf::FinSent | WriteHalf::Closed => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream closed for writing",
            )),
        }
    }

    /// `None` while reading may go on; `Some(Ok(()))` at end of stream; else the error.
    pub(crate) fn read_end(&self) -> Option<io::Result<()>> {
        match self.read {
            ReadHalf::Open => None,
            ReadHalf::Finished => Some(Ok(())),
            ReadHalf::Reset => Some(Err(io::ErrorKind::ConnectionReset.into())),
        }
    }

    /// Called by `close`: whether a `FIN` must be sent now.
    pub(crate) fn start_close(&mut self) -> bool {
        if self.write == WriteHalf::Open {
            self.write = WriteHalf::FinSent;
            true
        } else {
            false
        }
    }

    /// The wait for `FIN_ACK` timed out.
    pub(crate) fn on_fin_ack_timeout(&mut self) {
        if self.write == WriteHalf::FinSent {
            self.write = WriteHalf::Closed;
        }
    }

    /// Both halves are finished cleanly: the channel may be closed without losing data.
    pub(crate) fn is_clean_done(&self) -> bool {
        self.read == ReadHalf::Finished
            && matches!(self.write, WriteHalf::Closed | WriteHalf::Stopped)
    }

    /// Whether this side closes the data channel now (`opener`: this side opened the stream).
    ///
    /// Closing a channel resets its SCTP stream, and webrtc-rs 0.21.1 answers a peer's reset
    /// at once, even while DATA for that stream is still queued on its side; that DATA then
    /// arrives after the reset and poisons the stream id for the next channel that gets it.
    /// So the channel is closed only by a side that knows the peer will send nothing more on
    /// it: the receiver of a `RESET_STREAM`, or, for a clean end, the accepting side (the
    /// opener's `FIN` and `FIN_ACK` were its last words). A side that sent `RESET_STREAM`
    /// waits for the peer to close (see the stream's pump for the bound on that wait).
    pub(crate) fn closes_channel(&self, opener: bool) -> bool {
        self.reset_by_remote || (!opener && self.is_clean_done())
    }

    /// Nothing more can flow in either direction.
    pub(crate) fn is_done(&self) -> bool {
        self.read != ReadHalf::Open && !matches!(self.write, WriteHalf::Open | WriteHalf::FinSent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_both_ways_like_the_spec_example() {
        // A closes first; B acknowledges, finishes writing, closes.
        let (mut a, mut b) = (State::new(), State::new());
        assert!(a.start_close());
        assert_eq!(b.on_flag(Flag::Fin), Some(Flag::FinAck));
        assert_eq!(b.read_end().map(|r| r.is_ok()), Some(true));
        b.check_write().unwrap();
        assert_eq!(a.on_flag(Flag::FinAck), None);
        assert_eq!(a.write, WriteHalf::Closed);
        assert!(!a.is_done());
        assert!(b.start_close());
        assert_eq!(a.on_flag(Flag::Fin), Some(Flag::FinAck));
        assert!(a.is_clean_done());
        b.on_flag(Flag::FinAck);
        assert!(b.is_clean_done());
    }

    #[test]
    fn half_close_keeps_reading() {
        let mut s = State::new();
        assert!(s.start_close());
        assert!(s.check_write().is_err());
        assert!(s.accepts_data());
        assert!(s.read_end().is_none());
        assert!(!s.start_close(), "FIN is sent once");
    }

    #[test]
    fn reset_fails_both_halves() {
        let mut s = State::new();
        s.on_flag(Flag::ResetStream);
        assert_eq!(
            s.read_end().unwrap().unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        assert_eq!(
            s.check_write().unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        assert!(!s.accepts_data());
        assert!(s.is_done());
        assert!(!s.is_clean_done());
    }

    #[test]
    fn reset_after_fin_keeps_end_of_stream() {
        let mut s = State::new();
        s.on_flag(Flag::Fin);
        s.on_flag(Flag::ResetStream);
        assert!(s.read_end().unwrap().is_ok());
    }

    #[test]
    fn stop_sending_fails_writes_only() {
        let mut s = State::new();
        s.on_flag(Flag::StopSending);
        assert_eq!(
            s.check_write().unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert!(s.accepts_data());
        // STOP_SENDING after our FIN: we still wait for the FIN_ACK.
        let mut s = State::new();
        s.start_close();
        s.on_flag(Flag::StopSending);
        assert_eq!(s.write, WriteHalf::FinSent);
    }

    #[test]
    fn duplicate_fin_is_acked_again_and_unsolicited_fin_ack_ignored() {
        let mut s = State::new();
        assert_eq!(s.on_flag(Flag::Fin), Some(Flag::FinAck));
        assert_eq!(s.on_flag(Flag::Fin), Some(Flag::FinAck));
        assert_eq!(s.on_flag(Flag::FinAck), None);
        assert_eq!(s.write, WriteHalf::Open);
    }

    #[test]
    fn channel_close_without_fin_is_a_reset() {
        let mut s = State::new();
        s.on_channel_closed();
        assert!(s.read_end().unwrap().is_err());
        assert!(s.check_write().is_err());
        let mut s = State::new();
        s.on_flag(Flag::Fin);
        s.start_close();
        s.on_channel_closed();
        assert!(s.read_end().unwrap().is_ok());
        assert_eq!(s.write, WriteHalf::Closed);
    }

    #[test]
    fn only_a_side_whose_peer_is_quiet_closes_the_channel() {
        // A reset received: either side closes.
        for opener in [true, false] {
            let mut s = State::new();
            s.on_flag(Flag::ResetStream);
            assert!(s.closes_channel(opener));
        }
        // A reset sent: neither side closes; the peer will.
        for opener in [true, false] {
            let mut s = State::new();
            s.reset();
            assert!(s.is_done());
            assert!(!s.closes_channel(opener));
        }
        // A clean end: the accepting side closes.
        let mut s = State::new();
        s.on_flag(Flag::Fin);
        s.start_close();
        assert!(!s.closes_channel(false), "FIN_ACK still due");
        s.on_flag(Flag::FinAck);
        assert!(s.closes_channel(false));
        assert!(!s.closes_channel(true));
    }

    #[test]
    fn fin_ack_timeout_closes_write_half() {
        let mut s = State::new();
        s.start_close();
        s.on_fin_ack_timeout();
        assert_eq!(s.write, WriteHalf::Closed);
    }
}
