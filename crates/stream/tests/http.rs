//! HTTP sources against a local test server: plain download, resume with 206, resume when
//! the server answers 200, changed file, retries exhausted, status errors, small text files.

#![allow(clippy::unwrap_used)]

mod common;

use abupdate_stream::{
    copy, fetch_text, parse_sha256sums, CopyOptions, CopyStats, Error, ErrorKind, NoProgress,
    OpenOptions, Source, TEXT_LIMIT,
};
use common::{quick_opts, sample, serve, sha256_hex, zstd, HttpServer, ServeOptions};

fn download(server: &HttpServer, path: &str) -> (Result<CopyStats, Error>, Vec<u8>) {
    let src = Source::parse(&server.url(path))
        .unwrap()
        .open(&quick_opts())
        .unwrap();
    let mut sink = Vec::new();
    let res = copy(src, &mut sink, &CopyOptions::default(), &mut NoProgress);
    (res, sink)
}

#[test]
fn plain_download_with_digests() {
    let image = sample(3 << 20);
    let published = zstd(&image);
    let server = serve(
        "/img/debian.img.zst",
        published.clone(),
        Some("\"v1\""),
        ServeOptions::default(),
    );
    let src = Source::parse(&server.url("/img/debian.img.zst")).unwrap();
    assert_eq!(src.file_name().as_deref(), Some("debian.img.zst"));
    let opened = src.open(&quick_opts()).unwrap();
    assert_eq!(opened.len(), Some(published.len() as u64));
    let mut sink = Vec::new();
    let opts = CopyOptions {
        image_sha256: true,
        ..CopyOptions::default()
    };
    let stats = copy(opened, &mut sink, &opts, &mut NoProgress).unwrap();
    assert!(sink == image);
    assert_eq!(stats.source_sha256, sha256_hex(&published));
    assert_eq!(stats.image_sha256, Some(sha256_hex(&image)));
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn dropped_connection_resumes_with_range() {
    let image = sample(5 << 20);
    let server = serve(
        "/a.img",
        image.clone(),
        Some("\"abc\""),
        ServeOptions {
            drops: vec![1_500_000],
            ..ServeOptions::default()
        },
    );
    let (res, sink) = download(&server, "/a.img");
    let stats = res.unwrap();
    assert!(sink == image, "image differs");
    assert_eq!(stats.source_sha256, sha256_hex(&image));
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].range.as_deref(), Some("bytes=1500000-"));
    assert_eq!(seen[1].if_range.as_deref(), Some("\"abc\""));
    assert_eq!(seen[1].status, 206);
}

#[test]
fn several_drops_each_resume() {
    let image = sample(3 << 20);
    let published = zstd(&image);
    // More drops than max_retries: the count restarts whenever data arrives.
    let server = serve(
        "/a.img.zst",
        published.clone(),
        Some("\"abc\""),
        ServeOptions {
            drops: vec![1000, 200_000, 7, 300_000, 1],
            ..ServeOptions::default()
        },
    );
    let (res, sink) = download(&server, "/a.img.zst");
    let stats = res.unwrap();
    assert!(sink == image);
    assert_eq!(stats.source_sha256, sha256_hex(&published));
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn server_ignoring_range_rereads_from_start() {
    let image = sample(4 << 20);
    let published = zstd(&image);
    let server = serve(
        "/b.img.zst",
        published.clone(),
        Some("\"e1\""),
        ServeOptions {
            drops: vec![published.len() as u64 / 2],
            ignore_range: true,
            ..ServeOptions::default()
        },
    );
    let (res, sink) = download(&server, "/b.img.zst");
    let stats = res.unwrap();
    assert!(sink == image, "image differs");
    assert_eq!(stats.source_bytes, published.len() as u64);
    assert_eq!(stats.source_sha256, sha256_hex(&published));
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].status, 200);
}

#[test]
fn no_validator_still_resumes() {
    let image = sample(2 << 20);
    let server = serve(
        "/c.img",
        image.clone(),
        None,
        ServeOptions {
            drops: vec![100_000],
            ignore_range: true,
            ..ServeOptions::default()
        },
    );
    let (res, sink) = download(&server, "/c.img");
    res.unwrap();
    assert!(sink == image);
    assert_eq!(server.requests()[1].if_range, None);
}

#[test]
fn changed_etag_is_source_changed() {
    let server = serve(
        "/d.img",
        sample(2 << 20),
        Some("\"v1\""),
        ServeOptions {
            drops: vec![500_000],
            etag_after_first: Some("\"v2\"".to_string()),
            ..ServeOptions::default()
        },
    );
    let (res, _) = download(&server, "/d.img");
    let err = res.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::SourceChanged {
                offset: 500_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"v2\""), "{err}");
    // The server answered the If-Range mismatch with 200 and the new ETag.
    assert_eq!(server.requests()[1].status, 200);
}

