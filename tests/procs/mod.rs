//! Processes of the examples (`node` and the lab helpers) run by the tests, with their
//! stdout read as JSON events.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Hang guard for one wait; generous, the steps take milliseconds to a few seconds.
pub const T: Duration = Duration::from_secs(60);

/// The path of a built example. `cargo test` builds the examples before running any test;
/// `cargo test --test examples` alone does not rebuild them (run `cargo build --examples`
/// first). Built here only if missing: a nested cargo run would not share the outer one's
/// build fingerprints and would rebuild dependencies.
pub fn example(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples")))
        .expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building example {name} failed");
    }
    path
}

/// A running `node`; killed when dropped. Its stdout lines arrive as JSON values.
pub struct Node {
    pub child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Node {
    /// Starts the `node` example with these arguments.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(example("node"));
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Starts `node` in a network namespace (`ip netns exec`, which execs it: killing the
    /// child kills the node).
    pub fn start_in(netns: &str, args: &[&str]) -> Self {
        Self::start_bin_in(&example("node"), netns, args)
    }

    /// [`Node::start_in`] with another build of `node` (`bin`), for side-by-side
    /// measurements against an earlier commit.
    pub fn start_bin_in(bin: &std::path::Path, netns: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(bin).args(args);
        Self::spawn(cmd)
    }

    /// Starts a command whose stdout is JSON lines.
    pub fn spawn(cmd: Command) -> Self {
        Self::spawn_with_stderr(cmd, Stdio::inherit())
    }

    /// [`Node::spawn`], with its stderr going to `stderr`.
    pub fn spawn_with_stderr(mut cmd: Command, stderr: Stdio) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
                assert!(value["event"].is_string(), "no \"event\" in {line}");
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The next event called `name` (events before it are kept in `seen`).
    pub fn wait(&mut self, name: &str) -> Value {
        self.next_where(&format!("{name:?} event"), |e| e["event"] == name)
    }

    /// The first event, seen already or to come, for which `pred` holds.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match self.seen.iter().find(|e| pred(e)) {
            Some(e) => e.clone(),
            None => self.next_where(what, pred),
        }
    }

    /// The next event, not seen yet, for which `pred` holds.
    pub fn next(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.next_where(what, pred)
    }

    /// The next event for which `pred` holds (events before it are kept in `seen`).
    fn next_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {what} ({e}); saw {:#?}", self.seen));
            self.seen.push(event.clone());
            if pred(&event) {
                return event;
            }
        }
    }

    /// The events printed so far, without waiting for more.
    pub fn seen_now(&mut self) -> &[Value] {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        &self.seen
    }

    /// The events seen so far.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Waits for the process to exit; returns its status code and all its events.
    pub fn finish(mut self) -> (i32, Vec<Value>) {
        let deadline = Instant::now() + T * 2;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(event);
        }
        (code, std::mem::take(&mut self.seen))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn events<'a>(all: &'a [Value], name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    all.iter().filter(move |e| e["event"] == name)
}
