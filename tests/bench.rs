//! The benchmark harness (`examples/bench.rs`) in its short mode, so that it cannot rot: every
//! scenario runs a few iterations and must finish with every check passed. Timings are not
//! asserted here (BENCHMARKS.md has the numbers); outcomes and byte counts are.

mod procs;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procs::example;
use serde_json::Value;

#[test]
fn bench_short_mode_runs_every_scenario() {
    let mut child = Command::new(example("bench"))
        .args(["all", "--short", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bench");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bench --short did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(status.success(), "bench failed ({status}); stdout:\n{out}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let of =
        |bench: &str| -> Vec<&Value> { records.iter().filter(|r| r["bench"] == bench).collect() };

    // Upgrade latency: every phase, from 3 runs, each a real time.
    let upgrade = of("upgrade");
    assert_eq!(upgrade.len(), 8, "{upgrade:#?}");
    for row in &upgrade {
        assert_eq!(row["runs"], 3, "{row}");
        assert!(row["p50_ms"].as_f64().is_some(), "{row}");
    }
    let total = upgrade
        .iter()
        .find(|r| r["phase"] == "relayed → direct established")
        .expect("total row");
    assert!(total["p50_ms"].as_f64().unwrap_or(0.0) > 0.0, "{total}");

    // Signaling cost: counted, and within the 8 KiB budget (it is ~1.3 KiB).
    let signaling = of("signaling");
    assert_eq!(signaling.len(), 3, "{signaling:#?}");
    let both = signaling
        .iter()
        .find(|r| r["direction"] == "both directions")
        .expect("both directions");
    let bytes = both["max_bytes"].as_f64().unwrap_or(f64::NAN);
    assert!(bytes > 500.0 && bytes <= 8192.0, "{both}");

    // Throughput: three transports, 1 and 8 streams; the harness checked every byte count.
    let throughput = of("throughput");
    assert_eq!(throughput.len(), 6, "{throughput:#?}");
    for row in &throughput {
        assert!(row["median_mib_s"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
    }

    // Scale: every pair upgraded, and every dialer of the one busy peer.
    let scale = of("scale");
    assert_eq!(scale.len(), 1, "{scale:#?}");
    assert_eq!(scale[0]["upgraded"], scale[0]["pairs"], "{}", scale[0]);
    assert!(scale[0]["relay_peak_rss_kib"].as_u64().unwrap_or(0) > 0);
    let hub = of("hub");
    assert_eq!(hub.len(), 1, "{hub:#?}");
    assert_eq!(hub[0]["upgraded"], hub[0]["connections"], "{}", hub[0]);
}
