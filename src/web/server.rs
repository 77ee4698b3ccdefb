//! The HTTP side of the page: every request passes [`Access::admit`] first; `/` is the page
//! (its style and script embedded in the binary, inlined into it), `/ws` a websocket that
//! sends the [`View`](super::view::View) whole on connect and on every change (`{"view": …}`),
//! the hosts' meters (`{"levels": […]}`, at most 20 times a second), and, while the page
//! listens (it sends `{"listen": "block"}`, `"system:playback"` for the DAC, or `null`), its
//! sound as binary messages: the first sample's time (f64 ms since the Unix epoch), the rate
//! (u32), then 16-bit mono samples, all little-endian. It takes the page's changes too (see
//! [`super::controls`]).

use super::access::{Access, Asking};
use super::controls::PageControls;
use crate::osc::server::ControlRequest;
use crate::taps::{HostLevels, SoundPiece, TapsHub};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

/// The page's only source of network traffic is its own websocket: no CDN, no fonts, no
/// images from elsewhere (and the browser is told to refuse any).
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/// What every request handler shares.
struct Shared {
    access: Access,
    /// The view as JSON, replaced on every change.
    views: watch::Receiver<Arc<String>>,
    taps: TapsHub,
    /// Where the pages' changes go: the live loop.
    control: Option<mpsc::UnboundedSender<ControlRequest>>,
}

/// How often a page gets the meters: the hosts' reports of the last while, together.
const LEVELS_EVERY: Duration = Duration::from_millis(50);

/// A request's headers must arrive within this long of the connection's start or of the end
/// of its previous request: a client that sends them a byte at a time, or never (a
/// half-open or idle connection), is dropped rather than held.
pub const HEADERS_WITHIN: Duration = Duration::from_secs(5);

/// At shutdown, requests under way get this long to finish; then their connections are
/// dropped. Whatever a client does, the page stops within it.
pub const SHUTDOWN_WITHIN: Duration = Duration::from_millis(300);

/// Connections served at once; one more is closed as it arrives (a page needs two at most:
/// its load and its websocket).
pub const MAX_CONNECTIONS: usize = 256;

/// Serve on `listener` until `shutdown` resolves (as mini-redis's `server::run` does), then
/// let requests under way finish for [`SHUTDOWN_WITHIN`] and drop every connection left.
/// Open websockets end when the sender of `views` goes.
pub async fn run(
    listener: TcpListener,
    access: Access,
    views: watch::Receiver<Arc<String>>,
    taps: TapsHub,
    control: Option<mpsc::UnboundedSender<ControlRequest>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        access,
        views,
        taps,
        control,
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/ws", get(socket))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared);
    let (closing, closed) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() < MAX_CONNECTIONS => {
                    connections.spawn(serve_connection(stream, peer, app.clone(), closed.clone()));
                }
                Ok((_, peer)) => tracing::info!("web: refused {peer}: {MAX_CONNECTIONS} connections open"),
                // Out of file descriptors, say: pause rather than spin.
                Err(e) => {
                    tracing::warn!("web: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let all_ended = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_WITHIN, all_ended)
        .await
        .is_err()
    {
        tracing::info!(
            "web: dropped {} connection(s) still open at shutdown",
            connections.len()
        );
    }
    // Dropping the set aborts what is left.
    Ok(())
}

/// One HTTP/1 connection: requests go to `app` with the peer's address at hand (as
/// [`ConnectInfo`]); a websocket leaves it as an upgrade. When `closing` turns true, it ends
/// once the request under way (if any) is answered.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut closing: watch::Receiver<bool>,
) {
    use tower::ServiceExt;
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADERS_WITHIN);
    let connection = builder
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = closing.wait_for(|closing| *closing) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// Refuse (403, with why) before any handler runs.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let token = request.uri().query().and_then(token_of);
    let headers = request.headers();
    let asking = Asking {
        token,
        origin: header_of(headers, header::ORIGIN),
        host: header_of(headers, header::HOST),
    };
    // Every connection has its peer (the service is made with it); were one without, it is
    // refused, not let in.
    let peer = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let admitted = shared.access.admit(peer, asking);
    match admitted {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::info!("web: refused {peer:?} {}: {refusal}", request.uri().path());
            (StatusCode::FORBIDDEN, format!("{refusal}\n")).into_response()
        }
    }
}

fn header_of(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `token` parameter of a query string (hex digits: nothing to decode).
fn token_of(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// The page, put together once.
static PAGE: LazyLock<String> = LazyLock::new(super::page);

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE.as_str(),
    )
        .into_response()
}

async fn socket(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    let views = shared.views.clone();
    let taps = shared.taps.clone();
    let controls = PageControls::new(shared.control.clone());
    // A page sends only its controls' changes and what it listens to: a bigger message is a
    // page gone wrong.
    upgrade
        .max_message_size(super::controls::MAX_MESSAGE)
        .on_upgrade(move |socket| push(socket, views, taps, controls))
}

/// What a page may send besides its controls' changes.
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum FromPage {
    /// Listen to a block's outputs, the DAC (`system:playback`), or nothing (`null`).
    Listen(Option<String>),
}

