//! A tiny HTTP/1.1 file server on 127.0.0.1 for stage-over-HTTP tests: Content-Length,
//! ETag, HEAD, Range (206) and If-Range, plus injected faults on the first GET of one path:
//! drop the connection after K bytes, or stall after K bytes until released.
//! Stops (and releases any stall) on drop.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Faults to inject into the first GET of `fault_path`.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The URL path the faults apply to, e.g. `/image.zst`.
    pub fault_path: Option<String>,
    /// Close the connection after sending this many body bytes.
    pub drop_after: Option<u64>,
    /// Stop after this many body bytes until [`HttpServer::release`] (or drop).
    pub stall_after: Option<u64>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status code sent.
    pub status: u16,
}

#[derive(Debug, Default)]
struct StallState {
    stalled: bool,
    released: bool,
}

#[derive(Debug)]
struct Shared {
    files: HashMap<String, PathBuf>,
    opts: ServeOptions,
    fault_used: AtomicBool,
    stop: AtomicBool,
    log: Mutex<Vec<RequestLog>>,
    stall: Mutex<StallState>,
    stall_cv: Condvar,
}

/// The running server; stops on drop.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `files` (URL path → file) on 127.0.0.1 with an ephemeral port.
    pub fn start(files: &[(&str, PathBuf)], opts: ServeOptions) -> Result<HttpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            files: files
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            opts,
            fault_used: AtomicBool::new(false),
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
                    let _ = handle(conn, &s);
                });
            }
        });
        Ok(HttpServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests served so far.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks until the stalled response has sent its first K bytes (or `timeout`).
    pub fn wait_stalled(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.stall.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Lets a stalled response continue.
    pub fn release(&self) {
        let mut st = self.shared.stall.lock().unwrap_or_else(|p| p.into_inner());
        st.released = true;
        self.shared.stall_cv.notify_all();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.release();
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn handle(mut conn: TcpStream, s: &Shared) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let raw_path = parts.next().unwrap_or("").to_owned();
    let path = raw_path.split('?').next().unwrap_or("").to_owned();
    let range = headers.get("range").cloned();
    let log = |status| {
        s.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RequestLog {
                method: method.clone(),
                path: path.clone(),
                range: range.clone(),
                status,
            })
    };
    let Some(file_path) = s.files.get(&path) else {
        log(404);
        conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    };
    if method != "GET" && method != "HEAD" {
        log(405);
        conn.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let mut file = File::open(file_path)?;
    let meta = file.metadata()?;
    let len = meta.len();
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let etag = format!("\"{len:x}-{mtime:x}\"");
    let if_range_ok = !matches!(headers.get("if-range"), Some(v) if *v != etag);
    let (status, start, end) = match range.as_deref().filter(|_| if_range_ok) {
        Some(r) => match parse_range(r, len) {
            Some((a, b)) => (206, a, b),
            None => {
                log(416);
                write!(
                    conn,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                return Ok(());
            }
        },
        None => (200, 0, len),
    };
    log(status);
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 { "Partial Content" } else { "OK" },
        end - start
    );
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    let fault = method == "GET"
        && s.opts.fault_path.as_deref() == Some(path.as_str())
        && !s.fault_used.swap(true, Ordering::SeqCst);
    let drop_after = s.opts.drop_after.filter(|_| fault);
    let stall_after = s.opts.stall_after.filter(|_| fault);
    file.seek(SeekFrom::Start(start))?;
    let mut sent = 0u64;
    let total = end - start;
    let mut buf = vec![0u8; 64 << 10];
    while sent < total {
        let mut want = (total - sent).min(buf.len() as u64);
        if let Some(k) = drop_after.or(stall_after) {
            if sent < k {
                want = want.min(k - sent);
            }
        }
        let n = file.read(&mut buf[..want as usize])?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
        sent += n as u64;
        if drop_after == Some(sent) {
            conn.flush()?;
            conn.shutdown(Shutdown::Both)?;
            return Ok(());
        }
        if stall_after == Some(sent) {
            conn.flush()?;
            let mut st = s.stall.lock().unwrap_or_else(|p| p.into_inner());
            st.stalled = true;
            s.stall_cv.notify_all();
            while !st.released {
                st = s.stall_cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
    Ok(())
}

/// Parses `bytes=A-`, `bytes=A-B` or `bytes=-N` into a half-open range within `len`.
fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?;
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
            (b.parse::<u64>().ok()? + 1).min(len)
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
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
    }
}
