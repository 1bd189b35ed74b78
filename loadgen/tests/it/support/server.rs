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