#[test]
fn changed_etag_on_206_is_source_changed() {
    let server = serve(
        "/d.img",
        sample(2 << 20),
        Some("\"v1\""),
        ServeOptions {
            drops: vec![500_000],
            etag_after_first: Some("\"v2\"".to_string()),
            ignore_if_range: true,
            ..ServeOptions::default()
        },
    );
    let (res, _) = download(&server, "/d.img");
    let err = res.unwrap_err();
    assert!(matches!(err, Error::SourceChanged { .. }), "{err:?}");
    assert_eq!(server.requests()[1].status, 206);
}

#[test]
fn retries_exhausted_is_an_io_error() {
    let server = serve(
        "/e.img",
        sample(1 << 20),
        Some("\"v1\""),
        ServeOptions {
            drops: vec![1000, 0, 0, 0, 0, 0],
            ..ServeOptions::default()
        },
    );
    let (res, _) = download(&server, "/e.img");
    let err = res.unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("/e.img"), "{err}");
    // One first request plus max_retries (3) resumes.
    assert_eq!(server.requests().len(), 4);
}

#[test]
fn http_status_error_names_url_and_status() {
    let server = HttpServer::builder().start().unwrap();
    let err = Source::parse(&server.url("/missing"))
        .unwrap()
        .open(&quick_opts())
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("/missing") && msg.contains("404"), "{msg}");
}

#[test]
fn connection_refused_is_an_io_error() {
    // Bind and drop to get a port that is (very likely) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let src = Source::parse(&format!("http://127.0.0.1:{port}/x.img")).unwrap();
    let err = src.open(&quick_opts()).err().unwrap();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Io);
}

#[test]
fn fetch_and_parse_sha256sums() {
    let hex = sha256_hex(b"image");
    let text = format!(
        "{}  other.img.zst\n{hex} *debian-13.img.zst\n",
        sha256_hex(b"x")
    );
    let server = serve(
        "/SHA256SUMS",
        text.clone().into_bytes(),
        None,
        ServeOptions::default(),
    );
    let sums = Source::parse(&server.url("/SHA256SUMS")).unwrap();
    let fetched = fetch_text(&sums, &quick_opts()).unwrap();
    assert_eq!(fetched, text);
    let image = Source::parse(&server.url("/images/debian-13.img.zst")).unwrap();
    let name = image.file_name().unwrap();
    assert_eq!(parse_sha256sums(&fetched, &name).unwrap(), hex);
    assert!(matches!(
        parse_sha256sums(&fetched, "debian-12.img.zst"),
        Err(Error::ChecksumMissing { .. })
    ));
}

#[test]
fn fetch_text_refuses_large_and_binary_files() {
    let server = serve(
        "/big",
        vec![b'a'; TEXT_LIMIT as usize + 1],
        None,
        ServeOptions::default(),
    );
    let err = fetch_text(&Source::parse(&server.url("/big")).unwrap(), &quick_opts()).unwrap_err();
    assert!(matches!(err, Error::TextTooLarge { .. }), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("SHA256SUMS");
    std::fs::write(&path, [0xff, 0xfe, 0]).unwrap();
    let err = fetch_text(
        &Source::parse(path.to_str().unwrap()).unwrap(),
        &quick_opts(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotText { .. }), "{err:?}");
}

#[test]
fn plain_http_needs_the_opt_in() {
    let server = serve("/a.img", sample(1000), None, ServeOptions::default());
    let src = Source::parse(&server.url("/a.img")).unwrap();
    let err = src.open(&OpenOptions::default()).err().unwrap();
    assert!(matches!(err, Error::InsecureTransport { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Input);
    assert!(server.requests().is_empty(), "nothing was requested");
}

#[test]
fn redirect_chain_is_cut() {
    let server = serve("/a.img", sample(1000), None, ServeOptions::default());
    let src = Source::parse(&server.url("/loop/0")).unwrap();
    let err = src.open(&quick_opts()).err().unwrap();
    assert!(matches!(err, Error::Redirect { .. }), "{err}");
    assert!(err.to_string().contains("redirects"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Refused);
    // The first request and five redirects, no retry of a refused chain.
    assert_eq!(server.requests().len(), 6, "{:?}", server.requests());
}

#[test]
fn content_length_above_the_bound_is_refused_before_reading() {
    let server = serve("/big.img", sample(10_000), None, ServeOptions::default());
    let src = Source::parse(&server.url("/big.img")).unwrap();
    let opts = OpenOptions {
        max_source_bytes: Some(9_999),
        ..quick_opts()
    };
    let err = src.open(&opts).err().unwrap();
    assert!(
        matches!(
            err,
            Error::SourceTooLarge {
                len: Some(10_000),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::TooLarge);
}
