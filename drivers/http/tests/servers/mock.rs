//! Against a scripted server: the framings and connection behaviours a
//! real server may use, and the ways an untrusted one may misbehave.

use crate::common::*;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// 200 KiB of pattern 3.
fn data() -> Vec<u8> {
    pattern(200 * 1024, 3)
}

/// GET requests the mock saw.
fn gets(mock: &Mock) -> Vec<Req> {
    let requests = mock.requests.lock().unwrap();
    requests
        .iter()
        .filter(|r| r.method == "GET")
        .cloned()
        .collect()
}

/// Splits a response into its head and body.
fn split(response: &[u8]) -> (String, Vec<u8>) {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (
        String::from_utf8_lossy(&response[..end]).into_owned(),
        response[end..].to_vec(),
    )
}

#[test]
fn chunked_bodies() {
    let data = data();
    let served = data.clone();
    let mock = Mock::start(move |req| {
        let response = answer(&served, req);
        if req.method == "HEAD" {
            return Reply::Send(response);
        }
        let (head, body) = split(&response);
        let head = head.replace("Content-Length", "Transfer-Encoding: chunked\r\nX-Was");
        let mut out = head.into_bytes();
        for piece in body.chunks(777) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: y\r\n\r\n");
        Reply::Send(out)
    });
    let store = open(&mock.url("x"), &[("readahead", "4k".into())]).unwrap();
    for (offset, len) in [(0, 100), (5000, 70_000), (200 * 1024 - 3, 10), (1, 4096)] {
        let got = read(&*store, offset as u64, len).unwrap();
        let end = (offset + len).min(data.len());
        assert!(got == data[offset..end], "at {offset}");
    }
    assert_eq!(mock.connections.load(Ordering::SeqCst), 1, "kept alive");
}

#[test]
fn connection_close_after_every_response() {
    let data = data();
    let served = data.clone();
    let mock = Mock::start(move |req| {
        let response = answer(&served, req);
        let (head, body) = split(&response);
        let mut out = head
            .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
            .into_bytes();
        out.extend_from_slice(&body);
        Reply::SendClose(out)
    });
    let store = open(&mock.url("x"), &[("readahead", "0".into())]).unwrap();
    for offset in (0..data.len()).step_by(30_000) {
        assert!(read(&*store, offset as u64, 1000).unwrap() == data[offset..offset + 1000]);
    }
    assert_eq!(
        mock.connections.load(Ordering::SeqCst),
        1 + gets(&mock).len()
    );
}

#[test]
fn responses_framed_by_the_end_of_the_connection() {
    let data = data();
    let served = data.clone();
    let mock = Mock::start(move |req| {
        let response = answer(&served, req);
        if req.method == "HEAD" {
            return Reply::Send(response);
        }
        let (head, body) = split(&response);
        let head = head
            .replace("HTTP/1.1", "HTTP/1.0")
            .replace("Content-Length", "X-Was");
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        Reply::SendClose(out)
    });
    let store = open(&mock.url("x"), &[("readahead", "0".into())]).unwrap();
    for offset in [0usize, 1, 100_000] {
        assert!(read(&*store, offset as u64, 5000).unwrap() == data[offset..offset + 5000]);
    }
}

#[test]
fn kept_alive_connections_the_server_dropped_are_retried() {
    let data = data();
    let served = data.clone();
    // One request per connection, without saying so.
    let mock = Mock::start(move |req| Reply::SendClose(answer(&served, req)));
    let store = open(&mock.url("x"), &[("readahead", "0".into())]).unwrap();
    for offset in [0usize, 10_000, 20_000, 150_000] {
        assert!(read(&*store, offset as u64, 4096).unwrap() == data[offset..offset + 4096]);
    }
}

#[test]
fn ignored_ranges() {
    let data = pattern(1000, 4);
    let served = data.clone();
    let mock = Mock::start(move |req| {
        if req.method == "HEAD" {
            return Reply::Send(answer(&served, req));
        }
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            served.len()
        )
        .into_bytes();
        out.extend_from_slice(&served);
        Reply::Send(out)
    });
    // The whole file at once is fine (the readahead covers it all)…
    let store = open(&mock.url("x"), &[]).unwrap();
    assert_eq!(read(&*store, 0, 10).unwrap(), data[..10]);
    // …a part of it is not.
    let store = open(&mock.url("x"), &[("readahead", "0".into())]).unwrap();
    let error = read(&*store, 10, 10).unwrap_err();
    assert_eq!(
        (error.errno, error.message.as_str()),
        (5, "Input/output error")
    );
}

