//! Who may open the page: the address rule (`--web` beyond loopback needs `--web-allow`), the
//! token every request must carry then, and the one pure check each request goes through.

use anyhow::{bail, Result};
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The rules a server applies to every request, fixed when it binds.
#[derive(Debug, Clone)]
pub struct Access {
    /// Networks besides this machine's own loopback address that may open the page.
    pub allow: Vec<IpNet>,
    /// Required on every request and the websocket when the page is served beyond loopback
    /// (`?token=…`): an address rule alone lets anyone on an allowed network in.
    pub token: Option<String>,
}

/// What a request says about itself, as far as access goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asking<'a> {
    /// The `token` query parameter.
    pub token: Option<&'a str>,
    /// The `Origin` header (browsers send it with a websocket and with scripts' requests).
    pub origin: Option<&'a str>,
    /// The `Host` header.
    pub host: Option<&'a str>,
}

/// Why a request was refused (the 403's body, word for word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not this machine and not in `--web-allow`.
    Outside(IpAddr),
    NoToken,
    WrongToken,
    /// A page of another site asked (its scripts could read the orchestra otherwise).
    ForeignOrigin(String),
    /// Served on loopback without a token, the page answers only to this machine's own
    /// names: a site whose name an attacker points at 127.0.0.1 (DNS rebinding) would
    /// otherwise count as the page's own origin.
    ForeignHost(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Outside(ip) => write!(
                f,
                "forbidden: {ip} is not in --web-allow; nothing was changed"
            ),
            Refusal::NoToken => write!(
                f,
                "forbidden: this page needs the token `orchestra run` printed with its address (…/?token=…); nothing was changed"
            ),
            Refusal::WrongToken => write!(
                f,
                "forbidden: wrong token (use the address `orchestra run` printed); nothing was changed"
            ),
            Refusal::ForeignOrigin(origin) => write!(
                f,
                "forbidden: a page from {origin} may not open this orchestra; nothing was changed"
            ),
            Refusal::ForeignHost(host) => write!(
                f,
                "forbidden: on loopback the page answers to 127.0.0.1, [::1] or localhost, not to {host}; nothing was changed"
            ),
        }
    }
}

impl Access {
    /// The rules for a server bound to `bind`: beyond loopback it needs `allow` (else the
    /// error says so) and gets a fresh random token.
    pub fn for_bind(bind: SocketAddr, allow: Vec<IpNet>) -> Result<Access> {
        if bind.ip().is_loopback() {
            return Ok(Access { allow, token: None });
        }
        if allow.is_empty() {
            bail!(
                "--web {bind}: serving the page beyond loopback needs --web-allow CIDR… (the networks that may open it)"
            );
        }
        Ok(Access {
            allow,
            token: Some(new_token()),
        })
    }

    /// Let the request in, or say why not. Pure: the same request always gets the same answer.
    pub fn admit(&self, peer: IpAddr, asking: Asking<'_>) -> Result<(), Refusal> {
        let peer = peer.to_canonical();
        // This machine's own address; any other, even another loopback one, must be allowed.
        let this_machine =
            peer == IpAddr::V4(Ipv4Addr::LOCALHOST) || peer == IpAddr::V6(Ipv6Addr::LOCALHOST);
        if !this_machine && !self.allow.iter().any(|net| net.contains(&peer)) {
            return Err(Refusal::Outside(peer));
        }
        if self.token.is_none() && !asking.host.is_some_and(names_this_machine) {
            return Err(Refusal::ForeignHost(
                asking.host.unwrap_or("no Host header").to_string(),
            ));
        }
        if let Some(token) = &self.token {
            match asking.token {
                None | Some("") => return Err(Refusal::NoToken),
                Some(given) if !same(given.as_bytes(), token.as_bytes()) => {
                    return Err(Refusal::WrongToken)
                }
                Some(_) => {}
            }
        }
        if let Some(origin) = asking.origin {
            let own = asking.host.map(|h| format!("http://{h}"));
            if own.as_deref() != Some(origin) {
                return Err(Refusal::ForeignOrigin(origin.to_string()));
            }
        }
        Ok(())
    }
}

