use super::*;

fn recovery_window(count: u32, now: Instant) -> Result<Association> {
    window(count, now, ReliabilityType::Rexmit, 1)
}

/// An association with `count` 1 KiB chunks of one stream in flight under the given
/// reliability, and room for all of them in cwnd and rwnd.
fn window(
    count: u32,
    now: Instant,
    reliability: ReliabilityType,
    value: u32,
) -> Result<Association> {
    let mut a = timed_test_association();
    a.my_next_tsn = 100;
    a.cumulative_tsn_ack_point = 99;
    a.advanced_peer_tsn_ack_point = 99;
    a.cwnd = count * a.mtu;
    a.rwnd = a.cwnd;
    let ppi = PayloadProtocolIdentifier::Binary;
    let mut stream = a.open_stream(1, ppi)?;
    stream.set_reliability_params(false, reliability, value)?;
    for _ in 0..count {
        stream.write_sctp(now, &Bytes::from(vec![1; 1024]), ppi)?;
    }
    assert_eq!(count as usize, data_chunks(&a.gather_outbound(now).0));
    Ok(a)
}

#[test]
fn recovery_checks_are_bounded_by_candidates_in_large_windows() -> Result<()> {
    for count in [128, 1024, 4096] {
        for fast in [false, true] {
            let now = Instant::now();
            let mut a = recovery_window(count, now)?;
            let at = now + Duration::from_secs(1);
            if !fast {
                a.handle_timeout(at);
            }
            a.cwnd = a.mtu;
            a.inflight_queue.track_lookups = true;
            for _ in 0..32 {
                let tsn = a.cumulative_tsn_ack_point.wrapping_add(1);
                if fast {
                    a.inflight_queue.get_mut(tsn).unwrap().miss_indicator = 3;
                    a.will_retransmit_fast = true;
                    // The next candidate terminates this one-packet pass.
                    a.inflight_queue.get_mut(tsn + 1).unwrap().miss_indicator = 3;
                }
                a.inflight_queue.lookups.set(0);
                let packets = if fast {
                    a.gather_outbound_fast_retransmission_packets(vec![], at)
                } else {
                    a.gather_data_packets_to_retransmit(vec![], at)
                };
                let lookups = a.inflight_queue.lookups.get();
                let sent = transmitted_data(&packets);
                assert_eq!(vec![tsn], sent.iter().map(|c| c.tsn).collect::<Vec<_>>());
                assert!(
                    lookups <= 16,
                    "count={count}, fast={fast}: {lookups} lookups for one retry"
                );
                // Advance the cumulative ACK between recovery flushes without
                // including SACK processing itself in this operation count.
                a.inflight_queue.pop(tsn).unwrap();
                a.cumulative_tsn_ack_point = tsn;
            }
        }
    }
    Ok(())
}

#[test]
fn deferred_retry_rechecks_expiry_without_retiring_unrelated_messages() -> Result<()> {
    for fast in [false, true] {
        let mut a = timed_test_association();
        let now = Instant::now();
        let ppi = PayloadProtocolIdentifier::Binary;
        a.open_stream(1, ppi)?
            .set_reliability_params(false, ReliabilityType::Timed, 1500)?;
        a.open_stream(2, ppi)?
            .set_reliability_params(false, ReliabilityType::Timed, 1500)?;
        a.stream(1)?
            .write_sctp(now, &Bytes::from_static(b"retry"), ppi)?;
        a.stream(2)?
            .write_sctp(now, &Bytes::from_static(b"unrelated"), ppi)?;
        let sent = transmitted_data(&a.gather_outbound(now).0);
        assert_eq!(2, sent.len());
        if fast {
            a.inflight_queue
                .get_mut(sent[0].tsn)
                .unwrap()
                .miss_indicator = 3;
            a.will_retransmit_fast = true;
        } else {
            a.handle_timeout(now + Duration::from_secs(1));
            // New DATA sent after the T3 marking pass is not a retry candidate.
            a.inflight_queue.get_mut(sent[1].tsn).unwrap().retransmit = false;
        }
        let at = now + Duration::from_millis(1500);
        let packets = if fast {
            a.gather_outbound_fast_retransmission_packets(vec![], at)
        } else {
            a.gather_data_packets_to_retransmit(vec![], at)
        };
        assert_eq!(0, data_chunks(&packets));
        assert!(a.inflight_queue.get(sent[0].tsn).unwrap().abandoned());
        assert!(!a.inflight_queue.get(sent[1].tsn).unwrap().abandoned());
        assert_eq!(9, a.stream(2)?.buffered_amount()?);
        assert!(a.will_send_forward_tsn);
    }
    Ok(())
}

