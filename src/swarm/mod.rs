//! The swarm side: the [`Behaviour`](behaviour::Behaviour) adapts Swarm events to the
//! per-peer upgrade [`policy`], whose decisions it carries out; one
//! [`Handler`](handler::Handler) per connection runs the signaling [`exchange`] on a
//! `/webrtc-signal/1.0.0` stream ([`protocol`]); the [`Transport`](transport::Transport)
//! brings the resulting direct connections into the Swarm.

pub(crate) mod behaviour;
pub(crate) mod exchange;
pub(crate) mod handler;
pub(crate) mod policy;
pub(crate) mod protocol;
pub(crate) mod transport;
