//! The loopback web page where a person answers asks.
//!
//! The page is a window onto the [`ApprovalBroker`]: it shows what waits (the exact
//! command, its binary, its digest, the time left), answers it, lists what was decided
//! and the session grants in force, and revokes those. The guest's agent controls most
//! of the text shown, and any local program can reach a loopback port, so:
//! - it binds loopback addresses only;
//! - the address it prints carries a random access token; the first `GET /` with it
//!   turns it into an `HttpOnly; SameSite=Strict` cookie and redirects to `/`, so the
//!   token leaves the address bar; nothing is served without that cookie;
//! - the `Host` header must name the loopback origin, so a DNS-rebound name cannot use
//!   the browser's cookie;
//! - answers are `POST`s of JSON that carry a second token the page holds
//!   (`X-Airlock-CSRF`), from the page's own origin;
//! - every response forbids inline script, framing, sniffing, referrers and caching,
//!   and the page builds its DOM from text (agent text is never parsed as HTML).
//!
//! Routes: `GET /`, `GET /app.js`, `GET /app.css`, `GET /favicon.ico` (empty),
//! `GET /api/state`, `GET /api/events` (Server-Sent Events), `POST /api/resolve`,
//! `POST /api/revoke`.

use crate::approval_broker::{
    Answer, ApprovalBroker, Decided, Event, Pending, ResolveError, Scope, SessionGrant,
};
use airlock_proto::envelope::{random_hex, KeyError};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};

const INDEX_HTML: &str = include_str!("approvals_http/index.html");
const APP_JS: &str = include_str!("approvals_http/app.js");
const APP_CSS: &str = include_str!("approvals_http/app.css");
/// Where `index.html` takes the CSRF token (hex, so safe to put in an attribute).
const CSRF_SLOT: &str = "{{CSRF_TOKEN}}";

/// The header answers carry the page's CSRF token in.
pub const CSRF_HEADER: &str = "x-airlock-csrf";
/// Decided asks `/api/state` lists, latest first.
pub const HISTORY_SHOWN: usize = 200;
/// Largest request body taken (answers are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;
/// Longest approver name and comment taken, in characters: they reach the agent's
/// message and the audit log.
const MAX_APPROVER: usize = 100;
const MAX_COMMENT: usize = 1000;
/// Connections served at once; a local program opening more is not served.
const MAX_CONNECTIONS: usize = 64;
/// A comment line on the event stream this often, so dead clients are noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

const SECURITY_HEADERS: [(&str, &str); 7] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    // Other local origins cannot embed the page's scripts or JSON as no-cors loads.
    ("cross-origin-resource-policy", "same-origin"),
];

/// Why the page could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalsHttpError {
    /// The address is not a loopback address.
    #[error(
        "refusing to serve the approvals page on {0}: only loopback addresses \
         (127.0.0.0/8, ::1) are allowed"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot bind the approvals page to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No access token could be generated.
    #[error("cannot generate the approvals page's tokens: {0}")]
    Token(#[from] KeyError),
}