#[test]
fn later_exhausted_fragment_cancels_previously_selected_retry() -> Result<()> {
    for unordered in [false, true] {
        let mut a = timed_test_association();
        a.cwnd = 10 * a.mtu;
        let now = Instant::now();
        let ppi = PayloadProtocolIdentifier::Binary;
        let mut stream = a.open_stream(1, ppi)?;
        stream.set_reliability_params(unordered, ReliabilityType::Rexmit, 1)?;
        stream.write_sctp(now, &Bytes::from(vec![7; 3000]), ppi)?;
        let sent = transmitted_data(&a.gather_outbound(now).0);
        assert!(sent.len() >= 3);
        let at = now + Duration::from_secs(1);
        a.handle_timeout(at);
        // A fast retry occurs after T3 marks the message but before a deferred
        // T3 flush. The earlier fragment still has its one retry available.
        a.inflight_queue
            .get_mut(sent[1].tsn)
            .unwrap()
            .miss_indicator = 3;
        a.will_retransmit_fast = true;
        let fast = a.gather_outbound_fast_retransmission_packets(vec![], at);
        assert_eq!(
            vec![sent[1].tsn],
            transmitted_data(&fast)
                .iter()
                .map(|c| c.tsn)
                .collect::<Vec<_>>()
        );
        a.cwnd = 10 * a.mtu;
        let packets = a.gather_data_packets_to_retransmit(vec![], at);
        assert_eq!(
            0,
            data_chunks(&packets),
            "no fragment of the retired message may escape"
        );
        assert_eq!(0, a.buffered_amount());
        for c in &sent {
            assert!(a.inflight_queue.get(c.tsn).unwrap().abandoned());
        }
        assert_eq!(1, a.inflight_queue.get(sent[0].tsn).unwrap().nsent);
    }
    Ok(())
}

#[test]
fn candidate_abandonment_covers_wrapped_fragments_after_partial_ack() -> Result<()> {
    for unordered in [false, true] {
        for fast in [false, true] {
            let mut a = timed_test_association();
            a.my_next_tsn = u32::MAX - 1;
            a.cumulative_tsn_ack_point = u32::MAX - 2;
            a.advanced_peer_tsn_ack_point = u32::MAX - 2;
            a.cwnd = 3 * a.max_payload_size;
            let size = 4 * a.max_payload_size as usize;
            let now = Instant::now();
            let ppi = PayloadProtocolIdentifier::Binary;
            let mut stream = a.open_stream(1, ppi)?;
            stream.set_reliability_params(unordered, ReliabilityType::Timed, 1500)?;
            stream.write_sctp(now, &Bytes::from(vec![1; size]), ppi)?;
            stream.write_sctp(now, &Bytes::from_static(b"next"), ppi)?;
            let sent = transmitted_data(&a.gather_outbound(now).0);
            assert_eq!(
                vec![u32::MAX - 1, u32::MAX, 0],
                sent.iter().map(|c| c.tsn).collect::<Vec<_>>()
            );
            a.handle_sack(
                &ChunkSelectiveAck {
                    cumulative_tsn_ack: u32::MAX - 1,
                    advertised_receiver_window_credit: 65536,
                    gap_ack_blocks: vec![crate::chunk::chunk_selective_ack::GapAckBlock {
                        start: 2,
                        end: 2,
                    }],
                    ..Default::default()
                },
                now,
            )?;
            assert!(a.inflight_queue.get(u32::MAX - 1).is_none());
            assert!(a.inflight_queue.get(0).unwrap().acknowledged);
            if fast {
                a.inflight_queue.get_mut(u32::MAX).unwrap().miss_indicator = 3;
                a.will_retransmit_fast = true;
            } else {
                a.handle_timeout(now + Duration::from_secs(1));
            }
            let at = now + Duration::from_millis(1500);
            let packets = if fast {
                a.gather_outbound_fast_retransmission_packets(vec![], at)
            } else {
                a.gather_data_packets_to_retransmit(vec![], at)
            };
            assert_eq!(0, data_chunks(&packets));
            for tsn in [u32::MAX, 0, 1] {
                assert!(a.inflight_queue.get(tsn).unwrap().abandoned());
            }
            assert_eq!(1, a.advanced_peer_tsn_ack_point);
            assert_eq!(4, a.stream(1)?.buffered_amount()?);
            assert_eq!(
                Bytes::from_static(b"next"),
                a.pending_queue.peek().unwrap().user_data
            );
        }
    }
    Ok(())
}

