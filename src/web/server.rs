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
use std::time::Duration;
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

/// Serve on `listener` until `shutdown` resolves (as mini-redis's `server::run` does). Open
/// websockets end when the sender of `views` goes.
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
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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
    loop {
        if view_due {
            view_due = false;
            let json = views.borrow_and_update().clone();
            let message = format!("{{\"view\":{json}}}");
            if socket.send(Message::Text(message.into())).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    let _ = socket.send(Message::Close(None)).await;
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
                if socket.send(Message::Text(message.into())).await.is_err() {
                    return;
                }
            }
            piece = sound.recv() => match piece {
                Ok(piece) if hold.listening() == Some(piece.target.as_str()) => {
                    if socket.send(Message::Binary(sound_message(&piece).into())).await.is_err() {
                        return;
                    }
                }
                // Behind: the page's player fills the gap and catches up.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<FromPage>(&text) {
                    Ok(FromPage::Listen(target)) => hold.listen(target),
                    // The page's controls (see super::controls).
                    Err(_) => controls.receive(text.as_str()),
                },
                Some(Ok(_)) => {}
            },
            answer = controls.answer() => {
                if socket.send(Message::Text(answer.into())).await.is_err() {
                    return;
                }
            }
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
