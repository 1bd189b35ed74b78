//! The echo endpoint (`--echo-endpoint`): what the conformance suite (scripts/autobahn.sh)
//! talks to. It must answer each message in kind, through the relay's own limits.

use futures_util::{SinkExt, StreamExt};
use tickrelay_protocol::{Codec, close};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, RECV_TIMEOUT, TestServer, masked_frame, spawn_server, test_config};

async fn connect_echo(server: &TestServer) -> Client {
    let url = format!("ws://{}/echo", server.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("echo connect");
    // The codec only names what `Client` decodes; echo replies are checked raw.
    Client {
        ws,
        codec: Codec::MessagePack,
    }
}

async fn next_data(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(RECV_TIMEOUT, client.ws.next())
            .await
            .expect("an echo in time")
            .expect("open")
            .expect("websocket ok");
        if message.is_text() || message.is_binary() {
            return message;
        }
    }
}

#[tokio::test]
async fn echo_is_off_unless_asked_for() {
    let server = spawn_server(test_config()).await;
    let (status, _) = server.http_get("/echo").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn echo_answers_text_with_text_and_binary_with_binary() {
    let server = spawn_server(tickrelay_server::Config {
        echo_endpoint: true,
        ..test_config()
    })
    .await;
    let mut client = connect_echo(&server).await;
    let sent = [
        Message::Text("κόσμε".into()),
        Message::Binary(vec![0xff, 0x00, 0xc1].into()),
        Message::Text(String::new().into()),
    ];
    for message in &sent {
        client.ws.send(message.clone()).await.unwrap();
    }
    for message in sent {
        assert_eq!(next_data(&mut client).await, message);
    }
    // A fragmented text message with a code point split across its frames comes back whole.
    let kappa = "κ".as_bytes();
    client
        .write_raw(&masked_frame(0x01, &[b'a', kappa[0]]))
        .await;
    client.write_raw(&masked_frame(0x80, &kappa[1..])).await;
    assert_eq!(next_data(&mut client).await, Message::Text("aκ".into()));
    client.ws.close(None).await.unwrap();
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"peer_closed\"}", 1.0)
        .await;
}

#[tokio::test]
async fn echo_keeps_the_relays_limits_and_fails_bad_text_fast() {
    let server = spawn_server(tickrelay_server::Config {
        echo_endpoint: true,
        max_message_size: 1024,
        ..test_config()
    })
    .await;
    // Not UTF-8 in the first fragment: closed with 1007 before the message is complete.
    let mut client = connect_echo(&server).await;
    client
        .write_raw(&masked_frame(0x01, b"ok\xed\xa0\x80"))
        .await;
    assert_eq!(client.expect_close_code().await, close::INVALID_PAYLOAD);

    let mut client = connect_echo(&server).await;
    client
        .ws
        .send(Message::Binary(vec![0; 1025].into()))
        .await
        .unwrap();
    assert_eq!(client.expect_close_code().await, close::MESSAGE_TOO_BIG);
}