/// A running approvals page.
pub struct ApprovalsHttp {
    /// The address to open, access token included: `http://127.0.0.1:PORT/?token=…`.
    pub url: String,
    /// Where it listens.
    pub local_addr: SocketAddr,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for ApprovalsHttp {
    // The URL holds the access token: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalsHttp")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ApprovalsHttp {
    /// Waits until the server has stopped (after `shutdown` resolved); every open
    /// connection, event streams included, is closed by then.
    pub async fn finished(self) {
        let _ = self.server.await;
    }
}

/// Binds `addr`, which must be a loopback address (127.0.0.0/8 or ::1; anything else is
/// refused with an error naming it), generates a random access token and a separate
/// CSRF token, and serves the page for `broker` until `shutdown` resolves. Spawned on
/// the current tokio runtime.
pub async fn start_approvals_http(
    addr: SocketAddr,
    broker: Arc<ApprovalBroker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ApprovalsHttp, ApprovalsHttpError> {
    if !addr.ip().is_loopback() {
        return Err(ApprovalsHttpError::NotLoopback(addr));
    }
    let token = random_hex(32)?;
    let csrf = random_hex(32)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ApprovalsHttpError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ApprovalsHttpError::Bind { addr, source })?;
    let port = local_addr.port();
    // `SocketAddr`'s Display brackets IPv6 addresses, as a Host header does.
    let own_host = local_addr.to_string();
    let mut allowed_hosts: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .map(|h| format!("{h}:{port}"))
        .collect();
    if !allowed_hosts.contains(&own_host) {
        allowed_hosts.push(own_host.clone());
    }
    let url = format!("http://{own_host}/?token={token}");
    let ctx = Arc::new(Ctx {
        broker,
        index_html: Bytes::from(INDEX_HTML.replace(CSRF_SLOT, &csrf)),
        // Cookies are not kept apart by port: two pages on one host must not share one.
        cookie_name: format!("airlock_approvals_{port}"),
        token,
        csrf,
        allowed_hosts,
        own_host,
    });
    let server = tokio::spawn(serve(listener, ctx, shutdown));
    Ok(ApprovalsHttp {
        url,
        local_addr,
        server,
    })
}

struct Ctx {
    broker: Arc<ApprovalBroker>,
    token: String,
    csrf: String,
    cookie_name: String,
    allowed_hosts: Vec<String>,
    /// `ip:port` as bound, the name the printed URL uses.
    own_host: String,
    index_html: Bytes,
}

async fn serve(listener: TcpListener, ctx: Arc<Ctx>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    // Dropping the set when the loop ends aborts every connection, event streams too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if conns.len() < MAX_CONNECTIONS => {
                    conns.spawn(serve_connection(stream, Arc::clone(&ctx)));
                }
                Ok(_) => {}
                // Out of descriptors and the like: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    }
}

async fn serve_connection(stream: TcpStream, ctx: Arc<Ctx>) {
    let service = hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
    });
    // A client that goes away mid-request is not the page's error.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn respond(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let mut resp = route(ctx, req).await;
    let headers = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    resp
}

async fn route(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let Some(host) = allowed_host(ctx, &req) else {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this is the Airlock approvals page; open it as http://{}/",
                ctx.own_host
            ),
        );
    };
    let path = req.uri().path().to_string();
    if req.method() == Method::GET && path == "/" {
        if let Some(given) = req.uri().query().and_then(|q| query_param(q, "token")) {
            return if ct_eq(given.as_bytes(), ctx.token.as_bytes()) {
                let_in(ctx)
            } else {
                unauthorized()
            };
        }
    }
    if !has_session_cookie(ctx, req.headers()) {
        return unauthorized();
    }
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/", Method::GET) => content(
            "text/html; charset=utf-8",
            Body::full(ctx.index_html.clone()),
        ),
        ("/app.js", Method::GET) => content(
            "text/javascript; charset=utf-8",
            Body::full(Bytes::from_static(APP_JS.as_bytes())),
        ),
        ("/app.css", Method::GET) => content(
            "text/css; charset=utf-8",
            Body::full(Bytes::from_static(APP_CSS.as_bytes())),
        ),
        ("/api/state", Method::GET) => json(StatusCode::OK, &state(&ctx.broker)),
        ("/api/events", Method::GET) => {
            content("text/event-stream", Body::events(ctx.broker.subscribe()))
        }
        ("/api/resolve", Method::POST) => {
            match post_body::<ResolveRequest>(ctx, &host, req).await {
                Ok(r) => resolve(ctx, r),
                Err(resp) => resp,
            }
        }
        ("/api/revoke", Method::POST) => match post_body::<RevokeRequest>(ctx, &host, req).await {
            Ok(r) => revoke(ctx, r),
            Err(resp) => resp,
        },
        // Browsers ask for it on their own; an empty answer keeps their consoles clean.
        ("/favicon.ico", Method::GET) => {
            let mut resp = Response::new(Body::Full(None));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        ("/" | "/app.js" | "/app.css" | "/api/state" | "/api/events" | "/favicon.ico", _) => {
            not_allowed("GET")
        }
        ("/api/resolve" | "/api/revoke", _) => not_allowed("POST"),
        _ => text(StatusCode::NOT_FOUND, "no such page"),
    }
}

