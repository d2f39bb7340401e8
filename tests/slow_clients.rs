//! The HTTP server edge against slow and idle clients, on both engines: the header read
//! timeout, the keep-alive idle timeout, the cap on open connections, and graceful
//! shutdown with connections open. Raw TCP sockets play the clients.

mod common;

use std::time::Duration;

use common::{ENGINES, Engine, TestApp, TestDb};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen within a second or two.
const OUTER: Duration = Duration::from_secs(15);

const HEALTH: &[u8] = b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\n\r\n";
const HALF_HEAD: &[u8] = b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\nX-Slow: ";

async fn app(engine: Engine, header_secs: u64, idle_secs: u64, max_connections: usize) -> (TestDb, TestApp) {
    let db = TestDb::new(engine).await;
    let mut config = db.app_config();
    config.http_header_read_timeout = Duration::from_secs(header_secs);
    config.http_idle_timeout = Duration::from_secs(idle_secs);
    config.http_max_connections = max_connections;
    let app = TestApp::spawn(config).await;
    (db, app)
}

/// Reads until the server closes the socket (end of file or reset); false if it is still
/// open after [`OUTER`].
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(OUTER, closed).await.is_ok()
}

/// Reads one whole HTTP/1.1 response (head and `Content-Length` body); its status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("content length"));
                if data.len() >= end + 4 + length {
                    let status = head[9..12].parse().expect("status");
                    return (status, String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned());
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the connection closed inside a response: {}", String::from_utf8_lossy(&data));
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(OUTER, read).await.expect("a whole response")
}

/// The server's count of open client connections.
fn open_connections(app: &TestApp) -> i64 {
    let text = app.state.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix("mana_core_auth_http_connections_open "))
        .map_or(-1, |v| v.trim().parse().expect("gauge value"))
}

