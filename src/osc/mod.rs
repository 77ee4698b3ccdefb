//! OSC: the control server (`/orchestra/…` commands, answered with `/orchestra/ok` or
//! `/orchestra/error`) and the router (`/BLOCK/path` forwarded to wherever the block listens
//! now), on one UDP socket.

pub mod dispatch;
pub mod memory;
pub mod server;
