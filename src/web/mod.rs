//! The browser page of a playing orchestra (`run --web`): [`access`] says who may open it,
//! [`view`] what it shows (folded from the [`Events`]: the scene and its happenings), and
//! [`server`] serves it over HTTP with a websocket that pushes every change, the meters, and
//! the sound of what the page listens to (from the [`TapsHub`]), and takes the page's
//! [`controls`]' changes.

pub mod access;
pub mod controls;
pub mod server;
pub mod view;

use crate::events::Events;
use crate::osc::server::ControlRequest;
use crate::taps::TapsHub;
use access::Access;
use anyhow::{Context, Result};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use view::ViewModel;

/// The default address of the page.
pub const DEFAULT_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 7780);

/// Where to serve the page and to whom.
#[derive(Debug, Clone)]
pub struct WebOptions {
    pub bind: SocketAddr,
    /// Networks besides this machine that may open it (needed to serve beyond loopback).
    pub allow: Vec<IpNet>,
}

/// The page's address, claimed, and its access rules; nothing is served until [`Web::serve`].
pub struct Web {
    listener: std::net::TcpListener,
    access: Access,
}

/// The page being served; [`Serving::stop`] ends it and its websockets.
pub struct Serving {
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Web {
    /// Check the access rules and claim the address (port 0: one the system chooses).
    pub fn bind(options: &WebOptions) -> Result<Web> {
        let access = Access::for_bind(options.bind, options.allow.clone())?;
        let listener = std::net::TcpListener::bind(options.bind)
            .with_context(|| format!("cannot serve the page on {}", options.bind))?;
        listener.set_nonblocking(true)?;
        Ok(Web { listener, access })
    }

    /// The address to open, with the token when one is needed.
    pub fn url(&self) -> Result<String> {
        let addr = self.listener.local_addr()?;
        Ok(match &self.access.token {
            Some(token) => format!("http://{addr}/?token={token}"),
            None => format!("http://{addr}/"),
        })
    }

    /// Serve the page, drawn from `events` (what plays now and what happens from now on), with
    /// the meters and sound of `taps`; the page's changes go to `control`, the live loop's
    /// (none: the page only shows).
    pub fn serve(
        self,
        events: &Events,
        taps: TapsHub,
        control: Option<mpsc::UnboundedSender<ControlRequest>>,
    ) -> Result<Serving> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        // A page that connects before the first scene gets an empty orchestra, never nothing.
        let empty = serde_json::to_string(&ViewModel::default().view())?;
        let (views_tx, views) = watch::channel(Arc::new(empty));
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = watch::channel(false);
        let model = tokio::spawn(follow(events.clone(), views_tx, done));
        let access = self.access;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                // Dropped (a run that ends in an error) stops it too.
                let _ = stopped.await;
            };
            if let Err(e) = server::run(listener, access, views, taps, control, shutdown).await {
                tracing::warn!("the web page stopped: {e}");
            }
            // The model goes with the server, and open websockets with the model's sender.
            let _ = done_tx.send(true);
            let _ = model.await;
        });
        Ok(Serving { stop, server })
    }
}

impl Serving {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// Fold the scene and every happening into the view, and publish it as JSON when it changed.
async fn follow(
    events: Events,
    views: watch::Sender<Arc<String>>,
    mut done: watch::Receiver<bool>,
) {
    let mut happenings = events.subscribe();
    let mut scene = events.scene();
    let mut model = ViewModel::default();
    model.set_scene(scene.borrow_and_update().clone());
    loop {
        let json = serde_json::to_string(&model.view()).unwrap_or_default();
        views.send_if_modified(|current| {
            if **current == json {
                return false;
            }
            *current = Arc::new(json);
            true
        });
        tokio::select! {
            _ = done.changed() => return,
            changed = scene.changed() => {
                if changed.is_err() {
                    return;
                }
                model.set_scene(scene.borrow_and_update().clone());
            }
            happening = happenings.recv() => match happening {
                Ok(happening) => {
                    model.tell(&happening);
                    // A reload's lines come together: drawn once, not once per line.
                    while let Ok(more) = happenings.try_recv() {
                        model.tell(&more);
                    }
                }
                // Some lines were missed (a burst of thousands): the scene is still true.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The page as served: its style and scripts (embedded in the binary) inlined, so that
/// opening it is one request and the token is needed only there and on the websocket.
pub fn page() -> String {
    include_str!("assets/page.html")
        .replace("/*STYLE*/", include_str!("assets/page.css"))
        .replace("/*CONTROLS*/", include_str!("assets/controls.js"))
        .replace("/*SCRIPT*/", include_str!("assets/page.js"))
}