/// The request's `Host` when it names this server on loopback (the request line's
/// authority, when it has one, must too).
fn allowed_host(ctx: &Ctx, req: &Request<Incoming>) -> Option<String> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let ok = |h: &str| ctx.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h));
    if !ok(host) || req.uri().authority().is_some_and(|a| !ok(a.as_str())) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

fn has_session_cookie(ctx: &Ctx, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, value)| {
            name == ctx.cookie_name && ct_eq(value.as_bytes(), ctx.token.as_bytes())
        })
}

/// Equality whose time does not depend on where the inputs differ (only on their
/// lengths, which are public), so a token cannot be guessed byte by byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The right token: the cookie, and back to `/` without the token in the address.
fn let_in(ctx: &Ctx) -> Response<Body> {
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/",
        ctx.cookie_name, ctx.token
    );
    let Ok(cookie) = HeaderValue::from_str(&cookie) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot set the cookie");
    };
    let mut resp = text(StatusCode::SEE_OTHER, "signed in; continue at /");
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    resp
}

fn unauthorized() -> Response<Body> {
    text(
        StatusCode::UNAUTHORIZED,
        "not signed in: open the address `airlock` printed (it carries the access token)",
    )
}

/// Checks what every state-changing request must carry and reads its JSON body.
async fn post_body<T: for<'de> Deserialize<'de>>(
    ctx: &Ctx,
    host: &str,
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let headers = req.headers();
    let csrf_ok = headers
        .get(CSRF_HEADER)
        .is_some_and(|v| ct_eq(v.as_bytes(), ctx.csrf.as_bytes()));
    if !csrf_ok {
        return Err(text(
            StatusCode::FORBIDDEN,
            "missing or wrong X-Airlock-CSRF header",
        ));
    }
    let own_origin = format!("http://{host}");
    if headers
        .get(header::ORIGIN)
        .is_some_and(|o| !o.as_bytes().eq_ignore_ascii_case(own_origin.as_bytes()))
    {
        return Err(text(
            StatusCode::FORBIDDEN,
            format!("requests from another origin are refused (expected {own_origin})"),
        ));
    }
    // Browsers say where a request comes from; another local port is "same-site".
    if headers
        .get("sec-fetch-site")
        .is_some_and(|s| s.as_bytes() != b"same-origin")
    {
        return Err(text(
            StatusCode::FORBIDDEN,
            "only the page itself may send answers (Sec-Fetch-Site)",
        ));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
            ))
        }
    };
    serde_json::from_slice(&body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireAnswer {
    Once,
    Session,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    id: String,
    answer: WireAnswer,
    #[serde(default)]
    approver: String,
    #[serde(default)]
    comment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    session_id: String,
    digest: String,
}

/// `None` when `s` may go into an agent's message and the audit log as it is.
fn unfit(what: &str, s: &str, max: usize) -> Option<String> {
    if s.chars().count() > max {
        return Some(format!("the {what} is longer than {max} characters"));
    }
    s.chars()
        .any(char::is_control)
        .then(|| format!("the {what} contains control characters"))
}

fn resolve(ctx: &Ctx, r: ResolveRequest) -> Response<Body> {
    let approver = r.approver.trim();
    if let Some(why) = unfit("approver name", approver, MAX_APPROVER)
        .or_else(|| unfit("comment", &r.comment, MAX_COMMENT))
    {
        return text(StatusCode::BAD_REQUEST, why);
    }
    let answer = match r.answer {
        WireAnswer::Once => Answer::Approve(Scope::Once),
        WireAnswer::Session => Answer::Approve(Scope::Session),
        WireAnswer::Deny => Answer::Deny,
    };
    match ctx.broker.resolve(&r.id, answer, approver, &r.comment) {
        Ok(resolution) => json(StatusCode::OK, &resolution),
        Err(e @ ResolveError::AlreadyDecided(_)) => text(StatusCode::CONFLICT, e.to_string()),
        Err(e @ ResolveError::Unknown(_)) => text(StatusCode::NOT_FOUND, e.to_string()),
    }
}

fn revoke(ctx: &Ctx, r: RevokeRequest) -> Response<Body> {
    if ctx.broker.revoke(&r.session_id, &r.digest) {
        json(StatusCode::OK, &serde_json::json!({ "revoked": true }))
    } else {
        text(
            StatusCode::NOT_FOUND,
            format!(
                "no session grant {} in session {} (revoked already, or the session ended)",
                r.digest, r.session_id
            ),
        )
    }
}

/// What `/api/state` returns.
#[derive(Serialize)]
struct StateView {
    /// The server's clock (Unix milliseconds), for the page's countdowns.
    now_ms: u64,
    pending: Vec<Pending>,
    /// Latest first, at most [`HISTORY_SHOWN`].
    history: Vec<Decided>,
    grants: BTreeMap<String, Vec<SessionGrant>>,
}

fn state(broker: &ApprovalBroker) -> StateView {
    let pending = broker.pending();
    let all = broker.history(None);
    // The broker lists grants per session; a grant comes from a decided ask, so the
    // sessions in the history (and those waiting) are all there can be.
    let sessions: BTreeSet<&str> = all
        .iter()
        .map(|d| d.pending.action.session_id.as_str())
        .chain(pending.iter().map(|p| p.action.session_id.as_str()))
        .collect();
    let grants = sessions
        .into_iter()
        .map(|s| (s.to_string(), broker.session_grants(s)))
        .filter(|(_, g)| !g.is_empty())
        .collect();
    let history = all.iter().rev().take(HISTORY_SHOWN).cloned().collect();
    StateView {
        now_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        pending,
        history,
        grants,
    }
}

fn content(content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut resp = content(
        "text/plain; charset=utf-8",
        Body::full(Bytes::from(msg.into())),
    );
    *resp.status_mut() = status;
    resp
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(v) => {
            let mut resp = content("application/json", Body::full(Bytes::from(v)));
            *resp.status_mut() = status;
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow}"));
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

type NextEvent = Pin<Box<dyn Future<Output = Option<(Bytes, EventFeed)>> + Send>>;

/// A response body: all at once, or the broker's events as they come.
enum Body {
    Full(Option<Bytes>),
    /// `None` once the broker is gone.
    Events(Option<NextEvent>),
}

impl Body {
    fn full(b: Bytes) -> Body {
        Body::Full(Some(b))
    }

    fn events(rx: broadcast::Receiver<Event>) -> Body {
        // `retry` paces the browser's reconnects.
        let hello = Bytes::from_static(b"retry: 2000\n: airlock approvals\n\n");
        Body::Events(Some(Box::pin(
            async move { Some((hello, EventFeed { rx })) },
        )))
    }
}

struct EventFeed {
    rx: broadcast::Receiver<Event>,
}

impl EventFeed {
    async fn next(mut self) -> Option<(Bytes, EventFeed)> {
        let chunk = tokio::select! {
            ev = self.rx.recv() => match ev {
                Ok(ev) => sse_event(&ev),
                // Missed events: the page re-reads the whole state.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Bytes::from_static(b"event: resync\ndata: {}\n\n")
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            () = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
        };
        Some((chunk, self))
    }
}

fn sse_event(ev: &Event) -> Bytes {
    let name = match ev {
        Event::Pending(_) => "pending",
        Event::Resolved(_) => "resolved",
    };
    // Compact JSON escapes every control character: it is one `data:` line.
    match serde_json::to_string(ev) {
        Ok(data) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        Err(_) => Bytes::from_static(b"event: resync\ndata: {}\n\n"),
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Events(slot) => {
                let Some(next) = slot.as_mut() else {
                    return Poll::Ready(None);
                };
                match next.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        *slot = None;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some((chunk, feed))) => {
                        *slot = Some(Box::pin(feed.next()));
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None) | Body::Events(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(b) => {
                hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::Events(_) => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval_broker::{Action, ActionKind, Resolution};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    struct Page {
        http: ApprovalsHttp,
        broker: Arc<ApprovalBroker>,
        token: String,
        stop: Option<oneshot::Sender<()>>,
    }

    impl Page {
        async fn start() -> Page {
            let broker = ApprovalBroker::new(Duration::from_secs(30));
            let (stop, stopped) = oneshot::channel();
            let http = start_approvals_http(
                "127.0.0.1:0".parse().unwrap(),
                Arc::clone(&broker),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
            let token = http.url.split_once("?token=").unwrap().1.to_string();
            Page {
                http,
                broker,
                token,
                stop: Some(stop),
            }
        }

        fn host(&self) -> String {
            format!("127.0.0.1:{}", self.http.local_addr.port())
        }

        fn cookie(&self) -> String {
            format!(
                "airlock_approvals_{}={}",
                self.http.local_addr.port(),
                self.token
            )
        }

        /// The CSRF token, read from the page as the browser would.
        async fn csrf(&self) -> String {
            let page = self.get("/", &[("Cookie", &self.cookie())]).await;
            assert_eq!(page.status, 200, "{}", page.body);
            let (_, rest) = page
                .body
                .split_once(r#"<meta name="airlock-csrf" content=""#)
                .unwrap();
            rest.split('"').next().unwrap().to_string()
        }

        async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
            let mut h = vec![("Host", self.host())];
            h.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
            raw(self.http.local_addr, "GET", path, &h, "").await
        }

        /// A POST as the page sends it, with `drop_header` left out and `extra` added.
        async fn post(
            &self,
            path: &str,
            body: &serde_json::Value,
            drop_header: Option<&str>,
            extra: &[(&str, &str)],
        ) -> Reply {
            let mut h = vec![
                ("Host", self.host()),
                ("Cookie", self.cookie()),
                ("X-Airlock-CSRF", self.csrf().await),
                ("Origin", format!("http://{}", self.host())),
                ("Content-Type", "application/json".to_string()),
            ];
            h.retain(|(k, _)| Some(*k) != drop_header);
            for (k, v) in extra {
                h.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
                h.push((k, v.to_string()));
            }
            raw(self.http.local_addr, "POST", path, &h, &body.to_string()).await
        }

        /// Asks `argv` in a task and waits until the page could see it.
        async fn ask(&self, argv: &[&str]) -> (String, JoinHandle<Resolution>) {
            let before = self.broker.pending().len();
            let broker = Arc::clone(&self.broker);
            let action = action("s1", argv);
            let task = tokio::spawn(async move { broker.ask(action, None).await });
            loop {
                let p = self.broker.pending();
                if p.len() > before {
                    return (p.last().unwrap().id.clone(), task);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn action(session: &str, argv: &[&str]) -> Action {
        Action {
            session_id: session.into(),
            rule_id: "git-push".into(),
            reason: "pushing needs a human".into(),
            kind: ActionKind::Tool {
                program: "git".into(),
                argv: argv.iter().map(|a| a.to_string()).collect(),
                cwd: "/workspace".into(),
                binary_sha256: "ab".repeat(32),
                reaches: vec![],
            },
        }
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// One request on its own connection, as bytes on the wire.
    async fn raw(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Reply {
        let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server answers and closes")
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        Reply {
            status: status.parse().unwrap(),
            headers: lines
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        }
    }

    fn assert_hardened(r: &Reply) {
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(r.header(name), Some(value), "{name} on {r:?}");
        }
    }

    #[tokio::test]
    async fn a_non_loopback_address_is_refused() {
        let broker = ApprovalBroker::new(Duration::from_secs(1));
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
            let err = start_approvals_http(addr.parse().unwrap(), Arc::clone(&broker), async {})
                .await
                .unwrap_err();
            assert!(matches!(err, ApprovalsHttpError::NotLoopback(_)), "{err}");
            let ip = addr.rsplit_once(':').unwrap().0;
            assert!(err.to_string().contains(ip), "{err}");
        }
    }

    #[tokio::test]
    async fn without_the_cookie_or_with_a_wrong_token_nothing_is_served() {
        let page = Page::start().await;
        for path in ["/", "/app.js", "/app.css", "/api/state", "/api/events"] {
            let r = page.get(path, &[]).await;
            assert_eq!(r.status, 401, "{path}: {r:?}");
            assert!(r.body.contains("access token"), "{r:?}");
            assert_hardened(&r);
        }
        let wrong = "0".repeat(page.token.len());
        let r = page.get(&format!("/?token={wrong}"), &[]).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.header("set-cookie").is_none(), "{r:?}");
        // A wrong cookie; the right value under another port's name.
        let port = page.http.local_addr.port();
        for cookie in [
            format!("airlock_approvals_{port}={wrong}"),
            format!("airlock_approvals_1={}", page.token),
        ] {
            let r = page.get("/api/state", &[("Cookie", &cookie)]).await;
            assert_eq!(r.status, 401, "{cookie}: {r:?}");
        }
        // The token works only on `/`, and only as a query there.
        let r = page
            .get(&format!("/api/state?token={}", page.token), &[])
            .await;
        assert_eq!(r.status, 401, "{r:?}");
    }

    #[tokio::test]
    async fn the_token_becomes_a_strict_cookie_and_leaves_the_address() {
        let page = Page::start().await;
        assert!(page.http.url.starts_with("http://127.0.0.1:"));
        assert!(!format!("{:?}", page.http).contains(&page.token));
        let r = page.get(&format!("/?token={}", page.token), &[]).await;
        assert_eq!(r.status, 303, "{r:?}");
        assert_eq!(r.header("location"), Some("/"));
        assert_hardened(&r);
        let cookie = r.header("set-cookie").unwrap();
        assert!(
            cookie.starts_with(&format!("{}; ", page.cookie())),
            "{cookie}"
        );
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.split("; ").any(|a| a == attr), "{attr} in {cookie}");
        }
        let r = page.get("/", &[("Cookie", &page.cookie())]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.body.contains(r#"<meta name="airlock-csrf" content=""#));
        assert!(!r.body.contains(CSRF_SLOT) && !r.body.contains(&page.token));
        assert_hardened(&r);
        for (path, ty) in [
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/app.css", "text/css; charset=utf-8"),
            ("/api/state", "application/json"),
        ] {
            let r = page.get(path, &[("Cookie", &page.cookie())]).await;
            assert_eq!(
                (r.status, r.header("content-type")),
                (200, Some(ty)),
                "{r:?}"
            );
            assert_hardened(&r);
        }
        let r = page
            .get("/favicon.ico", &[("Cookie", &page.cookie())])
            .await;
        assert_eq!((r.status, r.body.as_str()), (204, ""), "{r:?}");
        let r = page.get("/nothing", &[("Cookie", &page.cookie())]).await;
        assert_eq!(r.status, 404, "{r:?}");
    }

    #[tokio::test]
    async fn a_foreign_host_header_is_refused() {
        let page = Page::start().await;
        let port = page.http.local_addr.port();
        let cookie = page.cookie();
        for host in [
            format!("evil.example:{port}"),
            format!("127.0.0.1:{}", port.wrapping_add(1)),
            "127.0.0.1".to_string(),
            format!("localhost.evil.example:{port}"),
        ] {
            let r = raw(
                page.http.local_addr,
                "GET",
                "/api/state",
                &[("Host", host.clone()), ("Cookie", cookie.clone())],
                "",
            )
            .await;
            assert_eq!(r.status, 421, "{host}: {r:?}");
            assert_hardened(&r);
        }
        // An absolute request line naming another host.
        let r = raw(
            page.http.local_addr,
            "GET",
            "http://evil.example/api/state",
            &[("Host", page.host()), ("Cookie", cookie.clone())],
            "",
        )
        .await;
        assert_eq!(r.status, 421, "{r:?}");
        for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
            let r = raw(
                page.http.local_addr,
                "GET",
                "/api/state",
                &[("Host", host.clone()), ("Cookie", cookie.clone())],
                "",
            )
            .await;
            assert_eq!(r.status, 200, "{host}: {r:?}");
        }
    }

    #[tokio::test]
    async fn an_answer_needs_the_csrf_token_the_own_origin_and_json() {
        let page = Page::start().await;
        let (id, _ask) = page.ask(&["git", "push"]).await;
        let body = serde_json::json!({"id": id, "answer": "once", "approver": "web"});
        let r = page
            .post("/api/resolve", &body, Some("X-Airlock-CSRF"), &[])
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.body.contains("X-Airlock-CSRF"), "{r:?}");
        assert_hardened(&r);
        let r = page
            .post("/api/resolve", &body, None, &[("X-Airlock-CSRF", "00")])
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        for origin in [
            "http://evil.example".to_string(),
            "null".to_string(),
            format!("http://127.0.0.1:{}", page.http.local_addr.port() + 1),
        ] {
            let r = page
                .post("/api/resolve", &body, None, &[("Origin", &origin)])
                .await;
            assert_eq!(r.status, 403, "{origin}: {r:?}");
            assert!(r.body.contains("another origin"), "{r:?}");
        }
        let r = page
            .post(
                "/api/resolve",
                &body,
                None,
                &[("Sec-Fetch-Site", "same-site")],
            )
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        let r = page
            .post(
                "/api/resolve",
                &body,
                None,
                &[("Content-Type", "text/plain")],
            )
            .await;
        assert_eq!(r.status, 415, "{r:?}");
        let r = page.post("/api/resolve", &body, Some("Cookie"), &[]).await;
        assert_eq!(r.status, 401, "{r:?}");
        let r = page
            .get("/api/resolve", &[("Cookie", &page.cookie())])
            .await;
        assert_eq!(r.status, 405, "{r:?}");
        // A control character in a name that reaches the agent and the audit log.
        let r = page
            .post(
                "/api/resolve",
                &serde_json::json!({"id": id, "answer": "once", "approver": "we\u{1b}b"}),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, 400, "{r:?}");
        // Refused requests decided nothing.
        assert_eq!(page.broker.pending().len(), 1);
        // Without an Origin header (not every client sends one) it goes through.
        let r = page
            .post(
                "/api/resolve",
                &body,
                Some("Origin"),
                &[("Content-Type", "application/json; charset=utf-8")],
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    #[tokio::test]
    async fn a_web_answer_decides_the_ask_and_a_second_one_is_refused() {
        let page = Page::start().await;
        let (id, ask) = page.ask(&["git", "push", "origin", "main"]).await;
        let state: serde_json::Value = serde_json::from_str(
            &page
                .get("/api/state", &[("Cookie", &page.cookie())])
                .await
                .body,
        )
        .unwrap();
        assert_eq!(state["pending"][0]["id"], id.as_str());
        assert_eq!(state["pending"][0]["action"]["argv"][3], "main");

        let body =
            serde_json::json!({"id": id, "answer": "once", "approver": "web", "comment": "ok"});
        let r = page.post("/api/resolve", &body, None, &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let answered: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(answered["approved"], true);
        assert_eq!(answered["scope"], "once");
        let resolution = ask.await.unwrap();
        assert!(resolution.approved, "{resolution:?}");
        assert_eq!(resolution.approver, "web");
        assert_eq!(resolution.message, "approved by web");

        let deny = serde_json::json!({"id": id, "answer": "deny", "approver": "mallory"});
        let r = page.post("/api/resolve", &deny, None, &[]).await;
        assert_eq!(r.status, 409, "{r:?}");
        assert!(r.body.contains("already decided"), "{r:?}");
        let unknown = serde_json::json!({"id": "ap-999999", "answer": "deny"});
        let r = page.post("/api/resolve", &unknown, None, &[]).await;
        assert_eq!(r.status, 404, "{r:?}");
        let bad = serde_json::json!({"id": id, "answer": "always"});
        let r = page.post("/api/resolve", &bad, None, &[]).await;
        assert_eq!(r.status, 400, "{r:?}");

        let state: serde_json::Value = serde_json::from_str(
            &page
                .get("/api/state", &[("Cookie", &page.cookie())])
                .await
                .body,
        )
        .unwrap();
        assert_eq!(state["pending"].as_array().unwrap().len(), 0);
        assert_eq!(state["history"][0]["resolution"]["approver"], "web");
    }

    #[tokio::test]
    async fn a_session_grant_is_listed_and_revoked() {
        let page = Page::start().await;
        let (first, _a) = page.ask(&["git", "fetch"]).await;
        let (second, _b) = page.ask(&["git", "push"]).await;
        for (id, answer) in [(&first, "deny"), (&second, "session")] {
            let body = serde_json::json!({"id": id, "answer": answer, "approver": "web"});
            let r = page.post("/api/resolve", &body, None, &[]).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        let state: serde_json::Value = serde_json::from_str(
            &page
                .get("/api/state", &[("Cookie", &page.cookie())])
                .await
                .body,
        )
        .unwrap();
        // Latest first.
        assert_eq!(state["history"][0]["pending"]["id"], second.as_str());
        assert_eq!(state["history"][1]["pending"]["id"], first.as_str());
        let grant = &state["grants"]["s1"][0];
        assert_eq!(grant["approver"], "web");
        let digest = grant["digest"].as_str().unwrap().to_string();
        let body = serde_json::json!({"session_id": "s1", "digest": digest});
        let r = page
            .post("/api/revoke", &body, Some("X-Airlock-CSRF"), &[])
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        let r = page.post("/api/revoke", &body, None, &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(page.broker.session_grants("s1").is_empty());
        let r = page.post("/api/revoke", &body, None, &[]).await;
        assert_eq!(r.status, 404, "{r:?}");
    }

    #[tokio::test]
    async fn agent_text_reaches_the_browser_only_inside_json() {
        let page = Page::start().await;
        let hostile = "<script>alert(1)</script>";
        let (_id, _ask) = page.ask(&["git", "push", hostile]).await;
        let cookie = page.cookie();
        for path in ["/", "/app.js", "/app.css"] {
            let r = page.get(path, &[("Cookie", &cookie)]).await;
            assert_eq!(r.status, 200);
            assert!(!r.body.contains("alert(1)"), "{path} holds agent text");
        }
        let r = page.get("/api/state", &[("Cookie", &cookie)]).await;
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let state: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(state["pending"][0]["action"]["argv"][2], hostile);
    }

    /// Reads `s` into `seen` until it holds `needle`.
    async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str) {
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {seen:?}"))
                .unwrap();
            assert!(n > 0, "stream closed: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    #[tokio::test]
    async fn the_event_stream_reports_asks_and_answers_live() {
        let page = Page::start().await;
        let mut s = TcpStream::connect(page.http.local_addr).await.unwrap();
        let req = format!(
            "GET /api/events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
            page.host(),
            page.cookie()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut seen = String::new();
        read_until(&mut s, &mut seen, "airlock approvals").await;
        let (id, ask) = page.ask(&["git", "push"]).await;
        read_until(
            &mut s,
            &mut seen,
            &format!(r#""event":"pending","id":"{id}""#),
        )
        .await;
        page.broker.resolve(&id, Answer::Deny, "alice", "").unwrap();
        read_until(
            &mut s,
            &mut seen,
            &format!(r#""event":"resolved","id":"{id}""#),
        )
        .await;
        assert!(!ask.await.unwrap().approved);
        assert!(seen.contains("text/event-stream"), "{seen}");
        assert!(seen.contains("event: resolved\ndata: "), "{seen}");

        // Shutting down closes the stream and the listener.
        let Page { http, stop, .. } = page;
        let addr = http.local_addr;
        stop.unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), http.finished())
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "the event stream ends with the server");
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
