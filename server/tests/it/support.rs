//! Shared test helpers: a real server on an ephemeral loopback port and a real WebSocket
//! client (tokio-tungstenite, an implementation independent of the server's fastwebsockets).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tickrelay_protocol::{
    ClientMessage, Codec, Member, Payload, PlayerId, ServerMessage, Snapshot,
};
use tickrelay_server::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long any single expected message may take before the test fails.
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`wait_until`] waits for a condition: generous, because CI runs a debug build on
/// two loaded cores; a passing test returns as soon as the condition holds.
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`wait_until`] checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` every 20 ms until it holds; fails the test (saying `what` was awaited) if
/// it still does not after `timeout`. Use it instead of sleeping before an assertion.
pub(crate) async fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not the case after {timeout:?}: {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), tickrelay_server::RunError>>,
}

impl TestServer {
    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// GET `path` over a plain TCP connection; returns (status, body).
    pub(crate) async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await
    }

    /// Waits (up to `WAIT_TIMEOUT`) until series `name` exists and reaches `at_least`: the
    /// server counts a disconnect only once it has torn the connection down, after the close
    /// handshake.
    pub(crate) async fn wait_metric(&self, name: &str, at_least: f64) {
        wait_metric_at(self.addr, name, at_least).await;
    }

    /// The value of one series as `/metrics` shows it (see [`metric_at`]).
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        metric_at(self.addr, name).await
    }
}

/// The value of one series as `/metrics` at `addr` (plain HTTP) shows it, e.g.
/// `tickrelay_snapshots_coalesced_total` or `tickrelay_disconnects_total{reason="leave"}`;
/// None if the exposition has no such series (a labelled series appears only once counted).
pub(crate) async fn metric_at(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics", &[]).await;
    let (_, value) = body
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == name)?;
    Some(
        value
            .parse()
            .unwrap_or_else(|err| panic!("{name} has the value {value:?}: {err}")),
    )
}

/// Waits (up to `WAIT_TIMEOUT`) until series `name` at `addr` exists and reaches `at_least`.
pub(crate) async fn wait_metric_at(addr: SocketAddr, name: &str, at_least: f64) {
    let what = format!("{name} >= {at_least}");
    wait_until(WAIT_TIMEOUT, &what, async || {
        metric_at(addr, name)
            .await
            .is_some_and(|value| value >= at_least)
    })
    .await;
}

/// Test defaults: the embedded defaults, with a fast tick so tests finish quickly.
pub(crate) fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tick_hz: 50,
        ..Config::default()
    }
}

pub(crate) async fn spawn_server(config: Config) -> TestServer {
    let listener = tickrelay_server::bind(config.listen).expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tickrelay_server::run(listener, config, shutdown.clone()));
    TestServer {
        addr,
        shutdown,
        task,
    }
}

/// A server whose admin endpoints are on a listener of their own; returns the admin address
/// beside the server (whose `addr` is the public one).
pub(crate) async fn spawn_server_with_admin(config: Config) -> (TestServer, SocketAddr) {
    let public = tickrelay_server::bind(config.listen).expect("bind loopback");
    let admin = tickrelay_server::bind(config.listen).expect("bind loopback");
    let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let listeners = tickrelay_server::Listeners {
        public,
        admin: Some(admin),
    };
    let task = tokio::spawn(tickrelay_server::serve(listeners, config, shutdown.clone()));
    let server = TestServer {
        addr,
        shutdown,
        task,
    };
    (server, admin_addr)
}

pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = http_get_with_headers(addr, path, headers).await;
    (status, body)
}

/// POST (no body) to `path`: (status, body).
pub(crate) async fn http_post(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_post_with_headers(addr, path, &[]).await;
    (status, body)
}

/// POST (no body) to `path` with `headers`: (status, lower-cased header block, body).
pub(crate) async fn http_post_with_headers(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut headers = headers.to_vec();
    headers.push(("Content-Length", "0"));
    http_request(addr, "POST", path, &headers).await
}

/// GET `path` over a plain TCP connection; returns (status, lower-cased header block, body).
pub(crate) async fn http_get_with_headers(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    http_request(addr, "GET", path, headers).await
}

async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("http response in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_owned())
}

/// One frame as a client sends it (masked); `first` is its first byte (FIN, opcode).
pub(crate) fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    tickrelay_protocol::framing::encode_frame(first, payload, Some([0x11, 0x22, 0x33, 0x44]))
}

pub(crate) fn payload(bytes: &[u8]) -> Payload {
    Payload::from(bytes.to_vec())
}

/// A WebSocket client over plain TCP by default, or over any stream (TLS: `tls.rs`).
pub(crate) struct Client<S = MaybeTlsStream<TcpStream>> {
    pub(crate) ws: WebSocketStream<S>,
    pub(crate) codec: Codec,
}

/// What a client saw when its connection ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Closed {
    /// A close frame with a code and a reason.
    Frame(u16, String),
    /// A close frame with an empty payload (no code): the echo of a client's empty close.
    EmptyFrame,
    /// The connection ended (or failed) without any close frame.
    Dropped,
}

impl Client {
    /// Opens a WebSocket asking for `codec`'s subprotocol.
    pub(crate) async fn connect(server: &TestServer, codec: Codec) -> Self {
        Self::connect_to(server.addr, codec).await
    }

    /// Opens a WebSocket to the server at `addr` (e.g. the binary run as a process).
    pub(crate) async fn connect_to(addr: SocketAddr, codec: Codec) -> Self {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(codec.subprotocol()),
        );
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        assert_eq!(
            response.headers().get("Sec-WebSocket-Protocol").unwrap(),
            codec.subprotocol()
        );
        Self { ws, codec }
    }

    /// Connects and joins; returns the client, its player id and the welcome's member list.
    pub(crate) async fn join(
        server: &TestServer,
        codec: Codec,
        lobby: &str,
        name: &str,
    ) -> (Self, PlayerId, Vec<Member>) {
        Self::join_at(server.addr, codec, lobby, name).await
    }

    /// [`Client::join`] on the server at `addr`.
    pub(crate) async fn join_at(
        addr: SocketAddr,
        codec: Codec,
        lobby: &str,
        name: &str,
    ) -> (Self, PlayerId, Vec<Member>) {
        let mut client = Self::connect_to(addr, codec).await;
        let (player_id, members) = client.join_lobby(lobby, name).await;
        (client, player_id, members)
    }

    /// Writes `bytes` into the socket as they are (hand-made frames).
    pub(crate) async fn write_raw(&mut self, bytes: &[u8]) {
        match self.ws.get_mut() {
            MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await.unwrap(),
            _ => unreachable!("tests use plain TCP"),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Sends `join` and waits for the welcome: the player id and the members.
    pub(crate) async fn join_lobby(&mut self, lobby: &str, name: &str) -> (PlayerId, Vec<Member>) {
        self.send_join(lobby, name).await;
        match self.recv().await {
            ServerMessage::Welcome {
                player_id,
                lobby: joined,
                members,
                ..
            } => {
                assert_eq!(joined, lobby);
                (player_id, members)
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, message: &ClientMessage) {
        let bytes = self.codec.encode(message).unwrap();
        let frame = if self.codec.is_text() {
            Message::Text(String::from_utf8(bytes).unwrap().into())
        } else {
            Message::Binary(bytes.into())
        };
        self.ws.send(frame).await.expect("send");
    }

    /// Sends `json` as it is, in a text frame (for a JSON-codec client).
    pub(crate) async fn send_raw_json(&mut self, json: &str) {
        assert!(self.codec.is_text(), "raw JSON on a msgpack connection");
        self.ws
            .send(Message::Text(json.to_owned().into()))
            .await
            .expect("send");
    }

    pub(crate) async fn send_join(&mut self, lobby: &str, name: &str) {
        self.send(&ClientMessage::Join {
            lobby: lobby.into(),
            name: name.into(),
            ticket: None,
            role: None,
            resume: None,
            offset: None,
        })
        .await;
    }

    pub(crate) async fn send_state(&mut self, seq: u64, data: &[u8]) {
        self.send(&ClientMessage::State {
            seq,
            data: payload(data),
        })
        .await;
    }

    /// The next protocol message (pings are answered by tungstenite). Panics on close/timeout.
    pub(crate) async fn recv(&mut self) -> ServerMessage {
        match self.recv_or_close().await {
            Ok(message) => message,
            Err(code) => panic!("unexpected close {code:?}"),
        }
    }

    /// The next protocol message, or the close code (None: no code, or no close frame) if the
    /// connection ends first. Panics on a timeout.
    pub(crate) async fn recv_or_close(&mut self) -> Result<ServerMessage, Option<u16>> {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .expect("message within timeout");
            let Some(Ok(next)) = next else {
                return Err(None);
            };
            match next {
                Message::Binary(bytes) => {
                    assert!(!self.codec.is_text(), "binary frame on a json connection");
                    return Ok(self.codec.decode_server(&bytes).expect("decodable"));
                }
                Message::Text(text) => {
                    assert!(self.codec.is_text(), "text frame on a msgpack connection");
                    return Ok(self
                        .codec
                        .decode_server(text.as_bytes())
                        .expect("decodable"));
                }
                Message::Close(frame) => return Err(frame.map(|frame| frame.code.into())),
                _ => continue,
            }
        }
    }

    /// Skips messages until `pick` returns Some.
    pub(crate) async fn recv_until<T>(
        &mut self,
        mut pick: impl FnMut(ServerMessage) -> Option<T>,
    ) -> T {
        // A stream of snapshots never ends by itself: without a deadline a message that never
        // comes would hang the test instead of failing it.
        let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the awaited message did not come within {WAIT_TIMEOUT:?}"
            );
            if let Some(found) = pick(self.recv().await) {
                return found;
            }
        }
    }

    pub(crate) async fn next_snapshot(&mut self) -> Snapshot {
        self.recv_until(|m| match m {
            ServerMessage::Snapshot(s) => Some(s),
            _ => None,
        })
        .await
    }

    /// Reads until the connection ends, skipping messages; returns how it ended.
    pub(crate) async fn expect_close(&mut self) -> Closed {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .expect("close within timeout");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    // Keep polling so tungstenite sends its close reply, as a real client would.
                    let _ = tokio::time::timeout(RECV_TIMEOUT, async {
                        while self.ws.next().await.is_some() {}
                    })
                    .await;
                    return Closed::Frame(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Closed::EmptyFrame,
                None | Some(Err(_)) => return Closed::Dropped,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The close code the server sent (fails the test if it closed without one).
    pub(crate) async fn expect_close_code(&mut self) -> u16 {
        match self.expect_close().await {
            Closed::Frame(code, _) => code,
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }
}

/// Runs a Python `script` with `args` that uses PyJWT (the independent JWT library the ticket
/// tests check against) and returns what it printed; `None` without PyJWT, except under CI
/// (`.ci/run` installs it, `CI` is set), where that fails the test.
pub(crate) fn with_pyjwt(script: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output();
    match output {
        Ok(out) if out.status.success() => {
            Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
        }
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(err) => err.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "PyJWT is needed under CI (pip install 'PyJWT[crypto]'): {why}"
            );
            eprintln!("skipped: no PyJWT ({why})");
            None
        }
    }
}