#[test]
fn t2_backoff_does_not_compound_simultaneous_t3_expirations() -> Result<()> {
    for state in [
        AssociationState::ShutdownSent,
        AssociationState::ShutdownAckSent,
    ] {
        let mut a = timed_test_association();
        a.rto_mgr.set_rto(1000, false);
        a.set_state(state);
        let mut now = Instant::now();
        a.timers.start(Timer::T2Shutdown, now, 1000);
        a.timers.start(Timer::T3RTX, now, 1000);
        for interval in [2, 4, 8, 16] {
            now = a.timers.get(Timer::T2Shutdown).unwrap();
            assert_eq!(Some(now), a.timers.get(Timer::T3RTX));
            a.handle_timeout(now);
            let deadline = now + Duration::from_secs(interval);
            assert_eq!(Some(deadline), a.timers.get(Timer::T2Shutdown));
            let packets = a.gather_outbound(now).0;
            assert!(!packets.is_empty());
            assert_eq!(Some(deadline), a.timers.get(Timer::T2Shutdown));
            assert_eq!(Some(deadline), a.timers.get(Timer::T3RTX));
        }
    }
    Ok(())
}

// Run this unchanged against the PR head and its replacement in release mode.
// Only recovery flushes are timed; setup and the single T3 marking pass are
// excluded. Cumulative progress is applied directly to isolate retry selection
// from SACK parsing/congestion control. This is not an end-to-end throughput test.
#[test]
#[ignore = "manual recovery CPU/scaling comparison"]
fn benchmark_recovery_flushes() -> Result<()> {
    for count in [128, 1024, 4096] {
        for fast in [false, true] {
            let mut elapsed = 0;
            let mut lookups = 0;
            for track_lookups in [false, true] {
                let now = Instant::now();
                let mut a = recovery_window(count, now)?;
                let at = now + Duration::from_secs(1);
                if !fast {
                    a.handle_timeout(at);
                }
                a.cwnd = a.mtu;
                a.inflight_queue.track_lookups = track_lookups;
                a.inflight_queue.lookups.set(0);
                let started = Instant::now();
                for _ in 0..count {
                    let tsn = a.cumulative_tsn_ack_point.wrapping_add(1);
                    if fast {
                        a.inflight_queue.get_mut(tsn).unwrap().miss_indicator = 3;
                        if let Some(next) = a.inflight_queue.get_mut(tsn + 1) {
                            next.miss_indicator = 3;
                        }
                        a.will_retransmit_fast = true;
                    }
                    let packets = if fast {
                        a.gather_outbound_fast_retransmission_packets(vec![], at)
                    } else {
                        a.gather_data_packets_to_retransmit(vec![], at)
                    };
                    assert_eq!(1, data_chunks(&packets));
                    a.inflight_queue.pop(tsn).unwrap();
                    a.cumulative_tsn_ack_point = tsn;
                }
                if track_lookups {
                    lookups = a.inflight_queue.lookups.get();
                } else {
                    elapsed = started.elapsed().as_nanos();
                }
                assert!(a.inflight_queue.is_empty());
            }
            println!(
                "recovery-bench fast={fast} window={count} elapsed_ns={elapsed} lookups={lookups}"
            );
        }
    }
    Ok(())
}

#[test]
fn public_rtt_reports_measurements_independently_of_backoff() {
    let mut a = timed_test_association();
    a.rto_mgr.set_rto(1000, false);
    assert_eq!(Duration::ZERO, a.rtt());
    a.rto_mgr.set_new_rtt(80);
    assert_eq!(Duration::from_millis(80), a.rtt());
    for _ in 0..4 {
        a.rto_mgr.backoff();
        assert_eq!(Duration::from_millis(80), a.rtt());
    }
    // Patch: RTO.Min is 200 ms, so the first RTO is 80 + 4 * 40 = 240 ms, not 1 s.
    assert_eq!(240 << 4, a.rto_mgr.get_rto());
    a.rto_mgr.set_new_rtt(160);
    assert_eq!(Duration::from_millis(90), a.rtt());
}

