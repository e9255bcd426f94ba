//! The one HTTP/1.1 server of every test level: files or bytes on 127.0.0.1, one request per
//! connection, `Content-Length`, `ETag`, `HEAD`, `Range` (206/416) and `If-Range`, with
//! faults injected into the GETs of one path (drop the connection after K body bytes, stall
//! until released, ignore `Range` or `If-Range`, change the ETag after the first answer),
//! a log of every request and a count of the body bytes sent per path. `/loop/N` redirects to
//! `/loop/N+1` for ever (a client must cut the chain).
//!
//! The stream unit tests, the privileged tests, the stage benchmark and the VM harness (the
//! guest reaches it as `10.0.2.100:80` through QEMU's guestfwd) all use it. It stops, and
//! releases a stalled answer, when dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Faults injected into the GETs of [`ServeOptions::fault_path`] (of every path when unset).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The URL path the faults apply to, e.g. `/image.zst`; `None`: every path.
    pub fault_path: Option<String>,
    /// The n-th GET sends only `drops[n]` body bytes, then closes the connection.
    pub drops: Vec<u64>,
    /// The first GET stops after this many body bytes until [`HttpServer::release`] (or drop).
    pub stall_after: Option<u64>,
    /// Answer `Range` requests with 200 and the whole file, as a server without ranges does.
    pub ignore_range: bool,
    /// Answer 206 even when `If-Range` does not match the current ETag.
    pub ignore_if_range: bool,
    /// After the first GET the ETag becomes this: the file "changed" on the server.
    pub etag_after_first: Option<String>,
}

impl ServeOptions {
    /// The first GET of `path` is cut after `bytes` body bytes.
    pub fn drop_after(path: &str, bytes: u64) -> ServeOptions {
        ServeOptions {
            fault_path: Some(path.to_owned()),
            drops: vec![bytes],
            ..ServeOptions::default()
        }
    }