/// Send the view now and after every change, the meters, and the sound listened to, until the
/// page goes or the server stops; the page's changes go to `controls`, and their answers back
/// to it. While the page is open, its hosts' taps meter (see [`TapsHub::open_page`]).
async fn push(
    mut socket: WebSocket,
    mut views: watch::Receiver<Arc<String>>,
    taps: TapsHub,
    mut controls: PageControls,
) {
    let mut hold = taps.open_page();
    let mut levels = taps.levels();
    let mut sound = taps.sound();
    let mut latest: BTreeMap<String, Arc<HostLevels>> = BTreeMap::new();
    let mut flush = tokio::time::interval(LEVELS_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view_due = true;
    // A page that reads answers the pings (browsers do it by themselves); one that does not
    // is dropped, however large the kernel's buffers that hide it.
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    loop {
        if view_due {
            view_due = false;
            let json = views.borrow_and_update().clone();
            let message = format!("{{\"view\":{json}}}");
            if !deliver(&mut socket, Message::Text(message.into())).await {
                return;
            }
        }
        if heard.elapsed() > ANSWER_WITHIN {
            tracing::info!("web: dropped a page that answered nothing for {ANSWER_WITHIN:?}");
            return;
        }
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    deliver(&mut socket, Message::Close(None)).await;
                    return;
                }
                view_due = true;
            }
            report = levels.recv() => match report {
                Ok(report) => {
                    latest.insert(report.host.clone(), report);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = flush.tick(), if !latest.is_empty() => {
                let reports = std::mem::take(&mut latest);
                let reports: Vec<&HostLevels> = reports.values().map(Arc::as_ref).collect();
                let message = serde_json::json!({ "levels": reports }).to_string();
                if !deliver(&mut socket, Message::Text(message.into())).await {
                    return;
                }
            }
            _ = ping.tick() => {
                if !deliver(&mut socket, Message::Ping(Default::default())).await {
                    return;
                }
            }
            piece = sound.recv() => match piece {
                Ok(piece) if hold.listening() == Some(piece.target.as_str()) => {
                    if !deliver(&mut socket, Message::Binary(sound_message(&piece).into())).await {
                        return;
                    }
                }
                // Behind: the page's player fills the gap and catches up.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { return };
                heard = Instant::now();
                match message {
                    Message::Close(_) => return,
                    Message::Text(text) => match serde_json::from_str::<FromPage>(&text) {
                        Ok(FromPage::Listen(target)) => hold.listen(target),
                        // The page's controls (see super::controls).
                        Err(_) => controls.receive(text.as_str()),
                    },
                    // Pongs (axum answers pings itself), binary: heard, nothing more.
                    _ => {}
                }
            }
            answer = controls.answer() => {
                if !deliver(&mut socket, Message::Text(answer.into())).await {
                    return;
                }
            }
        }
    }
}

/// A page must take each message within this long, or it is dropped: a page that reads too
/// slowly never holds its sender (nor the show) back.
pub const SEND_WITHIN: Duration = Duration::from_secs(5);

/// How often a page is pinged, and how long it may stay silent (no pong, no message) before it
/// is taken for one that does not read.
pub const PING_EVERY: Duration = Duration::from_secs(5);
pub const ANSWER_WITHIN: Duration = Duration::from_secs(12);

/// Send `message` within [`SEND_WITHIN`]; false when the page is gone or reads too slowly.
async fn deliver(socket: &mut WebSocket, message: Message) -> bool {
    match tokio::time::timeout(SEND_WITHIN, socket.send(message)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::info!("web: dropped a page that took nothing for {SEND_WITHIN:?}");
            false
        }
    }
}

/// A piece of sound as the page gets it (see the module's doc).
fn sound_message(piece: &SoundPiece) -> Vec<u8> {
    let mut message = Vec::with_capacity(12 + piece.pcm.len());
    message.extend_from_slice(&(piece.at_ms as f64).to_le_bytes());
    message.extend_from_slice(&piece.rate.to_le_bytes());
    message.extend_from_slice(&piece.pcm);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_asks_to_listen_or_to_stop() {
        let read = |text: &str| serde_json::from_str::<FromPage>(text).ok();
        assert_eq!(
            read(r#"{"listen":"tone"}"#),
            Some(FromPage::Listen(Some("tone".into())))
        );
        assert_eq!(read(r#"{"listen":null}"#), Some(FromPage::Listen(None)));
        assert_eq!(read(r#"{"listen":5}"#), None);
        assert_eq!(read(r#"{"shout":"tone"}"#), None);
    }

    #[test]
    fn a_piece_of_sound_starts_with_its_time_and_rate() {
        let message = sound_message(&SoundPiece {
            target: "tone".into(),
            rate: 48000,
            at_ms: 1_700_000_000_123,
            pcm: vec![1, 2, 3, 4],
        });
        assert_eq!(
            f64::from_le_bytes(message[..8].try_into().unwrap()),
            1_700_000_000_123.0
        );
        assert_eq!(
            u32::from_le_bytes(message[8..12].try_into().unwrap()),
            48000
        );
        assert_eq!(&message[12..], &[1, 2, 3, 4]);
    }

    #[test]
    fn the_token_is_found_among_other_parameters() {
        assert_eq!(token_of("token=ab12"), Some("ab12"));
        assert_eq!(token_of("x=1&token=ab12&y=2"), Some("ab12"));
        assert_eq!(token_of("tokens=ab12"), None);
    }
}
