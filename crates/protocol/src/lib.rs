//! The wire between the cloud-orchestra controller and the agent on each host, and the names
//! that cross it. This crate is the only place that knows the JSON field names of the wire:
//! both sides speak it through these types.
//!
//! - [`ids`]: block, host, JACK client and port names, link ids and link ends, and the
//!   [`Part`](ids::Part) a process plays — each with its text form written once.
//! - [`spec`]: what a host runs — a [`ProcessSpec`](spec::ProcessSpec), the
//!   [`Edge`](spec::Edge)s between ports, live params, module files as they travel.
//! - [`wire`]: the requests, each with the type of its reply ([`Ask`](wire::Ask)), the
//!   events an agent sends, and the lines they travel on.

pub mod ids;
pub mod spec;
pub mod wire;

pub use ids::{BlockName, ClientName, HostName, IdError, LinkEnd, LinkId, Part, PortRef, Side};
pub use spec::{Edge, LiveParam, ProcessSpec};
pub use wire::{Ask, Event, Request};
