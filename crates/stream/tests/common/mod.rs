//! Test helpers: a tiny HTTP/1.1 file server on 127.0.0.1 and fixture encoders.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use abupdate_stream::{OpenOptions, Transport};
use sha2::{Digest, Sha256};

/// What one request asked for.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

/// Behaviour of the server; change it between requests through `TestServer::state`.
#[derive(Default)]
pub struct State {
    pub data: Vec<u8>,
    pub etag: Option<String>,
    /// Per request, in order: send only this many body bytes, then close the connection.
    pub drops: VecDeque<usize>,
    /// Answer `Range` requests with 200 and the whole file.
    pub ignore_range: bool,
    /// Serve 206 even when `If-Range` does not match the current ETag.
    pub ignore_if_range: bool,
    /// After the first request, the ETag becomes this (the file "changed").
    pub etag_after_first: Option<String>,
    pub seen: Vec<Seen>,
}

/// A running server; it lives until the test process ends.
pub struct TestServer {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

impl TestServer {
    pub fn start(data: Vec<u8>, etag: Option<&str>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            data,
            etag: etag.map(str::to_string),
            ..State::default()
        }));
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || {
                    // A client going away mid-answer is expected in these tests.
                    let _ = serve(conn, &st);
                });
            }
        });
        TestServer { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v),
                "if-range" => if_range = Some(v),
                _ => {}
            }
        }
    }

    let (head, body, drop_after) = {
        let mut st = state.lock().unwrap();
        let first = st.seen.is_empty();
        let drop_after = st.drops.pop_front();
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        let validator_ok = st.ignore_if_range || if_range.is_none() || if_range == st.etag;
        let len = st.data.len();
        let etag_line = st
            .etag
            .as_ref()
            .map(|e| format!("ETag: {e}\r\n"))
            .unwrap_or_default();
        let (status, head, body) = if let Some(n) = path.strip_prefix("/loop/") {
            // A redirect chain: /loop/N redirects to /loop/N+1, for ever.
            let next = n.parse::<u32>().unwrap_or(0) + 1;
            (
                302,
                format!("HTTP/1.1 302 Found\r\nLocation: /loop/{next}\r\nContent-Length: 0\r\n"),
                Vec::new(),
            )
        } else if path == "/missing" {
            (
                404,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n".to_string(),
                Vec::new(),
            )
        } else {
            match start {
                Some(s) if !st.ignore_range && validator_ok && s < len => (
                    206,
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{len}\r\n{etag_line}",
                        len - s,
                        len - 1
                    ),
                    st.data[s..].to_vec(),
                ),
                Some(_) if !st.ignore_range && validator_ok => (
                    416,
                    format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nContent-Range: bytes */{len}\r\n"),
                    Vec::new(),
                ),
                _ => (
                    200,
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\n{etag_line}"),
                    st.data.clone(),
                ),
            }
        };
        st.seen.push(Seen {
            path,
            range,
            if_range,
            status,
        });
        if first {
            if let Some(e) = st.etag_after_first.take() {
                st.etag = Some(e);
            }
        }
        (head, body, drop_after)
    };

    let mut conn = conn;
    conn.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())?;
    match drop_after {
        Some(k) => {
            conn.write_all(&body[..k.min(body.len())])?;
            conn.flush()?;
            conn.shutdown(Shutdown::Both)?;
        }
        None => conn.write_all(&body)?,
    }
    Ok(())
}

/// Fast retries for tests.
pub fn quick_opts() -> OpenOptions {
    OpenOptions {
        transport: Transport::AllowInsecureHttp,
        max_source_bytes: None,
        max_retries: 3,
        retry_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
    }
}

/// Deterministic, moderately compressible test data.
pub fn sample(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                (i % 251) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 3);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}
