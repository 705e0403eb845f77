//! A small Chrome DevTools Protocol driver for tests: one headless Chromium, one page.
//!
//! Use it from a test file with `#[path = "cdp.rs"] mod cdp;`. It launches Chromium on a
//! throwaway profile, talks to the page target over the DevTools WebSocket and offers
//! what a test of a web page needs: navigate, evaluate, wait for a condition, click like
//! a mouse does, type, read console errors and take a screenshot. Chromium (and every
//! process it started) is killed when the [`Browser`] is dropped.
#![allow(dead_code)] // Each test file uses a different part of it.

use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

/// How long one protocol call, a launch or a page load may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept for [`Browser::console_errors`] and waits; older ones are dropped.
const MAX_EVENTS: usize = 10_000;

/// What went wrong, with what was being done.
#[derive(Debug)]
pub struct CdpError(pub String);

impl std::fmt::Display for CdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CdpError {}

/// Results of this module.
pub type Result<T> = std::result::Result<T, CdpError>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(CdpError(msg.into()))
}

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CdpError(format!("{}: {e}", what())))
    }
}

/// The Chromium to use: `$CHROMIUM` if set, else `chromium` or `chromium-browser` on
/// `PATH`.
pub fn chromium_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(|n| airlock_launcher::path_lookup::find_program(n, &[]))
}

/// A headless Chromium with one page under control.
pub struct Browser {
    // Dropped first (fields drop in order), before the profile directory goes.
    child: Group,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    events: VecDeque<Value>,
    /// Chromium's stderr, for error messages.
    log: PathBuf,
    profile: tempfile::TempDir,
}

