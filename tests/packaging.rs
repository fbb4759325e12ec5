//! What a user gets with one dependency line: a project outside this workspace that depends
//! on libp2p-webrtc-signal by path, with no `[patch]` section, must resolve the forked
//! webrtc-rs crates (`patches/*`, `libp2p-webrtc-signal-<crate>`), never upstream's, and a
//! direct connection it makes must show the forks' behaviour: both descriptions carry SNAP's
//! `a=sctp-init` (the patched `rtc`, through the patched `rtc-sctp`'s `snap_init_chunk`), so
//! the SCTP association comes up without its handshake.
//!
//! The scratch project is built with the workspace's `Cargo.lock` (the versions tested here)
//! in its own target directory (`target/outside-workspace`, kept between runs): a nested
//! `cargo` cannot share the build directory that `cargo test` holds locked.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The forked crates: a dependent's graph must hold these, by these names.
const FORKS: [&str; 6] = [
    "rtc",
    "rtc-datachannel",
    "rtc-dtls",
    "rtc-ice",
    "rtc-sctp",
    "webrtc",
];
const FORK_PREFIX: &str = "libp2p-webrtc-signal-";
const FORK_VERSION: &str = "0.21.1-fork.1";

const MAIN_RS: &str = r#"
use std::time::Duration;

use libp2p_webrtc_signal::{Config, SdpRole, Session, SessionEvent};

#[tokio::main]
async fn main() {
    let config = Config::default()
        .with_udp_bind_addrs(vec!["127.0.0.1:0".parse().unwrap()])
        .with_loopback_candidates(true);
    let run = async {
        let mut offerer = Session::new(&config, SdpRole::Offerer).await.unwrap();
        let mut answerer = Session::new(&config, SdpRole::Answerer).await.unwrap();
        let offer = offerer.create_offer().await.unwrap();
        let answer = answerer.accept_offer(&offer).await.unwrap();
        offerer.accept_answer(&answer).await.unwrap();
        let (mut a_up, mut b_up) = (false, false);
        while !(a_up && b_up) {
            tokio::select! {
                ev = offerer.next_event(), if !a_up => match ev.unwrap() {
                    SessionEvent::LocalCandidate(c) => answerer.add_remote_candidate(Some(&c)).await.unwrap(),
                    SessionEvent::LocalCandidatesComplete => answerer.add_remote_candidate(None).await.unwrap(),
                    SessionEvent::Connected => a_up = true,
                },
                ev = answerer.next_event(), if !b_up => match ev.unwrap() {
                    SessionEvent::LocalCandidate(c) => offerer.add_remote_candidate(Some(&c)).await.unwrap(),
                    SessionEvent::LocalCandidatesComplete => offerer.add_remote_candidate(None).await.unwrap(),
                    SessionEvent::Connected => b_up = true,
                },
            }
        }
        // Both connections must come up: the SCTP association is established (with SNAP,
        // from the signaled INIT chunks).
        let _a = offerer.into_connection().await.unwrap();
        let _b = answerer.into_connection().await.unwrap();
        let has_snap = |sdp: &str| sdp.lines().any(|l| l.starts_with("a=sctp-init:"));
        println!("snap offer={} answer={}", has_snap(&offer), has_snap(&answer));
        println!("connected");
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("timed out");
}
"#;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("outside-workspace")
}

/// A fresh project in the system's temporary directory (outside any workspace).
fn scratch_project() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lws-outside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        r#"[package]
name = "outside"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
libp2p-webrtc-signal = {{ path = {path:?} }}
tokio = {{ version = "1", features = ["rt-multi-thread", "macros", "time"] }}

# Its own workspace root: nothing of the crate's workspace applies.
[workspace]

[profile.dev]
debug = false
"#,
        path = workspace().display().to_string()
    );
    assert!(
        !manifest.contains("patch"),
        "the scratch manifest patches nothing"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN_RS).unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    dir
}

/// Runs cargo in `dir`, offline first (the workspace's build fetched every crate), then
/// online if a crate is missing from the local cache.
fn cargo(dir: &Path, args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(dir)
            .env("CARGO_TARGET_DIR", target_dir())
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(args);
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("cargo runs")
    };
    let mut out = run(true);
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("offline") {
        out = run(false);
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo {args:?} failed in {}:\n{stdout}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_project_outside_the_workspace_gets_the_forks_and_their_behaviour() {
    let dir = scratch_project();

    // The resolved graph: every fork, at the fork's version, and none of upstream's crates
    // of the same names.
    let tree = cargo(
        &dir,
        &[
            "tree", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ],
    );
    let packages: Vec<(&str, &str)> = tree
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?.trim_start_matches('v')))
        })
        .collect();
    for fork in FORKS {
        let name = format!("{FORK_PREFIX}{fork}");
        assert!(
            packages
                .iter()
                .any(|(n, v)| *n == name && *v == FORK_VERSION),
            "{name} {FORK_VERSION} is not in the graph:\n{tree}"
        );
        assert!(
            !packages.iter().any(|(n, _)| *n == fork),
            "upstream {fork} is in the graph:\n{tree}"
        );
    }

    // The behaviour: a connection made by that project signals SNAP on both sides.
    let out = cargo(&dir, &["run", "--quiet"]);
    assert!(
        out.contains("snap offer=true answer=true"),
        "SNAP not in both descriptions:\n{out}"
    );
    assert!(out.contains("connected"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