#[tokio::test]
async fn sockets_that_send_half_a_request_head_or_nothing_are_closed_after_the_header_timeout() {
    for engine in ENGINES {
        // The idle timeout is far away: only the header timeout can close these.
        let (_db, app) = app(engine, 1, 600, 10_000).await;
        let mut silent = TcpStream::connect(app.addr).await.expect("connect");
        let mut half = TcpStream::connect(app.addr).await.expect("connect");
        half.write_all(HALF_HEAD).await.expect("write");
        // A slow-loris client: one byte of an endless header every 100 ms.
        let trickle = TcpStream::connect(app.addr).await.expect("connect");
        let (mut trickle_read, mut trickle_write) = trickle.into_split();
        let writer = tokio::spawn(async move {
            trickle_write.write_all(HALF_HEAD).await.expect("write");
            for _ in 0..300 {
                if trickle_write.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });

        assert!(closed_by_server(&mut silent).await, "{engine:?}: a silent socket stays open");
        assert!(closed_by_server(&mut half).await, "{engine:?}: half a head stays open");
        let mut buf = [0u8; 64];
        let trickled = tokio::time::timeout(OUTER, async {
            loop {
                match trickle_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(trickled.is_ok(), "{engine:?}: a head trickled byte by byte stays open");
        writer.abort();

        // A normal client is unaffected.
        let health = app.client.get(app.url("/api/v1/health")).send().await.expect("request");
        assert_eq!(health.status(), StatusCode::OK);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_kept_alive_connection_may_idle_longer_than_the_header_timeout() {
    for engine in ENGINES {
        let (_db, app) = app(engine, 1, 30, 10_000).await;
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        stream.write_all(HEALTH).await.expect("write");
        assert_eq!(read_response(&mut stream).await.0, 200, "{engine:?}");
        // Silent for more than the header timeout, well inside the idle timeout.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stream.write_all(HEALTH).await.expect("write");
        let (status, body) = read_response(&mut stream).await;
        assert_eq!(status, 200, "{engine:?}: the same connection serves again: {body}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    for engine in ENGINES {
        // The header timeout is far away: only the idle timeout can close it.
        let (_db, app) = app(engine, 600, 1, 10_000).await;
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        stream.write_all(HEALTH).await.expect("write");
        assert_eq!(read_response(&mut stream).await.0, 200, "{engine:?}");
        assert!(closed_by_server(&mut stream).await, "{engine:?}: an idle kept-alive connection stays open");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_disconnected_after_the_idle_timeout() {
    for engine in ENGINES {
        let (_db, app) = app(engine, 600, 1, 10_000).await;
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        // Far more answer bytes than the socket buffers hold, and never a read.
        let request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: test\r\n\r\n";
        stream.write_all(&request.repeat(2000)).await.expect("write");
        let accepted = common::eventually(OUTER, || async { open_connections(&app) == 1 }).await;
        assert!(accepted, "{engine:?}: the connection is accepted");
        let closed = common::eventually(OUTER, || async { open_connections(&app) == 0 }).await;
        assert!(closed, "{engine:?}: a stalled answer holds the connection");
        drop(stream);
        app.stop().await;
    }
}

#[tokio::test]
async fn five_hundred_idle_or_slow_sockets_do_not_stop_other_clients() {
    for engine in ENGINES {
        let (_db, app) = app(engine, 600, 600, 10_000).await;
        let mut held = Vec::new();
        for i in 0..500 {
            let mut stream = TcpStream::connect(app.addr).await.expect("connect");
            if i % 2 == 1 {
                stream.write_all(HALF_HEAD).await.expect("write");
            }
            held.push(stream);
        }
        let accepted = common::eventually(OUTER, || async { open_connections(&app) >= 500 }).await;
        assert!(accepted, "{engine:?}: the server holds the 500 sockets ({})", open_connections(&app));

        let health = tokio::time::timeout(OUTER, app.client.get(app.url("/api/v1/health")).send())
            .await
            .expect("an answer while 500 sockets are held")
            .expect("request");
        assert_eq!(health.status(), StatusCode::OK, "{engine:?}");
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        stream.write_all(HEALTH).await.expect("write");
        assert_eq!(read_response(&mut stream).await.0, 200, "{engine:?}");
        drop(held);
        app.stop().await;
    }
}

#[tokio::test]
async fn above_the_connection_cap_a_new_connection_waits_and_is_then_served_whole() {
    for engine in ENGINES {
        let (_db, app) = app(engine, 600, 600, 3).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(app.addr).await.expect("connect"));
        }
        let full = common::eventually(OUTER, || async { open_connections(&app) == 3 }).await;
        assert!(full, "{engine:?}: the three sockets are accepted ({})", open_connections(&app));

        // The kernel completes the handshake; the server does not accept it yet.
        let mut waiting = TcpStream::connect(app.addr).await.expect("connect");
        waiting.write_all(HEALTH).await.expect("write");
        let mut buf = [0u8; 64];
        // This can only fail if the server answers above its cap.
        let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf)).await;
        assert!(early.is_err(), "{engine:?}: answered above the cap: {early:?}");
        assert_eq!(open_connections(&app), 3, "{engine:?}");

        // A slot frees: the waiting connection is accepted and gets its whole answer.
        drop(idle.pop());
        let (status, body) = read_response(&mut waiting).await;
        assert_eq!(status, 200, "{engine:?}: {body}");
        assert!(body.contains("\"status\":\"ok\""), "{engine:?}: {body}");
        assert!(open_connections(&app) <= 3, "{engine:?}");
        drop(idle);
        app.stop().await;
    }
}

#[tokio::test]
async fn graceful_shutdown_closes_idle_connections_and_finishes() {
    for engine in ENGINES {
        let (_db, app) = app(engine, 600, 600, 10_000).await;
        let mut kept = TcpStream::connect(app.addr).await.expect("connect");
        kept.write_all(HEALTH).await.expect("write");
        assert_eq!(read_response(&mut kept).await.0, 200, "{engine:?}");
        let mut silent = TcpStream::connect(app.addr).await.expect("connect");
        let accepted = common::eventually(OUTER, || async { open_connections(&app) == 2 }).await;
        assert!(accepted, "{engine:?}: both sockets are accepted ({})", open_connections(&app));
        let stopped = tokio::time::timeout(OUTER, app.stop()).await;
        assert!(stopped.is_ok(), "{engine:?}: shutdown waits on idle connections");
        assert!(closed_by_server(&mut kept).await, "{engine:?}");
        assert!(closed_by_server(&mut silent).await, "{engine:?}");
    }
}