/// A child that leads its own process group; dropping it kills the group.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // Chromium runs a zygote, renderers and a GPU process: end the whole group it
        // leads (made for it at spawn), not only the process started.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours; -pid
            // names the process group that `launch` created for this child alone.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts `chromium` headless on a fresh profile and attaches to its page.
    ///
    /// Everything but loopback goes to a proxy that is not there, so a test page (or
    /// Chromium itself) cannot reach anything off this machine.
    pub fn launch(chromium: &Path) -> Result<Browser> {
        let profile = tempfile::Builder::new()
            .prefix("airlock-chromium-")
            .tempdir()
            .context(|| "cannot make a profile directory for Chromium".into())?;
        let data = profile.path().join("profile");
        let log = profile.path().join("chromium.log");
        let stderr =
            std::fs::File::create(&log).context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(chromium)
            .args([
                "--headless=new",
                // Root cannot use Chromium's sandbox; the page is our own, on loopback.
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1280,1000",
                "--proxy-server=127.0.0.1:9",
            ])
            .arg(format!("--user-data-dir={}", data.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .context(|| format!("cannot start {}", chromium.display()))?;
        let mut child = Group(child);
        let port = wait_for_port(&mut child.0, &data, &log)?;
        let ws = page_socket(port)?;
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            events: VecDeque::new(),
            log,
            profile,
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(domain, json!({}))?;
        }
        Ok(b)
    }

    /// Sends `method` with `params` and returns its result; events read meanwhile are
    /// kept.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::text(msg))
            .context(|| format!("cannot send {method} to Chromium"))?;
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let Some(v) = self.read_message(deadline, method)? else {
                return fail(format!(
                    "{method}: no answer from Chromium within {DEFAULT_TIMEOUT:?}"
                ));
            };
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(err) = v.get("error") {
                    return fail(format!("{method} failed: {err}"));
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
            if v.get("method").is_some() {
                self.events.push_back(v);
                if self.events.len() > MAX_EVENTS {
                    self.events.pop_front();
                }
            }
        }
    }

    /// The next protocol message, or `None` when `deadline` passed first.
    fn read_message(&mut self, deadline: Instant, doing: &str) -> Result<Option<Value>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.ws
                .get_mut()
                .set_read_timeout(Some(left.min(Duration::from_millis(250))))
                .context(|| "cannot set a read timeout on the DevTools socket".into())?;
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str())
                        .map(Some)
                        .context(|| format!("{doing}: Chromium sent bad JSON"));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    return fail(format!(
                        "{doing}: the DevTools connection broke: {e}{}",
                        self.log_tail()
                    ))
                }
            }
        }
    }

    /// Opens `url` and waits until its page has loaded (redirects followed).
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        self.events.retain(|e| e["method"] != "Page.loadEventFired");
        let r = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(err) = r.get("errorText").and_then(Value::as_str) {
            return fail(format!("cannot open {url}: {err}"));
        }
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| e["method"] == "Page.loadEventFired")
            {
                self.events.remove(i);
                break;
            }
            match self.read_message(deadline, "waiting for the page to load")? {
                Some(v) => self.events.push_back(v),
                None => return fail(format!("{url} did not load within {DEFAULT_TIMEOUT:?}")),
            }
        }
        self.wait_for("document.readyState === 'complete'", DEFAULT_TIMEOUT)
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value as JSON
    /// (`null` for `undefined`); an exception is an error.
    pub fn evaluate(&mut self, js: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex
                .pointer("/exception/description")
                .or_else(|| ex.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("an exception");
            return fail(format!("evaluating `{js}` threw: {what}"));
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// Waits until `js` evaluates truthy; on timeout the error shows the page's text.
    pub fn wait_for(&mut self, js: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let check = format!("!!({js})");
        loop {
            if self.evaluate(&check)? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let text = self
                    .evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
                    .unwrap_or(Value::Null);
                return fail(format!(
                    "`{js}` did not become true within {timeout:?}; the page reads: {text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks the element `selector` matches as a mouse would: scrolled into view,
    /// pressed and released at its centre. Fails if nothing matches, or the element is
    /// hidden, covered or disabled.
    pub fn click(&mut self, selector: &str) -> Result<()> {
        let sel = serde_json::to_string(selector).context(|| "selector".into())?;
        let at = self.evaluate(&format!(
            r#"(() => {{
                const el = document.querySelector({sel});
                if (!el) return {{ error: 'nothing matches' }};
                if (el.disabled) return {{ error: 'it is disabled' }};
                el.scrollIntoView({{ block: 'center', inline: 'center' }});
                const r = el.getBoundingClientRect();
                if (r.width === 0 || r.height === 0) return {{ error: 'it is not visible' }};
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                if (!hit || !(hit === el || el.contains(hit)))
                    return {{ error: 'it is covered by ' + (hit ? hit.outerHTML.slice(0, 200) : 'nothing') }};
                return {{ x, y }};
            }})()"#
        ))?;
        if let Some(err) = at.get("error").and_then(Value::as_str) {
            return fail(format!("cannot click {selector}: {err}"));
        }
        let (Some(x), Some(y)) = (at["x"].as_f64(), at["y"].as_f64()) else {
            return fail(format!("cannot click {selector}: no position in {at}"));
        };
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1 }),
            )?;
        }
        Ok(())
    }

    /// Focuses the field `selector` matches, selects what it holds and types `text` over
    /// it (as an input method would insert it).
    pub fn type_text(&mut self, selector: &str, text: &str) -> Result<()> {
        let sel = serde_json::to_string(selector).context(|| "selector".into())?;
        let found = self.evaluate(&format!(
            "(() => {{ const el = document.querySelector({sel}); if (!el) return false; \
             el.focus(); if (el.select) el.select(); return document.activeElement === el; }})()"
        ))?;
        if found != Value::Bool(true) {
            return fail(format!(
                "cannot type into {selector}: missing or not focusable"
            ));
        }
        self.call("Input.insertText", json!({ "text": text }))?;
        Ok(())
    }

    /// Saves what the page shows as a PNG at `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let Some(data) = r.get("data").and_then(Value::as_str) else {
            return fail("Page.captureScreenshot returned no data");
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context(|| "the screenshot is not base64".into())?;
        std::fs::write(path, png).context(|| format!("cannot write {}", path.display()))
    }

    /// Errors the page reported so far: uncaught exceptions, `console.error`, and
    /// browser log errors (failed loads, Content-Security-Policy violations).
    pub fn console_errors(&mut self) -> Result<Vec<String>> {
        // A round trip first, so events sent before now have been read.
        self.evaluate("0")?;
        let mut out = Vec::new();
        for e in &self.events {
            let p = &e["params"];
            match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => out.push(format!(
                    "exception: {}",
                    p.pointer("/exceptionDetails/exception/description")
                        .or_else(|| p.pointer("/exceptionDetails/text"))
                        .unwrap_or(&Value::Null)
                )),
                Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                    out.push(format!("console.error: {}", p["args"]))
                }
                Some("Log.entryAdded") if p.pointer("/entry/level") == Some(&json!("error")) => out
                    .push(format!(
                        "log: {} {}",
                        p.pointer("/entry/text").unwrap_or(&Value::Null),
                        p.pointer("/entry/url").unwrap_or(&Value::Null)
                    )),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The last lines Chromium wrote to stderr.
    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// The profile directory (Chromium's files, its stderr log).
    pub fn profile_dir(&self) -> &Path {
        self.profile.path()
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() {
        String::new()
    } else {
        format!("\nChromium's stderr ends:\n{tail}")
    }
}

/// The DevTools port Chromium picked, from `<profile>/DevToolsActivePort`.
fn wait_for_port(child: &mut Child, data: &Path, log: &Path) -> Result<u16> {
    let file = data.join("DevToolsActivePort");
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        // The file is written whole, but may be seen before its first line is.
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return Ok(port);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return fail(format!(
                "Chromium exited ({status}) before opening DevTools{}",
                log_tail(log)
            ));
        }
        if Instant::now() >= deadline {
            return fail(format!(
                "Chromium wrote no {} within {DEFAULT_TIMEOUT:?}{}",
                file.display(),
                log_tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP GET to Chromium's DevTools server; its body.
fn devtools_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .context(|| format!("cannot connect to DevTools on port {port}"))?;
    s.set_read_timeout(Some(DEFAULT_TIMEOUT))
        .context(|| "cannot set a read timeout".into())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .context(|| format!("cannot ask DevTools for {path}"))?;
    let head = read_head(&mut s).context(|| format!("DevTools {path}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return fail(format!("DevTools {path} answered: {head}"));
    }
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            s.read_exact(&mut body)
        }
        None => s.read_to_end(&mut body).map(|_| ()),
    }
    .context(|| format!("cannot read DevTools {path}"))?;
    String::from_utf8(body).context(|| format!("DevTools {path} is not UTF-8"))
}

/// Reads an HTTP response head byte by byte, so nothing after it is taken from `s`.
fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head over 64 KiB"));
        }
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A WebSocket to the first page target.
fn page_socket(port: u16) -> Result<WebSocket<TcpStream>> {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    let ws_url = loop {
        let list: Value = serde_json::from_str(&devtools_get(port, "/json/list")?)
            .context(|| "DevTools /json/list is not JSON".into())?;
        let page = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str());
        match page {
            Some(u) => break u.to_string(),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => return fail(format!("Chromium shows no page target: {list}")),
        }
    };
    let Some(path) = ws_url
        .strip_prefix(&format!("ws://127.0.0.1:{port}"))
        .or_else(|| ws_url.strip_prefix(&format!("ws://localhost:{port}")))
    else {
        return fail(format!("unexpected DevTools WebSocket address {ws_url}"));
    };
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .context(|| format!("cannot connect to {ws_url}"))?;
    s.set_read_timeout(Some(DEFAULT_TIMEOUT))
        .context(|| "cannot set a read timeout".into())?;
    s.set_nodelay(true)
        .context(|| "cannot set TCP_NODELAY".into())?;
    // The upgrade by hand keeps tungstenite's HTTP and SHA-1 out; the answer's
    // Sec-WebSocket-Accept is not checked, as the server is the Chromium just started.
    let key = base64::engine::general_purpose::STANDARD.encode(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_le_bytes(),
    );
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .context(|| format!("cannot open {ws_url}"))?;
    let head = read_head(&mut s).context(|| format!("opening {ws_url}"))?;
    if !head.starts_with("HTTP/1.1 101") {
        return fail(format!("{ws_url} refused the WebSocket: {head}"));
    }
    Ok(WebSocket::from_raw_socket(s, Role::Client, None))
}
