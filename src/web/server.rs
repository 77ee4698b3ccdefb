//! The HTTP side of the page: every request passes [`Access::admit`] first; `/` is the page
//! (its style and script embedded in the binary, inlined into it), `/ws` a websocket that
//! sends the [`View`](super::view::View) whole, as JSON, on connect and on every change, and
//! takes the page's changes (see [`super::controls`]).

use super::access::{Access, Asking};
use super::controls::PageControls;
use crate::osc::server::ControlRequest;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::LazyLock;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// The page's only source of network traffic is its own websocket: no CDN, no fonts, no
/// images from elsewhere (and the browser is told to refuse any).
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/// What every request handler shares.
struct Shared {
    access: Access,
    /// The view as JSON, replaced on every change.
    views: watch::Receiver<Arc<String>>,
    /// Where the pages' changes go: the live loop.
    control: Option<mpsc::UnboundedSender<ControlRequest>>,
}

/// Serve on `listener` until `shutdown` resolves (as mini-redis's `server::run` does). Open
/// websockets end when the sender of `views` goes.
pub async fn run(
    listener: TcpListener,
    access: Access,
    views: watch::Receiver<Arc<String>>,
    control: Option<mpsc::UnboundedSender<ControlRequest>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        access,
        views,
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
    let controls = PageControls::new(shared.control.clone());
    // A page sends only its controls' changes: a bigger message is a page gone wrong.
    upgrade
        .max_message_size(super::controls::MAX_MESSAGE)
        .on_upgrade(move |socket| push(socket, views, controls))
}

/// Send the view now and after every change, until the page goes or the server stops; the
/// page's changes go to `controls`, and their answers back to it.
async fn push(
    mut socket: WebSocket,
    mut views: watch::Receiver<Arc<String>>,
    mut controls: PageControls,
) {
    loop {
        let json = views.borrow_and_update().clone();
        if socket
            .send(Message::Text(json.as_str().into()))
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    break;
                }
                incoming = socket.recv() => match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    // The page's controls (see super::controls).
                    Some(Ok(Message::Text(text))) => controls.receive(text.as_str()),
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
}

#[cfg(test)]
mod tests {
    use super::token_of;

    #[test]
    fn the_token_is_found_among_other_parameters() {
        assert_eq!(token_of("token=ab12"), Some("ab12"));
        assert_eq!(token_of("x=1&token=ab12&y=2"), Some("ab12"));
        assert_eq!(token_of("tokens=ab12"), None);
    }
}
