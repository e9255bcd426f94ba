//! The host side: load and verify the channel's metadata with tough, and list its releases.
//!
//! Everything is verified from the pinned root: tough follows the chain of root versions,
//! checks each role's signature threshold and expiry, refuses versions older than the ones
//! recorded in the datastore, and checks each metadata file's length and hash against the
//! one above it. The datastore is passed in and handed back as bytes, so the caller decides
//! where it lives and writes it durably, and only after a successful load.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::Url;
use serde::Serialize;
use tough::{
    ExpirationEnforcement, FilesystemTransport, RepositoryLoader, Transport, TransportError,
    TransportErrorKind, TransportStream,
};

use crate::release::{Release, ReleaseMeta, CUSTOM_KEY};
use crate::Error;

/// The files tough keeps to detect rollbacks (name → content).
pub type Datastore = BTreeMap<String, Vec<u8>>;

/// Largest metadata file the transport accepts (tough's own limits are lower).
const MAX_METADATA: usize = 16 << 20;

/// A channel's verified metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// The channel URL.
    pub url: String,
    /// Releases, in no particular order.
    pub releases: Vec<Release>,
    /// Targets that are not abupdate releases, with why.
    pub ignored: Vec<Ignored>,
    /// Version of the root metadata now trusted.
    pub root_version: u64,
    /// Version of the timestamp metadata.
    pub timestamp_version: u64,
    /// Version of the snapshot metadata.
    pub snapshot_version: u64,
    /// Version of the targets metadata.
    pub targets_version: u64,
    /// When the first of the metadata files expires.
    pub expires: Timestamp,
}

/// A target skipped because it is not a usable release.
#[derive(Debug, Clone, Serialize)]
pub struct Ignored {
    /// The target name.
    pub name: String,
    /// Why it was skipped.
    pub reason: String,
}

/// Fetches metadata over http(s) with reqwest, or from `file://` URLs.
#[derive(Debug, Clone)]
struct HttpTransport {
    client: reqwest::Client,
}

#[tough::async_trait]
impl Transport for HttpTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => return FilesystemTransport.fetch(url).await,
            "http" | "https" => {}
            _ => {
                return Err(TransportError::new(
                    TransportErrorKind::UnsupportedUrlScheme,
                    url,
                ))
            }
        }
        let other = |e: Box<dyn std::error::Error + Send + Sync>| {
            TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
        };
        let mut resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| other(e.into()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        if !status.is_success() {
            return Err(other(format!("server answered HTTP {status}").into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| other(e.into()))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_METADATA {
                return Err(other(
                    format!("larger than {MAX_METADATA} bytes; not metadata").into(),
                ));
            }
        }
        Ok(Box::pin(futures::stream::once(async move {
            Ok(tough::Bytes::from(body))
        })))
    }
}

/// A single-threaded runtime to drive tough's asynchronous API from blocking code.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// `<channel>/metadata/` and `<channel>/targets/`.
pub(crate) fn base_urls(channel: &str) -> Result<(Url, Url), Error> {
    let bad = |e: String| Error::Invalid(format!("channel URL {channel:?}: {e}"));
    let mut base = Url::parse(channel).map_err(|e| bad(e.to_string()))?;
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let metadata = base.join("metadata/").map_err(|e| bad(e.to_string()))?;
    let targets = base.join("targets/").map_err(|e| bad(e.to_string()))?;
    Ok((metadata, targets))
}

