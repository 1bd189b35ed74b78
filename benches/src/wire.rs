//! Plain blocking sockets for the bench binaries' side channels: HTTP GET (`/metrics`,
//! `/route`, `/cluster`) and POST (`/drain`) and a hand-made WebSocket client (upgrade, masked frames), so a
//! bench measures the server and not a client library.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// `GET path` with `Connection: close`: the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, Duration::from_secs(5))
}

/// `POST path` without a body, waiting up to `timeout` for the answer (`/drain` answers
/// once done): the status and the body.
pub fn http_post(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    http_request(addr, "POST", path, timeout)
}

fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut socket = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    socket.set_read_timeout(Some(timeout))?;
    write!(
        socket,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    socket.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("not an HTTP response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// A WebSocket upgrade of `path` over a plain socket, with `protocol`; the socket after the
/// 101 (nothing after the response head is consumed).
pub fn upgrade(server: SocketAddr, path: &str, protocol: &str) -> std::io::Result<TcpStream> {
    let mut socket = TcpStream::connect(server)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    socket.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte)?;
        head.push(byte[0]);
        if head.len() > 4096 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::ErrorKind::ConnectionRefused.into());
    }
    Ok(socket)
}

/// One frame as a client sends it: `first` (FIN and opcode), masked `payload`.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    tickrelay_protocol::framing::encode_frame(first, payload, Some([0x5a, 0x17, 0x3c, 0x81]))
}

/// Reads one unfragmented, unmasked server frame: its opcode and payload.
pub fn read_frame(socket: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    socket.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut len = [0u8; 2];
            socket.read_exact(&mut len)?;
            u64::from(u16::from_be_bytes(len))
        }
        127 => {
            let mut len = [0u8; 8];
            socket.read_exact(&mut len)?;
            u64::from_be_bytes(len)
        }
        len => u64::from(len),
    };
    if len > 16 << 20 {
        bail!("a {len}-byte frame");
    }
    let mut payload = vec![0u8; len as usize];
    socket.read_exact(&mut payload)?;
    Ok((head[0] & 0x0f, payload))
}
