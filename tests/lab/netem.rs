//! Delay and loss in userspace, for the NAT lab (this kernel has no `netem` qdisc).
//!
//! Binds an NFQUEUE; every packet queued there is dropped with probability `--loss`
//! (percent) or released `--delay-ms` later, in order. Run it in the core router's network
//! namespace with `iptables -t mangle -A FORWARD -j NFQUEUE --queue-num N`; a forwarded packet
//! crosses two links (in and out), so the lab passes twice the per-link values.
//!
//! ```text
//! lab-netem --queue 0 --delay-ms 50 --loss 9.75 --seed 1
//! ```
//! Prints `ready` on stdout once bound, then runs until killed.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut queue_num = 0u16;
    let mut delay = Duration::ZERO;
    let mut loss = 0.0f64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--queue" => queue_num = value.parse()?,
            "--delay-ms" => delay = Duration::from_secs_f64(value.parse::<f64>()? / 1000.0),
            "--loss" => loss = value.parse::<f64>()? / 100.0,
            "--seed" => seed = value.parse::<u64>()?.max(1),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if !(0.0..=1.0).contains(&loss) {
        return Err("--loss is a percentage, 0 to 100".into());
    }
    let mut queue = nfq::Queue::open()?;
    queue.bind(queue_num)?;
    queue.set_queue_max_len(queue_num, 65536)?;
    queue.set_nonblocking(true);
    println!("ready");
    std::io::stdout().flush()?;

    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        // Take everything that arrived.
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let roll = (seed >> 11) as f64 / (1u64 << 53) as f64;
                    if roll < loss {
                        msg.set_verdict(nfq::Verdict::Drop);
                        queue.verdict(msg)?;
                    } else if delay.is_zero() {
                        msg.set_verdict(nfq::Verdict::Accept);
                        queue.verdict(msg)?;
                    } else {
                        held.push_back((Instant::now() + delay, msg));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Release what is due.
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(nfq::Verdict::Accept);
                queue.verdict(msg)?;
            }
        }
        let next = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(1));
        std::thread::sleep(next.clamp(Duration::from_micros(200), Duration::from_millis(1)));
    }
}