/// Whether a target name is a plain file name abupdate publishes and fetches.
pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Loads and verifies the channel at `channel` from the pinned `root` metadata, with the
/// datastore `seen` from earlier loads. Returns the verified metadata and the datastore to
/// keep (only a successful load changes it).
pub fn load(channel: &str, root: &[u8], seen: &Datastore) -> Result<(Verified, Datastore), Error> {
    let (metadata_url, targets_url) = base_urls(channel)?;
    let dir = tempfile::tempdir().map_err(Error::io("create a temporary directory", "/tmp"))?;
    for (name, bytes) in seen {
        if valid_target_name(name) {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).map_err(Error::io("write", &p))?;
        }
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::Invalid(format!("set up an HTTP client: {e}")))?;
    let rt = runtime()?;
    let repo = rt
        .block_on(
            RepositoryLoader::new(&root, metadata_url, targets_url.clone())
                .transport(HttpTransport { client })
                .datastore(dir.path())
                .expiration_enforcement(ExpirationEnforcement::Safe)
                .load(),
        )
        .map_err(|e| Error::from_client(channel, e))?;
    let verified = verified(channel, &repo, &targets_url);
    let kept = read_datastore(dir.path())?;
    Ok((verified, kept))
}

/// Reads every file of a datastore directory.
pub(crate) fn read_datastore(dir: &Path) -> Result<Datastore, Error> {
    let mut out = Datastore::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("read the directory", dir))? {
        let entry = entry.map_err(Error::io("read the directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if valid_target_name(&name) && entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).map_err(Error::io("read", entry.path()))?;
            out.insert(name, bytes);
        }
    }
    Ok(out)
}

fn verified(channel: &str, repo: &tough::Repository, targets_url: &Url) -> Verified {
    let consistent = repo.root().signed.consistent_snapshot;
    let mut releases = Vec::new();
    let mut ignored = Vec::new();
    for (name, target) in &repo.targets().signed.targets {
        let name = name.raw().to_string();
        let skip = |reason: String| Ignored {
            name: name.clone(),
            reason,
        };
        if !valid_target_name(&name) {
            ignored.push(skip("not a plain file name".into()));
            continue;
        }
        let Some(custom) = target.custom.get(CUSTOM_KEY) else {
            ignored.push(skip(format!("no \"{CUSTOM_KEY}\" release metadata")));
            continue;
        };
        let meta: ReleaseMeta = match serde_json::from_value(custom.clone()) {
            Ok(m) => m,
            Err(e) => {
                ignored.push(skip(format!("unreadable release metadata: {e}")));
                continue;
            }
        };
        if let Err(e) = crate::wave::validate(&meta.waves) {
            ignored.push(skip(format!("bad wave schedule: {e}")));
            continue;
        }
        let sha256 = hex(target.hashes.sha256.as_ref());
        let file = if consistent {
            format!("{sha256}.{name}")
        } else {
            name.clone()
        };
        let Ok(url) = targets_url.join(&file) else {
            ignored.push(skip("cannot form its URL".into()));
            continue;
        };
        releases.push(Release {
            name,
            length: target.length,
            sha256,
            url: url.to_string(),
            meta,
        });
    }
    ignored.sort_by(|a, b| a.name.cmp(&b.name));
    let expires = [
        repo.root().signed.expires,
        repo.timestamp().signed.expires,
        repo.snapshot().signed.expires,
        repo.targets().signed.expires,
    ]
    .into_iter()
    .min()
    .unwrap_or(Timestamp::MIN);
    Verified {
        url: channel.to_string(),
        releases,
        ignored,
        root_version: repo.root().signed.version.get(),
        timestamp_version: repo.timestamp().signed.version.get(),
        snapshot_version: repo.snapshot().signed.version.get(),
        targets_version: repo.targets().signed.version.get(),
        expires,
    }
}

/// Lowercase hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        let (m, t) = base_urls("http://127.0.0.1:8080/stable").expect("valid");
        assert_eq!(m.as_str(), "http://127.0.0.1:8080/stable/metadata/");
        assert_eq!(t.as_str(), "http://127.0.0.1:8080/stable/targets/");
        let (m, _) = base_urls("file:///srv/channel/").expect("valid");
        assert_eq!(m.as_str(), "file:///srv/channel/metadata/");
        assert!(base_urls("not a url").is_err());
        assert!(valid_target_name("debian-13.1.0.img.zst"));
        for bad in ["", ".hidden", "a/b", "..", "a b", "ä.img"] {
            assert!(!valid_target_name(bad), "{bad:?}");
        }
    }
}