#[test]
fn invalid_pending_message_closes_without_sending_or_rearming_timers() -> Result<()> {
    for t3 in [false, true] {
        let mut a = timed_test_association();
        let now = Instant::now();
        let ppi = PayloadProtocolIdentifier::Binary;
        let mut stream = a.open_stream(1, ppi)?;
        stream.set_reliability_params(true, ReliabilityType::Timed, 100)?;
        stream.write_sctp(now, &Bytes::from_static(b"invalid"), ppi)?;
        let mut invalid = a.pending_queue.pop(true, true).unwrap();
        invalid.ending_fragment = false;
        a.pending_queue.push_message(vec![invalid]);
        if t3 {
            a.cwnd = 0;
            // Retain a sent first fragment and a malformed pending tail.
            let mut first = a.pending_queue.peek().unwrap().clone();
            first.tsn = a.my_next_tsn;
            a.my_next_tsn = a.my_next_tsn.wrapping_add(1);
            first.nsent = 1;
            a.inflight_queue.push_no_check(first);
            a.timers.start(Timer::T3RTX, now, 1000);
            a.handle_timeout(now + Duration::from_secs(1));
        }
        assert!(a.poll_transmit(now + Duration::from_secs(1)).is_none());
        assert_eq!(AssociationState::Closed, a.state());
        assert!(a.poll_timeout().is_none());
        assert!(a.streams.is_empty());
        assert!(a.events.iter().any(|event| matches!(
            event,
            Event::AssociationLost {
                reason: AssociationError::TransportError,
                ..
            }
        )));
    }
    Ok(())
}

/// Patch (issue 28, hostile receiver): a peer announcing `a_rwnd = u32::MAX` makes ssthresh
/// `u32::MAX`, so slow start never ends and the window grows without bound: the growth must
/// saturate, not overflow (a panic with overflow checks, a wrap to a tiny window without).
#[test]
fn window_growth_saturates_under_a_huge_receive_window() -> Result<()> {
    let now = Instant::now();
    let mut a = timed_test_association();
    let ppi = PayloadProtocolIdentifier::Binary;
    a.open_stream(1, ppi)?
        .write_sctp(now, &Bytes::from(vec![1; 1024]), ppi)?;
    assert!(
        !a.pending_queue.is_empty(),
        "slow start grows with data pending"
    );
    a.ssthresh = u32::MAX;
    a.cwnd = u32::MAX - 1000;
    a.on_cumulative_tsn_ack_point_advanced(2000, now);
    assert_eq!(a.cwnd, u32::MAX);
    // Congestion avoidance too.
    a.ssthresh = 0;
    a.cwnd = u32::MAX - 20;
    a.partial_bytes_acked = u32::MAX - 10;
    a.on_cumulative_tsn_ack_point_advanced(20, now);
    assert_eq!(a.cwnd, u32::MAX);
    Ok(())
}

/// How a hostile receiver answers the DATA it gets, in `hostile_receiver_transmissions`.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Gap-acknowledges one more chunk per SACK, from the top of the window down; never
    /// the first.
    TopDown,
    /// Gap-acknowledges one more chunk per SACK, from the second up; never the first.
    BottomUp,
    /// Acknowledges nothing, ever, but answers every packet.
    Nothing,
    /// Gap-acknowledges one more chunk each time the first arrives again (after a T3
    /// expiry), from the top down: every expiry acknowledges something new.
    OnePerRetransmission,
}

/// Drives an `n`-chunk window against a receiver that never acknowledges the first chunk,
/// for `secs` simulated seconds in 5 ms steps. Returns the DATA chunks sent, whether the
/// association closed, and whether it sent an ABORT.
fn hostile_receiver_transmissions(
    n: u32,
    strategy: Hostile,
    secs: u64,
) -> Result<(usize, bool, bool)> {
    let start = Instant::now();
    let mut a = window(n, start, ReliabilityType::Reliable, 0)?;
    let base = a.cumulative_tsn_ack_point.wrapping_add(1);
    let mut sent = n as usize;
    let mut aborted = false;
    // Offsets from the cumulative ack (1 = the first chunk) acknowledged so far.
    let mut acked: std::collections::BTreeSet<u16> = Default::default();
    let mut next_down = n as u16;
    let mut next_up = 2u16;
    let mut pending_first = false;
    let mut arrived = true;
    let mut t = start;
    while t < start + Duration::from_secs(secs) && a.state() != AssociationState::Closed {
        if arrived {
            let new = match strategy {
                Hostile::TopDown => Some(next_down),
                Hostile::BottomUp => Some(next_up),
                Hostile::Nothing => None,
                Hostile::OnePerRetransmission if pending_first => Some(next_down),
                Hostile::OnePerRetransmission => None,
            };
            if let Some(offset) = new.filter(|o| *o >= 2 && *o <= n as u16) {
                acked.insert(offset);
                next_down = next_down.saturating_sub(1);
                next_up += 1;
            }
            pending_first = false;
            let mut blocks = vec![];
            for &o in &acked {
                match blocks.last_mut() {
                    Some(crate::chunk::chunk_selective_ack::GapAckBlock { end, .. })
                        if *end + 1 == o =>
                    {
                        *end = o
                    }
                    _ => blocks
                        .push(crate::chunk::chunk_selective_ack::GapAckBlock { start: o, end: o }),
                }
            }
            let sack = ChunkSelectiveAck {
                cumulative_tsn_ack: base.wrapping_sub(1),
                advertised_receiver_window_credit: 1 << 20,
                gap_ack_blocks: blocks,
                ..Default::default()
            };
            a.handle_sack(&sack, t)?;
        }
        t += Duration::from_millis(5);
        a.handle_timeout(t);
        let packets = a.gather_outbound(t).0;
        aborted |= packets.iter().any(|raw| {
            Packet::unmarshal(raw)
                .unwrap()
                .chunks
                .iter()
                .any(|c| c.as_any().is::<ChunkAbort>())
        });
        let data = transmitted_data(&packets);
        arrived = !data.is_empty();
        pending_first |= data.iter().any(|c| c.tsn == base);
        sent += data.len();
    }
    Ok((sent, a.state() == AssociationState::Closed, aborted))
}

