//! A `redirect` against two scripted nodes: which of its own events a client sends again
//! after moving depends on a race no real server loses on cue (an event written to the old
//! node while its lobby was frozen for the move), so both nodes here are played by the test.
//! Node A echoes the client's first event only and, a second and a half later (inside the
//! measured window), redirects it to node B; B resumes the seat without loss, and its first
//! snapshot ends the replay: the client must then send the events A never echoed, in order,
//! before any newer one.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tickrelay_protocol::{ClientMessage, Codec, Payload, ServerMessage, Snapshot, close};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::support::{describe, echo_msgpack_subprotocol, loadgen_report};

const CODEC: Codec = Codec::MessagePack;

/// A scripted node's one connection.
async fn accept(listener: &TcpListener) -> WebSocketStream<tokio::net::TcpStream> {
    let (stream, _) = listener.accept().await.unwrap();
    tokio_tungstenite::accept_hdr_async(stream, echo_msgpack_subprotocol)
        .await
        .unwrap()
}

async fn serve(socket: &mut WebSocketStream<tokio::net::TcpStream>, message: &ServerMessage) {
    let bytes = CODEC.encode(message).unwrap();
    socket.send(Message::Binary(bytes.into())).await.unwrap();
}

/// The next client message that is not a `state` or `ping`; `None` once the client is gone.
async fn next_or_gone(
    socket: &mut WebSocketStream<tokio::net::TcpStream>,
) -> Option<ClientMessage> {
    loop {
        let Some(Ok(Message::Binary(bytes))) = socket.next().await else {
            return None;
        };
        match CODEC.decode_client(&bytes).unwrap() {
            ClientMessage::State { .. } | ClientMessage::Ping { .. } => {}
            other => return Some(other),
        }
    }
}

async fn next(socket: &mut WebSocketStream<tokio::net::TcpStream>) -> ClientMessage {
    next_or_gone(socket).await.expect("the client went away")
}

fn welcome(resumed: bool, offset: u64, token: &str) -> ServerMessage {
    ServerMessage::Welcome {
        player_id: 1,
        lobby: "moving".into(),
        tick_hz: 30,
        members: Vec::new(),
        offset,
        resume: Some(token.into()),
        resumed,
        lost: 0,
    }
}

fn event_data(message: ClientMessage) -> Payload {
    match message {
        ClientMessage::Event { data } => data,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redirect_the_events_the_old_node_never_echoed_are_sent_again_first() {
    let node_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = |listener: &TcpListener| format!("ws://{}/ws", listener.local_addr().unwrap());
    let (url_a, url_b) = (url(&node_a), url(&node_b));
    let (on_a, received_on_a) = oneshot::channel();
    let a = tokio::spawn({
        let url_b = url_b.clone();
        async move {
            let mut socket = accept(&node_a).await;
            assert!(matches!(
                next(&mut socket).await,
                ClientMessage::Join { .. }
            ));
            serve(&mut socket, &welcome(false, 0, "token-a")).await;
            let first = event_data(next(&mut socket).await);
            let echo = ServerMessage::Event {
                from: 1,
                data: first,
                offset: Some(1),
            };
            serve(&mut socket, &echo).await;
            // The lobby got the first; the later ones reached A while the lobby was frozen.
            let mut unechoed = Vec::new();
            let until = tokio::time::Instant::now() + Duration::from_millis(1500);
            while tokio::time::Instant::now() < until || unechoed.is_empty() {
                unechoed.push(event_data(next(&mut socket).await));
            }
            let redirect = ServerMessage::Redirect {
                url: url_b,
                resume: Some("token-b".into()),
            };
            serve(&mut socket, &redirect).await;
            let _ = on_a.send(unechoed);
            // The client leaves for B; anything it wrote meanwhile is never read, as on a
            // node whose lobby moved.
            let moved = CloseFrame {
                code: CloseCode::from(close::MOVED),
                reason: Utf8Bytes::from_static("lobby moved"),
            };
            let _ = socket.close(Some(moved)).await;
        }
    });
    let b = tokio::spawn(async move {
        let mut socket = accept(&node_b).await;
        let join = next(&mut socket).await;
        let ClientMessage::Join { resume, offset, .. } = join else {
            panic!("expected a join, got {join:?}");
        };
        serve(&mut socket, &welcome(true, 1, "token-c")).await;
        let snapshot = Snapshot {
            tick: 10,
            keyframe: true,
            ..Snapshot::default()
        };
        serve(&mut socket, &ServerMessage::Snapshot(snapshot)).await;
        // Everything the client sends here until it leaves (or, on a busy box, its run ends
        // before the leave goes out).
        let mut events = Vec::new();
        loop {
            match next_or_gone(&mut socket).await {
                Some(ClientMessage::Event { data }) => events.push(data),
                Some(ClientMessage::Leave) | None => break,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        (resume, offset, events)
    });
    let args = [
        "--url",
        &url_a,
        "--clients",
        "1",
        "--lobby-size",
        "1",
        "--event-rate",
        "20",
        "--duration",
        "3s",
        "--warmup",
        "0s",
    ];
    let (output, report) = loadgen_report(&args).await;
    a.await.unwrap();
    let unechoed = received_on_a.await.unwrap();
    let (resume, offset, on_b) = b.await.unwrap();
    assert_eq!(resume.as_deref(), Some("token-b"), "{}", describe(&output));
    assert_eq!(offset, Some(1), "from the echo's offset");
    // A read some of what the client wrote after the echo; the client resends all it wrote,
    // A's reads first and in order, then its newer events.
    assert!(
        on_b.len() > unechoed.len() && on_b[..unechoed.len()] == unechoed[..],
        "{} unechoed on A, {} events on B",
        unechoed.len(),
        on_b.len()
    );
    let counters = &report["counters"];
    assert_eq!(counters["redirects"], 1, "{}", describe(&output));
    let resent = counters["events_resent"].as_u64().unwrap() as usize;
    assert!(
        resent >= unechoed.len() && resent < on_b.len(),
        "{resent} resent\n{}",
        describe(&output)
    );
    assert_eq!(
        report["errors_whole_run"],
        serde_json::json!({}),
        "{}",
        describe(&output)
    );
}
