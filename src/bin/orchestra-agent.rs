//! `orchestra-agent`: the agent that owns one host (the `orchestra-agent` crate). It lives in
//! this package so that `cargo build` and the tests always build it beside `orchestra`, which
//! starts it on this machine and uploads it to every remote host; it links only what a host
//! needs.

fn main() {
    orchestra_agent::main()
}
