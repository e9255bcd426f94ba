//! A tiny HTTP/1.1 file server on 127.0.0.1 (GET/HEAD, single `Range: bytes=a-b`), one thread
//! per connection, one request per connection. The guest reaches it as 10.0.2.100:80 through
//! QEMU's guestfwd. It counts the bytes it has sent per file, so a test can act while a
//! download is in flight.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};

/// One served file and its byte counter.
struct Entry {
    path: PathBuf,
    sent: AtomicU64,
}

/// The running server; stopped on drop.
pub struct FileServer {
    port: u16,
    files: Arc<HashMap<String, Entry>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serves `files` (URL path such as `/trixie.img.zst` → file) on a free loopback port.
    pub fn start(files: Vec<(String, PathBuf)>) -> Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("http: bind 127.0.0.1:0")?;
        let port = listener.local_addr().context("http: local address")?.port();
        let files: Arc<HashMap<String, Entry>> = Arc::new(
            files
                .into_iter()
                .map(|(url, path)| {
                    (
                        url,
                        Entry {
                            path,
                            sent: AtomicU64::new(0),
                        },
                    )
                })
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (f2, s2) = (files.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let f3 = f2.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &f3) {
                        // A guest killed mid-download closes the connection: expected here.
                        let dropped =
                            e.root_cause()
                                .downcast_ref::<std::io::Error>()
                                .is_some_and(|io| {
                                    matches!(
                                        io.kind(),
                                        std::io::ErrorKind::BrokenPipe
                                            | std::io::ErrorKind::ConnectionReset
                                    )
                                });
                        if !dropped {
                            eprintln!("  {e:#}");
                        }
                    }
                });
            }
        });
        Ok(FileServer {
            port,
            files,
            stop,
            thread: Some(thread),
        })
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes sent so far for `url` (all requests).
    pub fn bytes_sent(&self, url: &str) -> u64 {
        self.files
            .get(url)
            .map(|e| e.sent.load(Ordering::SeqCst))
            .unwrap_or(0)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Parses `bytes=a-b` / `bytes=a-` / `bytes=-n` against `len` into an inclusive range.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (len.saturating_sub(n), len.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len.checked_sub(1)?
        } else {
            b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
        };
        (start, end)
    };
    (start <= end && end < len).then_some((start, end))
}

fn serve(conn: TcpStream, files: &HashMap<String, Entry>) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone().context("http: clone socket")?);
    let mut out = conn;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("http: read request line")?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).context("http: read header")? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    // apt asks for a flat repository's files as `<base>/./Packages`.
    let path = target.split('?').next().unwrap_or("").replace("/./", "/");
    let path = path.as_str();
    let simple = |out: &mut TcpStream, code: &str| -> Result<()> {
        write!(
            out,
            "HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .context("http: write response")
    };
    if method != "GET" && method != "HEAD" {
        return simple(&mut out, "405 Method Not Allowed");
    }
    let Some(entry) = files.get(path) else {
        return simple(&mut out, "404 Not Found");
    };
    let mut file =
        File::open(&entry.path).with_context(|| format!("http: open {}", entry.path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("http: stat {}", entry.path.display()))?
        .len();
    let (status, start, end) = match range {
        Some(r) => match parse_range(&r, len) {
            Some((s, e)) => ("206 Partial Content", s, e),
            None => {
                return write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .context("http: write response");
            }
        },
        None => ("200 OK", 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {count}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n"
    );
    if status.starts_with("206") {
        head += &format!("Content-Range: bytes {start}-{end}/{len}\r\n");
    }
    head += "\r\n";
    out.write_all(head.as_bytes())
        .context("http: write headers")?;
    if method == "HEAD" {
        return Ok(());
    }
    file.seek(SeekFrom::Start(start))
        .with_context(|| format!("http: seek {}", entry.path.display()))?;
    let mut left = count;
    let mut buf = vec![0u8; 256 << 10];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file
            .read(&mut buf[..want])
            .with_context(|| format!("http: read {}", entry.path.display()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .with_context(|| format!("http: send {path}"))?;
        entry.sent.fetch_add(n as u64, Ordering::SeqCst);
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
    }

    #[test]
    fn serves_a_range_over_loopback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("x.bin");
        std::fs::write(&f, b"0123456789").expect("write");
        let srv = FileServer::start(vec![("/x.bin".into(), f)]).expect("start");
        let mut s = TcpStream::connect(("127.0.0.1", srv.port())).expect("connect");
        s.write_all(b"GET /x.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=2-4\r\n\r\n")
            .expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        assert!(resp.starts_with("HTTP/1.1 206"), "{resp}");
        assert!(resp.ends_with("\r\n\r\n234"), "{resp}");
        assert_eq!(srv.bytes_sent("/x.bin"), 3);
    }
}
