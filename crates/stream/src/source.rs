//! Image sources: a local path or an http(s) URL, opened as a byte stream.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::compression::MAGIC_LEN;
use crate::http::HttpReader;
use crate::{Compression, Error};

/// Where an image comes from: a local file (or device) path, or an http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    kind: SourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceKind {
    Path(PathBuf),
    Url(Url),
}

/// Which URLs a source may be fetched from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// https only (the default): a plain `http://` URL is refused.
    #[default]
    HttpsOnly,
    /// Plain http allowed too, because the operator asked for it (`--allow-insecure-http`
    /// or `allow_insecure_http: true`); a warning says the transfer is not authenticated.
    AllowInsecureHttp,
    /// Plain http allowed without a warning: the caller checks the bytes against hashes
    /// from metadata whose signature it verified (a signed update channel).
    SignedMetadata,
}

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// How to open a source: transport policy, size bound, retry policy and network timeout
/// (HTTP only).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Which URLs may be fetched. Whatever it says, a redirect from https to http is
    /// refused, as is a chain of more than [`MAX_REDIRECTS`] redirects.
    pub transport: Transport,
    /// Largest source accepted, in bytes: a larger `Content-Length` or file size is refused
    /// before reading, and a source that grows past it while being read fails there.
    pub max_source_bytes: Option<u64>,
    /// How many times to reconnect after a failed request or a broken transfer before
    /// giving up. The count restarts whenever a reconnection delivers data.
    pub max_retries: u32,
    /// Pause before each reconnection.
    pub retry_delay: Duration,
    /// Timeout for connecting, for the response headers and for each body read.
    pub timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            transport: Transport::default(),
            max_source_bytes: None,
            max_retries: 5,
            retry_delay: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Source {
    /// Parses a SOURCE argument: `http://` and `https://` (any case) are URLs, anything
    /// else is a path. Only emptiness and URL syntax are checked; nothing is opened.
    pub fn parse(spec: &str) -> Result<Source, Error> {
        let invalid = |reason: String| Error::InvalidSource {
            spec: spec.to_string(),
            reason,
        };
        if spec.is_empty() {
            return Err(invalid("empty".to_string()));
        }
        let lower = spec.get(..8).unwrap_or(spec).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = Url::parse(spec).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
            match url.host_str() {
                Some(h) if !h.is_empty() => {}
                _ => return Err(invalid("URL has no host".to_string())),
            }
            return Ok(Source {
                kind: SourceKind::Url(url),
            });
        }
        Ok(Source {
            kind: SourceKind::Path(PathBuf::from(spec)),
        })
    }

    /// The path, or the URL with any password replaced by `***`; for messages and records.
    pub fn display_name(&self) -> String {
        match &self.kind {
            SourceKind::Path(p) => p.display().to_string(),
            SourceKind::Url(u) => {
                let mut u = u.clone();
                if u.password().is_some() {
                    // Setting a password only fails for URLs that cannot have one, and
                    // this one already has one.
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
        }
    }

    /// The last path segment (percent-decoded for URLs): the name a `SHA256SUMS` file
    /// lists. `None` for a URL ending in `/` or a path without a file name.
    pub fn file_name(&self) -> Option<String> {
        match &self.kind {
            SourceKind::Path(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            SourceKind::Url(u) => u
                .path_segments()
                .and_then(|mut s| s.next_back())
                .filter(|s| !s.is_empty())
                .map(percent_decode),
        }
    }

    /// Whether the source is a local path (not a URL).
    pub fn is_local(&self) -> bool {
        matches!(self.kind, SourceKind::Path(_))
    }

    /// Checks the URL's scheme against `transport`: `http://` needs
    /// [`Transport::AllowInsecureHttp`] (then a warning is logged) or
    /// [`Transport::SignedMetadata`]. Paths always pass.
    pub fn check_transport(&self, transport: Transport) -> Result<(), Error> {
        let SourceKind::Url(u) = &self.kind else {
            return Ok(());
        };
        if u.scheme() != "http" {
            return Ok(());
        }
        match transport {
            Transport::HttpsOnly => Err(Error::InsecureTransport {
                url: self.display_name(),
            }),
            Transport::AllowInsecureHttp => {
                warn!(url = %self.display_name(),
                    "plain http allowed by the operator: the transfer is not authenticated, \
                     only the sha256 protects it");
                Ok(())
            }
            Transport::SignedMetadata => Ok(()),
        }
    }

    /// Opens the source for reading. Files are opened and their length taken from their
    /// metadata; URLs are checked against [`OpenOptions::transport`], requested with GET
    /// (transport failures are retried as `opts` says) and their length taken from
    /// `Content-Length`. A length above [`OpenOptions::max_source_bytes`] is refused here.
    pub fn open(&self, opts: &OpenOptions) -> Result<OpenedSource, Error> {
        self.check_transport(opts.transport)?;
        let name = self.display_name();
        let (inner, len) = match &self.kind {
            SourceKind::Path(p) => {
                let open_err = |source| Error::Open {
                    path: name.clone(),
                    source,
                };
                let file = File::open(p).map_err(open_err)?;
                let meta = file.metadata().map_err(open_err)?;
                let len = meta.is_file().then_some(meta.len());
                (Inner::File(file), len)
            }
            SourceKind::Url(u) => {
                let reader = HttpReader::open(u.clone(), name.clone(), opts)?;
                let len = reader.len();
                (Inner::Http(Box::new(reader)), len)
            }
        };
        if let (Some(len), Some(limit)) = (len, opts.max_source_bytes) {
            if len > limit {
                return Err(Error::SourceTooLarge {
                    name,
                    limit,
                    len: Some(len),
                });
            }
        }
        Ok(OpenedSource {
            name,
            file_name: self.file_name().unwrap_or_default(),
            max_source_bytes: opts.max_source_bytes,
            len,
            inner,
            head: Vec::new(),
            head_pos: 0,
            inner_pos: 0,
            compression: None,
        })
    }
}

/// An open source: a byte stream of the published file, with its length when known.
///
/// Read it through [`crate::copy`], or through its [`Read`] implementation (errors then
/// arrive as `io::Error`s wrapping an [`Error`]).
pub struct OpenedSource {
    name: String,
    file_name: String,
    max_source_bytes: Option<u64>,
    len: Option<u64>,
    inner: Inner,
    /// Bytes peeked by [`OpenedSource::compression`], served before `inner`'s.
    head: Vec<u8>,
    head_pos: usize,
    /// Bytes taken from `inner` so far.
    inner_pos: u64,
    compression: Option<Compression>,
}

enum Inner {
    File(File),
    Http(Box<HttpReader>),
}

impl OpenedSource {
    /// Length of the source in bytes: the file size or the HTTP `Content-Length`; `None`
    /// when unknown (a device, a chunked response).
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// True when the source is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// The display name of the source (as [`Source::display_name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Detects the compression by peeking at the first bytes (they are still returned by
    /// later reads) and, failing that, by the file name. Call it before reading; the answer
    /// is remembered.
    pub fn compression(&mut self) -> Result<Compression, Error> {
        if let Some(c) = self.compression {
            return Ok(c);
        }
        if self.inner_pos == 0 {
            let mut buf = [0u8; MAGIC_LEN];
            let mut got = 0;
            while got < MAGIC_LEN {
                let n = self.read_inner(&mut buf[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            self.head = buf[..got].to_vec();
        }
        let c = Compression::detect(&self.file_name, &self.head);
        self.compression = Some(c);
        Ok(c)
    }

    /// Reads source bytes, peeked ones first.
    pub(crate) fn read_source(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.head_pos < self.head.len() {
            let rest = &self.head[self.head_pos..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.head_pos += n;
            return Ok(n);
        }
        self.read_inner(buf)
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = match &mut self.inner {
            Inner::File(f) => loop {
                match f.read(buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(Error::Read {
                            path: self.name.clone(),
                            offset: self.inner_pos,
                            source,
                        })
                    }
                }
            },
            Inner::Http(h) => h.read(buf)?,
        };
        self.inner_pos += n as u64;
        if let Some(limit) = self.max_source_bytes {
            if self.inner_pos > limit {
                return Err(Error::SourceTooLarge {
                    name: self.name.clone(),
                    limit,
                    len: None,
                });
            }
        }
        Ok(n)
    }
}

impl Read for OpenedSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_source(buf).map_err(io::Error::other)
    }
}

/// Largest file [`fetch_text`] accepts.
pub const TEXT_LIMIT: u64 = 1 << 20;

/// Reads a small text file (a `SHA256SUMS` list) from a path or URL, refusing anything
/// larger than [`TEXT_LIMIT`] or not UTF-8.
pub fn fetch_text(src: &Source, opts: &OpenOptions) -> Result<String, Error> {
    let mut opened = src.open(opts)?;
    let too_large = || Error::TextTooLarge {
        name: src.display_name(),
        limit: TEXT_LIMIT,
    };
    if opened.len().is_some_and(|l| l > TEXT_LIMIT) {
        return Err(too_large());
    }
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = opened.read_source(&mut buf)?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        if data.len() as u64 > TEXT_LIMIT {
            return Err(too_large());
        }
    }
    String::from_utf8(data).map_err(|_| Error::NotText {
        name: src.display_name(),
    })
}

/// Reads the whole source once and returns its SHA-256 (lowercase hex) and length: how a
/// local archive is verified before anything is extracted from it. Bounded like any read
/// by [`OpenOptions::max_source_bytes`]; memory is one fixed buffer.
pub fn hash_source(src: &Source, opts: &OpenOptions) -> Result<(String, u64), Error> {
    let mut opened = src.open(opts)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = opened.read_source(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, total))
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_paths_and_urls() {
        let p = Source::parse("/srv/img/debian.img.zst").unwrap();
        assert_eq!(p.display_name(), "/srv/img/debian.img.zst");
        assert_eq!(p.file_name().as_deref(), Some("debian.img.zst"));

        let u = Source::parse("HTTPS://user:secret@127.0.0.1:8080/a/b%20c.img.xz?x=1").unwrap();
        assert_eq!(u.file_name().as_deref(), Some("b c.img.xz"));
        assert!(!u.display_name().contains("secret"));

        let u = Source::parse("http://127.0.0.1/dir/").unwrap();
        assert_eq!(u.file_name(), None);

        // Relative paths and odd names are paths.
        assert!(Source::parse("httpfile.img").is_ok());
        assert!(matches!(
            Source::parse(""),
            Err(Error::InvalidSource { .. })
        ));
        assert!(matches!(
            Source::parse("http://"),
            Err(Error::InvalidSource { .. })
        ));
        assert!(matches!(
            Source::parse("http://[::1"),
            Err(Error::InvalidSource { .. })
        ));
    }

    #[test]
    fn transport_policy() {
        let http = Source::parse("http://10.0.2.100/x.img").unwrap();
        let https = Source::parse("https://example.invalid/x.img").unwrap();
        let path = Source::parse("/srv/x.img").unwrap();
        assert!(matches!(
            http.check_transport(Transport::HttpsOnly),
            Err(Error::InsecureTransport { .. })
        ));
        assert!(http.check_transport(Transport::AllowInsecureHttp).is_ok());
        assert!(http.check_transport(Transport::SignedMetadata).is_ok());
        assert!(https.check_transport(Transport::HttpsOnly).is_ok());
        assert!(path.check_transport(Transport::HttpsOnly).is_ok());
        assert!(path.is_local() && !http.is_local());
        let e = http
            .check_transport(Transport::HttpsOnly)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-insecure-http"), "{e}");
    }

    #[test]
    fn size_bound_on_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.img");
        std::fs::write(&p, vec![1u8; 5000]).unwrap();
        let src = Source::parse(p.to_str().unwrap()).unwrap();
        let opts = |max| OpenOptions {
            max_source_bytes: Some(max),
            ..OpenOptions::default()
        };
        assert!(matches!(
            src.open(&opts(4999)),
            Err(Error::SourceTooLarge {
                len: Some(5000),
                ..
            })
        ));
        let (hex, len) = hash_source(&src, &opts(5000)).unwrap();
        assert_eq!(len, 5000);
        assert_eq!(hex.len(), 64);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}
