//! Relayed connections upgraded to direct WebRTC connections: real swarms in one process, a
//! relay server on TCP 127.0.0.1, WebRTC on real UDP. One test binary, a module per topic;
//! the helpers are the shared test kit in `tests/swarm`.

// `common` and `swarm` (through `examples/support`) both include the one payload generator.
#![allow(clippy::duplicate_mod)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../swarm/mod.rs"]
mod swarm;

mod failures;
mod lifecycle;
mod measure;
mod migration;