#[test]
fn wrong_ranges_and_lengths() {
    let data = data();
    for mangle in [
        "bytes 1-", // off by one
        "missing",  // no Content-Range at all
        "length",   // Content-Length longer than the range
        "status",   // a 416
    ] {
        let served = data.clone();
        let mock = Mock::start(move |req| {
            let response = answer(&served, req);
            if req.method == "HEAD" {
                return Reply::Send(response);
            }
            let (a, b) = req.range.unwrap();
            let (head, body) = split(&response);
            let head = match mangle {
                "bytes 1-" => head.replace(&format!("bytes {a}-"), &format!("bytes {}-", a + 1)),
                "missing" => head.replace("Content-Range", "X-Range"),
                "length" => head.replace(
                    &format!("Content-Length: {}", b - a + 1),
                    &format!("Content-Length: {}", b - a + 2),
                ),
                _ => "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n".into(),
            };
            let mut out = head.into_bytes();
            if mangle != "status" {
                out.extend_from_slice(&body);
                out.push(b'!');
            }
            Reply::Send(out)
        });
        let store = open(&mock.url("x"), &[("timeout", "2".into())]).unwrap();
        let error = read(&*store, 100, 1000).unwrap_err();
        assert_eq!(error.errno, 5, "{mangle}");
    }
}

#[test]
fn a_body_cut_short_is_an_error_not_short_data() {
    let data = data();
    let served = data.clone();
    let mock = Mock::start(move |req| {
        let response = answer(&served, req);
        if req.method == "HEAD" {
            return Reply::Send(response);
        }
        let half = response.len() / 2;
        Reply::SendClose(response[..half].to_vec())
    });
    let store = open(&mock.url("x"), &[]).unwrap();
    for len in [100, 100_000] {
        let error = read(&*store, 0, len).unwrap_err();
        assert_eq!(error.message.as_str(), "Input/output error");
    }
}

#[test]
fn a_silent_server_times_out() {
    let mock = Mock::start(|_| Reply::Silence);
    let start = Instant::now();
    let message = open_error(&mock.url("x"), &[("timeout", Value::from(1))]);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        message.starts_with("CURL: Error opening file: Operation timed out after ")
            && message.ends_with(" milliseconds with 0 bytes received"),
        "{message}"
    );
}

#[test]
fn a_trickling_server_times_out() {
    let data = data();
    let served = data.clone();
    let mock = Mock::start(move |req| {
        let response = answer(&served, req);
        if req.method == "HEAD" {
            return Reply::Send(response);
        }
        Reply::Trickle(
            response.chunks(50).map(<[u8]>::to_vec).collect(),
            Duration::from_millis(100),
        )
    });
    let store = open(&mock.url("x"), &[("timeout", Value::from(1))]).unwrap();
    let start = Instant::now();
    assert!(read(&*store, 0, 4096).is_err());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn huge_headers_are_refused() {
    let mock = Mock::start(|_| {
        let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..20_000 {
            out.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        Reply::SendClose(out)
    });
    let message = open_error(&mock.url("x"), &[]);
    assert!(message.contains("Too large response headers"), "{message}");
}

#[test]
fn head_answers_without_size_or_ranges() {
    let mock =
        Mock::start(|_| Reply::Send(b"HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\n\r\n".to_vec()));
    assert_eq!(
        open_error(&mock.url("x"), &[]),
        "CURL: Error opening file: Server didn't report file size."
    );
    let mock =
        Mock::start(|_| Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec()));
    assert_eq!(
        open_error(&mock.url("x"), &[]),
        "CURL: Error opening file: Server does not support 'range' (byte ranges)."
    );
    // A redirect status without a Location is the final answer, as in curl.
    let mock =
        Mock::start(|_| Reply::Send(b"HTTP/1.1 302 Found\r\nContent-Length: 5\r\n\r\n".to_vec()));
    assert_eq!(
        open_error(&mock.url("x"), &[]),
        "CURL: Error opening file: Server does not support 'range' (byte ranges)."
    );
    let mock =
        Mock::start(|_| Reply::Send(b"HTTP/1.1 301 Moved\r\nLocation: ftp://h/x\r\n\r\n".to_vec()));
    assert_eq!(
        open_error(&mock.url("x"), &[]),
        "CURL: Error opening file: Protocol \"ftp\" not supported"
    );
    let mock = Mock::start(|_| Reply::SendClose(b"garbage\r\n\r\n".to_vec()));
    let message = open_error(&mock.url("x"), &[]);
    assert!(
        message.starts_with("CURL: Error opening file: Weird server reply"),
        "{message}"
    );
    let mock = Mock::start(|_| Reply::SendClose(Vec::new()));
    assert_eq!(
        open_error(&mock.url("x"), &[]),
        "CURL: Error opening file: Empty reply from server"
    );
}

#[test]
fn a_huge_size_allocates_nothing_big() {
    let size: u64 = 1 << 62;
    let byte = |i: u64| (i % 251) as u8;
    let mock = Mock::start(move |req| {
        if req.method == "HEAD" {
            return Reply::Send(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n\r\n"
                )
                .into_bytes(),
            );
        }
        let (a, b) = req.range.unwrap();
        let mut out = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n",
            b - a + 1
        )
        .into_bytes();
        out.extend((a..=b).map(byte));
        Reply::Send(out)
    });
    let store = open(&mock.url("x"), &[]).unwrap();
    assert_eq!(store.len().unwrap(), size);
    let got = read(&*store, size - 100, 1000).unwrap();
    assert_eq!(got, (size - 100..size).map(byte).collect::<Vec<u8>>());
    let (a, b) = gets(&mock)[0].range.unwrap();
    assert_eq!((a, b), (size - 100, size - 1));
}

