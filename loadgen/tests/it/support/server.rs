//! A real tickrelay server (the crate's own `run`) in the test process, on `127.0.0.1:0`.

use std::net::SocketAddr;

use tickrelay_server::Config;
use tokio_util::sync::CancellationToken;

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    shutdown: CancellationToken,
}

impl TestServer {
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// One series of the server's `/metrics` (e.g. `tickrelay_connections`), if present.
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        let body = self.request("GET", "/metrics").await?;
        body.lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(series, _)| *series == name)
            .and_then(|(_, value)| value.parse().ok())
    }

    /// `method path` without a body: the whole response, head included.
    pub(crate) async fn request(&self, method: &str, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn spawn_server(tick_hz: u32) -> TestServer {
    spawn_server_with(Config {
        tick_hz,
        ..Config::default()
    })
    .await
}

/// A server with `config`, on an ephemeral loopback port whatever `config.listen` says.
pub(crate) async fn spawn_server_with(config: Config) -> TestServer {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    let listener = tickrelay_server::bind(config.listen).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(tickrelay_server::run(listener, config, shutdown.clone()));
    TestServer { addr, shutdown }
}
