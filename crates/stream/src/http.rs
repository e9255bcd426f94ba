//! HTTP(S) body reader that resumes a broken transfer with `Range` / `If-Range`.

use std::io::{self, Read};
use std::thread;

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::redirect;
use reqwest::{StatusCode, Url};
use tracing::warn;

use crate::{Error, OpenOptions, MAX_REDIRECTS};

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Reads the body of a GET response; when the transfer breaks (an error or fewer bytes
/// than `Content-Length`), reconnects at the current offset as [`OpenOptions`] allows.
pub(crate) struct HttpReader {
    client: Client,
    url: Url,
    /// URL for messages (password hidden).
    name: String,
    opts: OpenOptions,
    resp: Option<Response>,
    /// Body bytes delivered so far.
    pos: u64,
    len: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Consecutive failed attempts since data last arrived.
    failures: u32,
}

/// Outcome of a failed resume attempt.
enum ResumeError {
    /// Worth another attempt (connection refused, broken while skipping).
    Transient(Cause),
    /// Final: the file changed, the server refused, the answer makes no sense.
    Fatal(Error),
}

impl HttpReader {
    /// Sends the first GET and checks for `200 OK`.
    pub(crate) fn open(url: Url, name: String, opts: &OpenOptions) -> Result<Self, Error> {
        let client = Client::builder()
            .redirect(redirect::Policy::custom(redirect_policy))
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .build()
            .map_err(|e| Error::Http {
                url: name.clone(),
                step: "setting up an HTTP client for".to_string(),
                source: e.into(),
            })?;
        let mut failures = 0;
        let resp = loop {
            match client.get(url.clone()).send() {
                Ok(r) => break r,
                Err(e) if e.is_redirect() => {
                    return Err(Error::Redirect {
                        url: name,
                        reason: chain(&e),
                    })
                }
                Err(e) if failures < opts.max_retries => {
                    failures += 1;
                    warn!(url = %name, attempt = failures, max_retries = opts.max_retries,
                        error = %e, "request failed; retrying");
                    thread::sleep(opts.retry_delay);
                }
                Err(e) => {
                    return Err(Error::Http {
                        url: name,
                        step: "requesting".to_string(),
                        source: e.into(),
                    })
                }
            }
        };
        if resp.status() != StatusCode::OK {
            return Err(Error::HttpStatus {
                url: name,
                step: "requesting".to_string(),
                status: resp.status().as_u16(),
            });
        }
        let headers = resp.headers();
        Ok(HttpReader {
            len: resp.content_length(),
            etag: header(headers, ETAG.as_str()),
            last_modified: header(headers, LAST_MODIFIED.as_str()),
            resp: Some(resp),
            client,
            url,
            name,
            opts: opts.clone(),
            pos: 0,
            failures: 0,
        })
    }

    /// The `Content-Length` of the first answer.
    pub(crate) fn len(&self) -> Option<u64> {
        self.len
    }

    /// Reads body bytes, resuming the transfer when it breaks.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let cause: Cause = match self.resp.as_mut().map(|r| r.read(buf)) {
                Some(Ok(0)) => match self.len {
                    Some(len) if self.pos < len => {
                        format!("connection closed after {} of {len} bytes", self.pos).into()
                    }
                    _ => return Ok(0),
                },
                Some(Ok(n)) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Some(Err(e)) => {
                    if self.len == Some(self.pos) {
                        // Everything arrived; only the end of the connection failed.
                        self.resp = None;
                        return Ok(0);
                    }
                    e.into()
                }
                None => return Ok(0),
            };
            self.resp = None;
            self.reconnect(cause)?;
        }
    }

    /// Retries until a resumed response is in place or the attempts are used up.
    fn reconnect(&mut self, mut cause: Cause) -> Result<(), Error> {
        loop {
            if self.failures >= self.opts.max_retries {
                return Err(Error::Http {
                    url: self.name.clone(),
                    step: format!(
                        "reading body (at byte {}, after {} retries) of",
                        self.pos, self.failures
                    ),
                    source: cause,
                });
            }
            self.failures += 1;
            warn!(url = %self.name, offset = self.pos, attempt = self.failures,
                max_retries = self.opts.max_retries, error = %cause,
                "download interrupted; resuming");
            thread::sleep(self.opts.retry_delay);
            match self.resume() {
                Ok(resp) => {
                    self.resp = Some(resp);
                    return Ok(());
                }
                Err(ResumeError::Transient(c)) => cause = c,
                Err(ResumeError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// Sends `Range: bytes=<pos>-` (with `If-Range` when there is a validator) and
    /// positions the answer at `pos`.
    fn resume(&self) -> Result<Response, ResumeError> {
        let pos = self.pos;
        let mut req = self
            .client
            .get(self.url.clone())
            .header(RANGE, format!("bytes={pos}-"));
        if let Some(v) = self.if_range() {
            req = req.header(IF_RANGE, v);
        }
        let mut resp = req.send().map_err(|e| {
            if e.is_redirect() {
                ResumeError::Fatal(Error::Redirect {
                    url: self.name.clone(),
                    reason: chain(&e),
                })
            } else {
                ResumeError::Transient(e.into())
            }
        })?;
        let status = resp.status();
        if status != StatusCode::PARTIAL_CONTENT && status != StatusCode::OK {
            return Err(ResumeError::Fatal(Error::HttpStatus {
                url: self.name.clone(),
                step: format!("resuming at byte {pos}"),
                status: status.as_u16(),
            }));
        }
        self.check_validators(resp.headers())
            .map_err(ResumeError::Fatal)?;
        if status == StatusCode::PARTIAL_CONTENT {
            let range = header(resp.headers(), CONTENT_RANGE.as_str()).unwrap_or_default();
            let (start, total) = parse_content_range(&range).ok_or_else(|| {
                ResumeError::Fatal(Error::BadResume {
                    url: self.name.clone(),
                    offset: pos,
                    reason: format!("206 answer with unusable Content-Range {range:?}"),
                })
            })?;
            if start != pos {
                return Err(ResumeError::Fatal(Error::BadResume {
                    url: self.name.clone(),
                    offset: pos,
                    reason: format!("206 answer starts at byte {start}"),
                }));
            }
            if let (Some(total), Some(len)) = (total, self.len) {
                if total != len {
                    return Err(ResumeError::Fatal(
                        self.changed(format!("length was {len}, Content-Range says {total}")),
                    ));
                }
            }
            return Ok(resp);
        }
        // 200: the server ignored the range (or If-Range did not match yet the validators
        // are the same); read from the start and throw the first `pos` bytes away.
        if let (Some(new), Some(len)) = (resp.content_length(), self.len) {
            if new != len {
                return Err(ResumeError::Fatal(
                    self.changed(format!("length was {len}, now {new}")),
                ));
            }
        }
        warn!(url = %self.name, offset = pos,
            "server does not support ranges; re-reading from the start");
        let skipped = io::copy(&mut (&mut resp).take(pos), &mut io::sink())
            .map_err(|e| ResumeError::Transient(e.into()))?;
        if skipped < pos {
            return Err(ResumeError::Transient(
                format!("connection closed after {skipped} bytes while skipping to byte {pos}")
                    .into(),
            ));
        }
        Ok(resp)
    }

    /// The `If-Range` value: a strong ETag, else Last-Modified.
    fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(e) if !e.starts_with("W/") => Some(e),
            _ => self.last_modified.as_deref(),
        }
    }

    /// Fails when a validator the server sends now differs from the first answer's.
    fn check_validators(&self, headers: &HeaderMap) -> Result<(), Error> {
        let pairs = [
            ("ETag", &self.etag, header(headers, ETAG.as_str())),
            (
                "Last-Modified",
                &self.last_modified,
                header(headers, LAST_MODIFIED.as_str()),
            ),
        ];
        for (what, old, new) in pairs {
            if let (Some(old), Some(new)) = (old, new) {
                if *old != new {
                    return Err(self.changed(format!("{what} was {old}, now {new}")));
                }
            }
        }
        Ok(())
    }

    fn changed(&self, detail: String) -> Error {
        Error::SourceChanged {
            url: self.name.clone(),
            offset: self.pos,
            detail,
        }
    }
}

/// Follows at most [`MAX_REDIRECTS`] redirects and never one from https to plain http
/// (the first URL's scheme was checked against the transport policy; a redirect may not
/// undo that).
fn redirect_policy(attempt: redirect::Attempt<'_>) -> redirect::Action {
    match redirect_refusal(attempt.previous(), attempt.url()) {
        Some(reason) => attempt.error(reason),
        None => attempt.follow(),
    }
}

/// Why a redirect to `next` after the chain `previous` (first request first) is not
/// followed, if it is not (pure).
fn redirect_refusal(previous: &[Url], next: &Url) -> Option<String> {
    if next.scheme() == "http" && previous.iter().any(|u| u.scheme() == "https") {
        Some(format!(
            "refused a redirect from https to plain http ({next})"
        ))
    } else if next.scheme() != "http" && next.scheme() != "https" {
        Some(format!("refused a redirect to {next}: not http(s)"))
    } else if previous.len() > MAX_REDIRECTS {
        Some(format!("more than {MAX_REDIRECTS} redirects"))
    } else {
        None
    }
}

/// An error and its causes on one line (the redirect policy's reason is a cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A header's value as text, if present and visible ASCII.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`) into (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::{parse_content_range, redirect_refusal, Url, MAX_REDIRECTS};

    #[test]
    fn redirects() {
        let u = |s: &str| Url::parse(s).unwrap();
        let https = u("https://a.example/x");
        let http = u("http://b.example/x");
        assert!(redirect_refusal(std::slice::from_ref(&https), &http)
            .unwrap()
            .contains("https to plain http"));
        assert!(redirect_refusal(&[http.clone(), https.clone()], &http).is_some());
        assert_eq!(redirect_refusal(std::slice::from_ref(&https), &https), None);
        assert_eq!(redirect_refusal(std::slice::from_ref(&http), &http), None);
        assert_eq!(redirect_refusal(std::slice::from_ref(&http), &https), None);
        assert!(redirect_refusal(std::slice::from_ref(&https), &u("file:///etc/passwd")).is_some());
        let chain = vec![https.clone(); MAX_REDIRECTS];
        assert_eq!(redirect_refusal(&chain, &https), None);
        let chain = vec![https.clone(); MAX_REDIRECTS + 1];
        assert!(redirect_refusal(&chain, &https)
            .unwrap()
            .contains("redirects"));
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("bytes 5-4/100"), None);
        assert_eq!(parse_content_range("items 0-4/100"), None);
    }
}
