//! A stand-in server that welcomes clients and then says nothing: for gates that must not
//! pass on an absence of samples.

use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use tickrelay_protocol::{ClientMessage, Codec, PlayerId, ServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A WebSocket server that speaks just enough tickrelay to be joined and nothing more: it
/// accepts the upgrade (echoing the MessagePack subprotocol), answers each `join` with a valid
/// `welcome` and each `leave` with a normal close, and never sends a snapshot.
pub(crate) struct SilentServer {
    pub(crate) addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

pub(crate) async fn spawn_silent_server() -> SilentServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept_task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        for player_id in 1.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.spawn(welcome_and_stay_silent(stream, player_id));
        }
    });
    SilentServer { addr, accept_task }
}

/// Accepts the upgrade only for the MessagePack subprotocol, and echoes it, as tickrelay does.
// The signature is tungstenite's callback shape; its refusal type is large by design.
#[allow(clippy::result_large_err)]
pub(crate) fn echo_msgpack_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let subprotocol = Codec::MessagePack.subprotocol();
    let offered = request
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok());
    if offered != Some(subprotocol) {
        let mut refusal = ErrorResponse::new(Some(format!("offered {offered:?}")));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol),
    );
    Ok(response)
}

async fn welcome_and_stay_silent(stream: TcpStream, player_id: PlayerId) {
    let codec = Codec::MessagePack;
    let Ok(mut socket) =
        tokio_tungstenite::accept_hdr_async(stream, echo_msgpack_subprotocol).await
    else {
        return;
    };
    // Reads until the client goes; tungstenite answers WebSocket pings and closes itself.
    while let Some(Ok(message)) = socket.next().await {
        let Message::Binary(bytes) = message else {
            continue;
        };
        let reply = match codec.decode_client(&bytes) {
            Ok(ClientMessage::Join { lobby, .. }) => ServerMessage::Welcome {
                player_id,
                lobby,
                tick_hz: 30,
                members: Vec::new(),
                offset: 0,
                resume: None,
                resumed: false,
                lost: 0,
            },
            Ok(ClientMessage::Leave) => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: Utf8Bytes::from_static("bye"),
                };
                let _ = socket.close(Some(close)).await;
                continue;
            }
            // States, events and protocol pings get no answer: that is the point.
            _ => continue,
        };
        let encoded = codec.encode(&reply).expect("a welcome always encodes");
        if socket.send(Message::Binary(encoded.into())).await.is_err() {
            return;
        }
    }
}