/// `127.0.0.1:7780`, `[::1]:7780`, `localhost:7780`: a Host header that names this machine
/// by its loopback address or name (with or without the port).
fn names_this_machine(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Compare without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 random bits, as 32 hex digits (fit for a URL as it is).
fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beyond_loopback() -> Access {
        Access::for_bind(
            "0.0.0.0:7780".parse().unwrap(),
            vec!["192.168.1.0/24".parse().unwrap()],
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `asking` from this machine is refused, saying exactly `why`.
    fn refused(access: &Access, asking: Asking<'_>, why: &str) {
        let refusal = access.admit(ip("127.0.0.1"), asking).unwrap_err();
        assert_eq!(refusal.to_string(), why);
    }

    #[test]
    fn beyond_loopback_needs_allowed_networks_and_then_a_token() {
        let error = Access::for_bind("0.0.0.0:7780".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--web 0.0.0.0:7780: serving the page beyond loopback needs --web-allow CIDR… (the networks that may open it)"
        );
        let access = beyond_loopback();
        let token = access.token.clone().unwrap();
        assert_eq!(token.len(), 32);
        assert_ne!(
            beyond_loopback().token.unwrap(),
            token,
            "a fresh token each run"
        );
        let with = |t| Asking {
            token: Some(t),
            ..Asking::default()
        };
        assert_eq!(access.admit(ip("192.168.1.20"), with(&token)), Ok(()));
        assert_eq!(
            access.admit(ip("192.168.1.20"), Asking::default()),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            access.admit(ip("192.168.1.20"), with("0123")),
            Err(Refusal::WrongToken)
        );
        // The token is needed from this machine too: the address rule alone is no secret.
        assert_eq!(
            access.admit(ip("127.0.0.1"), Asking::default()),
            Err(Refusal::NoToken)
        );
        assert_eq!(access.admit(ip("::1"), with(&token)), Ok(()));
        assert_eq!(
            access.admit(ip("10.0.0.5"), with(&token)),
            Err(Refusal::Outside(ip("10.0.0.5")))
        );
        // Another loopback address is not this machine's own unless allowed.
        assert_eq!(
            access.admit(ip("127.0.0.3"), with(&token)),
            Err(Refusal::Outside(ip("127.0.0.3")))
        );
        assert_eq!(
            access.admit(ip("::ffff:192.168.1.7"), with(&token)),
            Ok(()),
            "an IPv4 peer on an IPv6 socket"
        );
    }

    #[test]
    fn loopback_needs_no_token_but_a_foreign_page_is_refused() {
        let access = Access::for_bind("127.0.0.1:0".parse().unwrap(), vec![]).unwrap();
        assert_eq!(access.token, None);
        let at = |host| Asking {
            host: Some(host),
            ..Asking::default()
        };
        for host in [
            "127.0.0.1:7780",
            "localhost:7780",
            "[::1]:7780",
            "127.0.0.1",
        ] {
            assert_eq!(access.admit(ip("127.0.0.1"), at(host)), Ok(()), "{host}");
        }
        // DNS rebinding: a site's own name pointed at 127.0.0.1.
        refused(
            &access,
            at("rebind.example:7780"),
            "forbidden: on loopback the page answers to 127.0.0.1, [::1] or localhost, not to rebind.example:7780; nothing was changed",
        );
        assert_eq!(
            access.admit(ip("127.0.0.1"), Asking::default()),
            Err(Refusal::ForeignHost("no Host header".into()))
        );
        let from = |origin| Asking {
            origin: Some(origin),
            host: Some("127.0.0.1:7780"),
            token: None,
        };
        assert_eq!(
            access.admit(ip("127.0.0.1"), from("http://127.0.0.1:7780")),
            Ok(())
        );
        refused(
            &access,
            from("https://evil.example"),
            "forbidden: a page from https://evil.example may not open this orchestra; nothing was changed",
        );
        assert_eq!(
            Refusal::Outside(ip("10.0.0.5")).to_string(),
            "forbidden: 10.0.0.5 is not in --web-allow; nothing was changed"
        );
    }
}