    /// The first GET of `path` stalls after `bytes` body bytes until released.
    pub fn stall_after(path: &str, bytes: u64) -> ServeOptions {
        ServeOptions {
            fault_path: Some(path.to_owned()),
            stall_after: Some(bytes),
            ..ServeOptions::default()
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The URL path (query removed).
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-Range` header, if any.
    pub if_range: Option<String>,
    /// The status code sent.
    pub status: u16,
}

/// What a path serves.
#[derive(Debug)]
enum Body {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// One served path: its body, its ETag override, its counters.
#[derive(Debug)]
struct Route {
    body: Body,
    /// For bytes: the ETag (none: no header). For files: an override of the computed one.
    etag: Mutex<Option<String>>,
    /// GETs answered so far (the index of the next one).
    gets: AtomicU64,
    /// Body bytes sent, all requests together.
    sent: AtomicU64,
}

#[derive(Debug, Default)]
struct StallState {
    stalled: bool,
    released: bool,
}

#[derive(Debug)]
struct Shared {
    routes: HashMap<String, Route>,
    opts: ServeOptions,
    stop: AtomicBool,
    log: Mutex<Vec<RequestLog>>,
    stall: Mutex<StallState>,
    stall_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler thread that panicked leaves the data as consistent as it was.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Paths and their content for [`HttpServer`], then [`ServerBuilder::start`].
#[derive(Debug, Default)]
pub struct ServerBuilder {
    routes: Vec<(String, Route)>,
    opts: ServeOptions,
}

impl ServerBuilder {
    fn add(mut self, url: &str, body: Body, etag: Option<String>) -> Self {
        self.routes.push((
            url.to_owned(),
            Route {
                body,
                etag: Mutex::new(etag),
                gets: AtomicU64::new(0),
                sent: AtomicU64::new(0),
            },
        ));
        self
    }

    /// Serves the file `path` at `url` (e.g. `/trixie.img.zst`); its ETag is derived from
    /// its size and modification time, as common servers do.
    pub fn file(self, url: &str, path: impl Into<PathBuf>) -> Self {
        self.add(url, Body::File(path.into()), None)
    }

    /// Serves `data` at `url`, with `etag` (quoted, e.g. `"\"v1\""`) or no ETag header.
    pub fn bytes(self, url: &str, data: impl Into<Vec<u8>>, etag: Option<&str>) -> Self {
        self.add(url, Body::Bytes(data.into()), etag.map(str::to_owned))
    }

    /// The faults to inject.
    pub fn options(mut self, opts: ServeOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Binds an ephemeral port of 127.0.0.1 and serves until the server is dropped.
    pub fn start(self) -> Result<HttpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("http: bind 127.0.0.1:0")?;
        let addr = listener.local_addr().context("http: local address")?;
        let shared = Arc::new(Shared {
            routes: self.routes.into_iter().collect(),
            opts: self.opts,
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            stall: Mutex::new(StallState::default()),
            stall_cv: Condvar::new(),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    if let Err(e) = handle(conn, &s) {
                        // A client that goes away mid-answer (a killed guest, a test that has
                        // what it needs) is expected; anything else is worth a line.
                        let gone =
                            e.root_cause()
                                .downcast_ref::<std::io::Error>()
                                .is_some_and(|io| {
                                    matches!(
                                        io.kind(),
                                        std::io::ErrorKind::BrokenPipe
                                            | std::io::ErrorKind::ConnectionReset
                                            | std::io::ErrorKind::ConnectionAborted
                                    )
                                });
                        if !gone {
                            eprintln!("http server: {e:#}");
                        }
                    }
                });
            }
        });
        Ok(HttpServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }
}

/// The running server; stops on drop.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Paths to serve, then `start`.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Serves `files` (URL path → file) with the faults in `opts`.
    pub fn start(files: &[(&str, PathBuf)], opts: ServeOptions) -> Result<HttpServer> {
        files
            .iter()
            .fold(HttpServer::builder(), |b, (url, path)| b.file(url, path))
            .options(opts)
            .start()
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The requests answered so far, in order.
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.shared.log).clone()
    }

    /// Body bytes sent so far for `path`, all requests together.
    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.shared
            .routes
            .get(path)
            .map(|r| r.sent.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// Blocks until the stalled answer has sent its first K bytes (or `timeout` passes).
    pub fn wait_stalled(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.stall);
        while !st.stalled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the HTTP client never reached the stall point within {timeout:?}");
            }
            st = self
                .shared
                .stall_cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets a stalled answer continue.
    pub fn release(&self) {
        lock(&self.shared.stall).released = true;
        self.shared.stall_cv.notify_all();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.release();
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    range: Option<String>,
    if_range: Option<String>,
}

/// Reads the request line and headers. The path loses its query, and `/./` becomes `/`
/// (apt asks for a flat repository's files as `<base>/./Packages`).
fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader
        .read_line(&mut line)
        .context("http: read request line")?
        == 0
    {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("");
    // apt asks for `grub-pc_2.06-13%2bdeb12u2_amd64.deb`: routes are matched decoded.
    let raw = target.split('?').next().unwrap_or("").replace("/./", "/");
    let path = percent_encoding::percent_decode_str(&raw)
        .decode_utf8_lossy()
        .into_owned();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).context("http: read header")? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = Some(v.trim().to_owned());
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = v,
                "if-range" => if_range = v,
                _ => {}
            }
        }
    }
    Ok(Some(Request {
        method,
        path,
        range,
        if_range,
    }))
}

/// The body's length and current ETag.
fn describe(route: &Route) -> Result<(u64, Option<String>)> {
    let over = lock(&route.etag).clone();
    match &route.body {
        Body::Bytes(b) => Ok((b.len() as u64, over)),
        Body::File(p) => {
            let meta =
                std::fs::metadata(p).with_context(|| format!("http: stat {}", p.display()))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let etag = over.unwrap_or_else(|| format!("\"{:x}-{mtime:x}\"", meta.len()));
            Ok((meta.len(), Some(etag)))
        }
    }
}

fn simple(conn: &mut TcpStream, status: &str, extra: &str) -> Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .context("http: write response")
}

fn handle(mut conn: TcpStream, s: &Shared) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .context("http: set read timeout")?;
    let mut reader = BufReader::new(conn.try_clone().context("http: clone socket")?);
    let Some(req) = read_request(&mut reader)? else {
        return Ok(());
    };
    let log = |status| {
        lock(&s.log).push(RequestLog {
            method: req.method.clone(),
            path: req.path.clone(),
            range: req.range.clone(),
            if_range: req.if_range.clone(),
            status,
        })
    };
    if let Some(n) = req.path.strip_prefix("/loop/") {
        // A redirect chain without end: /loop/N redirects to /loop/N+1.
        let next = n.parse::<u64>().unwrap_or(0) + 1;
        log(302);
        return simple(
            &mut conn,
            "302 Found",
            &format!("Location: /loop/{next}\r\n"),
        );
    }
    let Some(route) = s.routes.get(&req.path) else {
        log(404);
        return simple(&mut conn, "404 Not Found", "");
    };
    if req.method != "GET" && req.method != "HEAD" {
        log(405);
        return simple(&mut conn, "405 Method Not Allowed", "");
    }
    let (len, etag) = describe(route)?;
    let get = req.method == "GET";
    let faulty = get && !matches!(s.opts.fault_path.as_deref(), Some(p) if p != req.path);
    let nth = if get {
        route.gets.fetch_add(1, Ordering::SeqCst)
    } else {
        u64::MAX
    };
    if faulty && nth == 0 {
        if let Some(e) = &s.opts.etag_after_first {
            *lock(&route.etag) = Some(e.clone());
        }
    }
    let validator_ok = s.opts.ignore_if_range || req.if_range.is_none() || req.if_range == etag;
    let ranged = req
        .range
        .as_deref()
        .filter(|_| !s.opts.ignore_range && validator_ok);
    let (status, start, end) = match ranged {
        Some(r) => match parse_range(r, len) {
            Some((a, b)) => (206, a, b),
            None => {
                log(416);
                return simple(
                    &mut conn,
                    "416 Range Not Satisfiable",
                    &format!("Content-Range: bytes */{len}\r\n"),
                );
            }
        },
        None => (200, 0, len),
    };
    log(status);
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 { "Partial Content" } else { "OK" },
        end - start
    );
    if let Some(e) = &etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())
        .context("http: write headers")?;
    if !get {
        return Ok(());
    }
    let idx = usize::try_from(nth).unwrap_or(usize::MAX);
    let drop_after = s.opts.drops.get(idx).copied().filter(|_| faulty);
    let stall_after = s.opts.stall_after.filter(|_| faulty && nth == 0);
    send_body(
        &mut conn,
        s,
        route,
        &req.path,
        (start, end),
        drop_after,
        stall_after,
    )
}

/// Sends `range` of the body, cut after `drop_after` bytes or paused after `stall_after`.
fn send_body(
    conn: &mut TcpStream,
    s: &Shared,
    route: &Route,
    path: &str,
    (start, end): (u64, u64),
    drop_after: Option<u64>,
    stall_after: Option<u64>,
) -> Result<()> {
    let mut file = match &route.body {
        Body::File(p) => {
            let mut f = File::open(p).with_context(|| format!("http: open {}", p.display()))?;
            f.seek(SeekFrom::Start(start))
                .with_context(|| format!("http: seek {}", p.display()))?;
            Some(f)
        }
        Body::Bytes(_) => None,
    };
    let total = end - start;
    let mut sent = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    while sent < total {
        let mut want = (total - sent).min(buf.len() as u64);
        if let Some(k) = drop_after.or(stall_after) {
            if sent < k {
                want = want.min(k - sent);
            }
        }
        if drop_after == Some(sent) {
            break;
        }
        // `want` is at most the buffer's length.
        let want = want as usize;
        let n = match (&mut file, &route.body) {
            (Some(f), _) => f
                .read(&mut buf[..want])
                .with_context(|| format!("http: read the file behind {path}"))?,
            (None, Body::Bytes(b)) => {
                let at = (start + sent) as usize;
                buf[..want].copy_from_slice(&b[at..at + want]);
                want
            }
            (None, Body::File(_)) => 0,
        };
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])
            .with_context(|| format!("http: send {path}"))?;
        sent += n as u64;
        route.sent.fetch_add(n as u64, Ordering::SeqCst);
        if stall_after == Some(sent) {
            conn.flush().context("http: flush")?;
            let mut st = lock(&s.stall);
            st.stalled = true;
            s.stall_cv.notify_all();
            while !st.released {
                st = s.stall_cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
    if drop_after.is_some_and(|k| k < total) {
        conn.flush().context("http: flush")?;
        // The peer may already be gone; the connection is closed either way.
        let _ = conn.shutdown(Shutdown::Both);
    }
    Ok(())
}

/// Parses `bytes=A-`, `bytes=A-B` or `bytes=-N` into a half-open range within `len`
/// (`None`: not satisfiable, or several ranges).
pub fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let spec = r.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (start, end)
    };
    (start < end && start < len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(parse_range("bytes=3-4", 10), Some((3, 5)));
        assert_eq!(parse_range("bytes=-4", 10), Some((6, 10)));
        assert_eq!(parse_range("bytes=5-500", 10), Some((5, 10)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("lines=0-1", 10), None);
    }

    /// Sends a raw request and returns the raw answer.
    fn get(srv: &HttpServer, request: &str) -> String {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.write_all(request.as_bytes()).expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        resp
    }

    #[test]
    fn file_range_etag_and_counters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("x.bin");
        std::fs::write(&f, b"0123456789").expect("write");
        let srv = HttpServer::builder()
            .file("/x.bin", &f)
            .start()
            .expect("start");
        let full = get(&srv, "GET /x.bin HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(full.starts_with("HTTP/1.1 200 OK"), "{full}");
        let etag = full
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .expect("an ETag")
            .to_owned();
        let part = get(
            &srv,
            &format!("GET /x.bin?v=1 HTTP/1.1\r\nRange: bytes=2-4\r\nIf-Range: {etag}\r\n\r\n"),
        );
        assert!(part.starts_with("HTTP/1.1 206"), "{part}");
        assert!(part.contains("Content-Range: bytes 2-4/10\r\n"), "{part}");
        assert!(part.ends_with("\r\n\r\n234"), "{part}");
        let stale = get(
            &srv,
            "GET /x.bin HTTP/1.1\r\nRange: bytes=2-\r\nIf-Range: \"old\"\r\n\r\n",
        );
        assert!(stale.starts_with("HTTP/1.1 200"), "{stale}");
        assert!(get(&srv, "GET /x.bin HTTP/1.1\r\nRange: bytes=10-\r\n\r\n")
            .starts_with("HTTP/1.1 416"));
        assert!(get(&srv, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert_eq!(srv.bytes_sent("/x.bin"), 10 + 3 + 10);
        let statuses: Vec<u16> = srv.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 206, 200, 416, 404]);
    }

    #[test]
    fn paths_are_matched_percent_decoded() {
        let srv = HttpServer::builder()
            .bytes("/pool/a_1+b1.deb", b"deb".to_vec(), None)
            .start()
            .expect("start");
        let r = get(&srv, "GET /pool/a_1%2bb1.deb HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("deb"), "{r}");
    }

    #[test]
    fn drops_in_order_then_serves_whole() {
        let data: Vec<u8> = (0..100u8).collect();
        let srv = HttpServer::builder()
            .bytes("/b", data.clone(), Some("\"v1\""))
            .options(ServeOptions {
                drops: vec![10, 0],
                etag_after_first: Some("\"v2\"".into()),
                ..ServeOptions::default()
            })
            .start()
            .expect("start");
        let body = |r: &str| r.split("\r\n\r\n").nth(1).unwrap_or("").len();
        let first = get(&srv, "GET /b HTTP/1.1\r\n\r\n");
        assert!(first.contains("ETag: \"v1\""), "{first}");
        assert_eq!(body(&first), 10);
        let second = get(&srv, "GET /b HTTP/1.1\r\n\r\n");
        assert!(second.contains("ETag: \"v2\""), "{second}");
        assert_eq!(body(&second), 0);
        assert_eq!(body(&get(&srv, "GET /b HTTP/1.1\r\n\r\n")), 100);
        assert!(get(&srv, "HEAD /b HTTP/1.1\r\n\r\n").contains("Content-Length: 100\r\n"));
    }
}