#[test]
fn readahead_serves_small_sequential_reads() {
    let data = data();
    let served = data.clone();
    let mock = Mock::start(move |req| Reply::Send(answer(&served, req)));
    let store = open(&mock.url("x"), &[("readahead", "64k".into())]).unwrap();
    for i in 0..128usize {
        let at = i * 512;
        assert!(read(&*store, at as u64, 512).unwrap() == data[at..at + 512]);
    }
    assert_eq!(gets(&mock).len(), 1);
    assert_eq!(gets(&mock)[0].range, Some((0, 65535)));
    // Large reads go straight through, exactly as asked.
    assert!(read(&*store, 100_000, 70_000).unwrap() == data[100_000..170_000]);
    assert_eq!(gets(&mock).last().unwrap().range, Some((100_000, 169_999)));
    // Without readahead, every read is a request of its own.
    let before = gets(&mock).len();
    let store = open(&mock.url("x"), &[("readahead", Value::from(0))]).unwrap();
    for i in 0..4u64 {
        read(&*store, i * 512, 512).unwrap();
    }
    assert_eq!(gets(&mock).len(), before + 4);
}

#[test]
fn parallel_readers_share_a_few_connections() {
    let data = data();
    let served = data.clone();
    let mock = Mock::start(move |req| {
        std::thread::sleep(Duration::from_millis(5));
        Reply::Send(answer(&served, req))
    });
    let store = open(&mock.url("x"), &[("readahead", "0".into())]).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8usize {
            let (store, data) = (&store, &data);
            scope.spawn(move || {
                for i in 0..10usize {
                    let at = (t * 20_000 + i * 1000) % (data.len() - 4096);
                    assert!(read(&**store, at as u64, 4096).unwrap() == data[at..at + 4096]);
                }
            });
        }
    });
    // More than one connection shows requests ran in parallel; no more
    // than the pool's limit were opened.
    let connections = mock.connections.load(Ordering::SeqCst);
    assert!((2..=4).contains(&connections), "{connections} connections");
}

#[test]
fn cookie_and_credentials_are_sent_to_their_origin_only() {
    let data = data();
    let other = {
        let served = data.clone();
        Mock::start(move |req| Reply::Send(answer(&served, req)))
    };
    let target = other.url("y");
    let first = Mock::start(move |_| {
        Reply::Send(
            format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
        )
    });
    let url = first.url("x").replace("http://", "http://us%65r:pw@");
    let store = open(&url, &[("cookie", "k=v; k2=v2".into())]).unwrap();
    assert!(read(&*store, 0, 10).unwrap() == data[..10]);
    let seen = first.requests.lock().unwrap()[0].head.clone();
    assert!(seen.contains("\r\nCookie: k=v; k2=v2\r\n"), "{seen}");
    // base64("user:pw")
    assert!(
        seen.contains("\r\nAuthorization: Basic dXNlcjpwdw==\r\n"),
        "{seen}"
    );
    for req in other.requests.lock().unwrap().iter() {
        assert!(req.head.contains("\r\nCookie: k=v; k2=v2\r\n"));
        assert!(!req.head.contains("Authorization"), "{}", req.head);
        assert_eq!(req.path, "/y");
    }
    let store = open(&other.url("y"), &[("username", "me".into())]).unwrap();
    read(&*store, 0, 10).unwrap();
    let last = other.requests.lock().unwrap().last().unwrap().head.clone();
    assert!(last.contains("\r\nAuthorization: Basic bWU6\r\n"), "{last}");
    assert!(last.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", other.port)));
}