/// Patch (issue 28, hostile receiver): a receiver that acknowledges around the first chunk
/// of the window, one more chunk per SACK or per retransmission round, made the sender
/// resend the rest of its window again and again: for a 256-chunk window, 15,156 DATA
/// chunks (bottom up) and 21,333 (one per round) in ten simulated minutes, growing with the
/// square of the window. Each chunk now has a retransmission limit (`max_chunk_retrans`, 10):
/// past it the association is aborted.
#[test]
fn a_receiver_acknowledging_around_a_chunk_cannot_make_the_sender_resend_without_bound()
-> Result<()> {
    let limit = crate::association::timer::MAX_CHUNK_RETRANS;
    for strategy in [
        Hostile::TopDown,
        Hostile::BottomUp,
        Hostile::Nothing,
        Hostile::OnePerRetransmission,
    ] {
        for n in [16u32, 64, 256] {
            let (sent, closed, aborted) = hostile_receiver_transmissions(n, strategy, 600)?;
            assert!(
                sent <= (limit + 1) * n as usize,
                "{strategy:?}, {n} chunks: {sent} DATA chunks sent"
            );
            // A receiver that acknowledges nothing exhausts the T3-rtx error counter first
            // (which stops retransmitting, as before); the others reach the chunk limit.
            if !matches!(strategy, Hostile::Nothing) {
                assert!(closed && aborted, "{strategy:?}, {n} chunks: not aborted");
            }
        }
    }
    Ok(())
}

/// Patch (path MTU discovery, a path that shrinks): after a T3-rtx the window is one packet
/// of the current size, and after a fall-back that is smaller than the chunks already cut
/// for the larger size. With nothing in flight one such chunk still goes (it fit no window
/// before: the association never sent it again and failed), and the association asks for IP
/// fragmentation until the peer has it.
#[test]
fn a_chunk_cut_for_a_larger_path_mtu_is_sent_again_after_the_fall_back() -> Result<()> {
    let now = Instant::now();
    let mut a = timed_test_association();
    a.set_mtu(crate::ETHERNET_MAX_MTU);
    a.my_next_tsn = 100;
    a.cumulative_tsn_ack_point = 99;
    a.advanced_peer_tsn_ack_point = 99;
    a.cwnd = 8 * a.mtu;
    a.rwnd = a.cwnd;
    let ppi = PayloadProtocolIdentifier::Binary;
    let mut stream = a.open_stream(1, ppi)?;
    stream.write_sctp(now, &Bytes::from(vec![1; 4 * 1400]), ppi)?;
    let sent = transmitted_data(&a.gather_outbound(now).0);
    assert_eq!(4, sent.len());
    assert!(sent.iter().all(|c| c.user_data.len() == 1400));
    assert!(!a.needs_fragmentation());

    // The path falls back to the base size (two T3-rtx in a row), the window to one packet.
    a.set_mtu(1188);
    assert!(a.needs_fragmentation(), "four chunks are too large now");
    a.handle_timeout(now + Duration::from_secs(1));
    a.cwnd = a.mtu;
    let again = transmitted_data(
        &a.gather_data_packets_to_retransmit(vec![], now + Duration::from_secs(1)),
    );
    assert_eq!(
        vec![100],
        again.iter().map(|c| c.tsn).collect::<Vec<_>>(),
        "one chunk, larger than the window, goes again"
    );

    // Acknowledged up to the newest of them: "don't fragment" again.
    a.cumulative_tsn_ack_point = 103;
    assert!(!a.needs_fragmentation());
    Ok(())
}
