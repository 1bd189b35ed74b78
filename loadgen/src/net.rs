//! Opening one client connection: TCP (optionally from a chosen loopback source address),
//! the WebSocket handshake with the codec's subprotocol, and the split into read and write
//! halves. Errors are classified so the report can count them by kind.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Role, WebSocketWrite};
use http_body_util::Empty;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, RETRY_AFTER, UPGRADE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tickrelay_protocol::Codec;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::either::Either;

use crate::plan::Target;
use tickrelay_protocol::framing::Role as ReadRole;
use tickrelay_protocol::framing::reader::FrameReader;

/// Largest frame accepted from the server (snapshots of big lobbies stay far below).
const MAX_SERVER_FRAME: usize = 16 << 20;

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;
/// The socket's read side: plain TCP's owned half, or TLS's (`tokio::io::split`, a lock the
/// client's two tasks share on one thread), behind the bytes read with the handshake.
type ReadSide = tokio::io::Chain<io::Cursor<Bytes>, Either<OwnedReadHalf, ReadHalf<TlsStream>>>;
pub(crate) type Reader = FrameReader<ReadSide>;
pub(crate) type Writer = WebSocketWrite<Either<OwnedWriteHalf, WriteHalf<TlsStream>>>;

/// Why a connection attempt failed, as counted in the report (`connect_<kind>`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connection refused")]
    Refused,
    #[error("no free local port or address (EADDRNOTAVAIL): add --source-ips")]
    AddressUnavailable,
    #[error("out of file descriptors (EMFILE)")]
    TooManyFiles,
    #[error("timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("websocket handshake failed: {0}")]
    Handshake(String),
    /// HTTP 503: the server shed the attempt, with the `Retry-After` it gave (if any).
    #[error("server busy (503)")]
    Shed(Option<Duration>),
    /// A routing question the server will never answer as asked (4xx: a size it does not
    /// allow, a pool of another size, a ticket it refuses): asking again is pointless.
    #[error("{0}")]
    Answered(String),
    #[error("{0}")]
    Io(io::Error),
}

impl ConnectError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Refused => "connect_refused",
            Self::AddressUnavailable => "connect_addr_unavailable",
            Self::TooManyFiles => "connect_too_many_files",
            Self::Timeout => "connect_timeout",
            Self::Tls(_) => "connect_tls",
            Self::Handshake(_) => "connect_handshake",
            Self::Shed(_) => "connect_shed_503",
            Self::Answered(_) => "refused",
            Self::Io(_) => "connect_io",
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => Self::Refused,
            Some(libc::EADDRNOTAVAIL) => Self::AddressUnavailable,
            Some(libc::EMFILE | libc::ENFILE) => Self::TooManyFiles,
            _ if err.kind() == io::ErrorKind::ConnectionRefused => Self::Refused,
            _ => Self::Io(err),
        }
    }
}

/// Opens a TCP connection, from `source` if given. With a source address the kernel picks
/// the port at connect time (IP_BIND_ADDRESS_NO_PORT), so ports are only unique per
/// (source, destination) pair and each source address adds ~28k connections.
async fn tcp_connect(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
) -> Result<TcpStream, ConnectError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        let enable: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a correctly sized c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const enable).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error().into());
        }
        socket.bind(SocketAddr::from((source, 0)))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects (TLS first for `wss://`) and completes the WebSocket handshake asking for
/// `codec`'s subprotocol.
pub(crate) async fn connect(
    target: &Target,
    source: Option<Ipv4Addr>,
    codec: Codec,
) -> Result<(Reader, Writer), ConnectError> {
    let tcp = tcp_connect(target.addr, source).await?;
    let (early, read, write) = match &target.tls {
        None => {
            let (early, tcp) = handshake(target, TokioIo::new(tcp), codec).await?;
            let (read, write) = tcp.into_split();
            (early, Either::Left(read), Either::Left(write))
        }
        Some(tls) => {
            let stream = tls_connect(tls, tcp).await?;
            let (early, stream) = handshake(target, TokioIo::new(stream), codec).await?;
            let (read, write) = tokio::io::split(stream);
            (early, Either::Right(read), Either::Right(write))
        }
    };
    let read = tokio::io::AsyncReadExt::chain(io::Cursor::new(early), read);
    // fastwebsockets writes (and masks); the protocol crate's small-buffer
    // reader reads (see `tickrelay_protocol::framing::reader`).
    let (_, writer) =
        fastwebsockets::after_handshake_split(tokio::io::empty(), write, Role::Client);
    Ok((
        FrameReader::new(read, ReadRole::Client, MAX_SERVER_FRAME),
        writer,
    ))
}

/// A question to a fleet node's placement endpoints.
#[derive(Clone, Copy)]
pub(crate) enum Ask<'a> {
    /// `GET /route?lobby=NAME`: where the lobby runs.
    Route { lobby: &'a str },
    /// `POST /matchmake?pool=NAME&size=N`: a seat in the pool's fullest open lobby.
    Matchmake { pool: &'a str, size: usize },
}

/// A node's answer: the lobby to join, the WebSocket URL of the node that runs it, and
/// (tickets on, a ticket shown) a ticket for the lobby the node made.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Placed {
    pub(crate) lobby: String,
    pub(crate) url: String,
    pub(crate) ticket: Option<String>,
}

/// Asks `route`'s node `ask`, showing `bearer` (a ticket) when the server requires tickets.
pub(crate) async fn place(
    route: &Target,
    ask: Ask<'_>,
    bearer: Option<&str>,
    source: Option<Ipv4Addr>,
) -> Result<Placed, ConnectError> {
    let tcp = tcp_connect(route.addr, source).await?;
    match &route.tls {
        None => ask_node(route, ask, bearer, TokioIo::new(tcp)).await,
        Some(tls) => {
            let io = TokioIo::new(tls_connect(tls, tcp).await?);
            ask_node(route, ask, bearer, io).await
        }
    }
}

/// The TLS handshake over `tcp`, checking the server as `tls` says.
async fn tls_connect(
    tls: &crate::tls::TlsClient,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(ConnectError::Tls)
}

async fn ask_node<S>(
    route: &Target,
    ask: Ask<'_>,
    bearer: Option<&str>,
    io: TokioIo<S>,
) -> Result<Placed, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let what = match ask {
        Ask::Route { .. } => "route",
        Ask::Matchmake { .. } => "matchmake",
    };
    let failed = |err: hyper::Error| ConnectError::Handshake(format!("{what}: {err}"));
    let (method, uri) = match ask {
        Ask::Route { lobby } => (
            "GET",
            format!("{}?lobby={}", route.path, percent_encoded(lobby)),
        ),
        Ask::Matchmake { pool, size } => (
            "POST",
            format!("/matchmake?pool={}&size={size}", percent_encoded(pool)),
        ),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(HOST, &route.host)
        .header(CONTENT_LENGTH, 0);
    if let Some(ticket) = bearer {
        request = request.header(AUTHORIZATION, format!("Bearer {ticket}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|err| ConnectError::Handshake(err.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Err(ConnectError::Shed(retry_after(response.headers())));
    }
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(failed)?
        .to_bytes();
    if status != StatusCode::OK {
        let problem = format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
        return Err(if status.is_client_error() {
            ConnectError::Answered(problem)
        } else {
            ConnectError::Handshake(problem)
        });
    }
    serde_json::from_slice::<Placed>(&body)
        .map_err(|err| ConnectError::Handshake(format!("{what}: unexpected answer: {err}")))
}

/// `text` for a URL's query: unreserved characters as they are, every other byte `%XX`.
fn percent_encoded(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A 503's `Retry-After`, in seconds.
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse().ok())
        .map(Duration::from_secs)
}

/// The WebSocket handshake over `io`: returns the socket back (hyper's wrapper taken off)
/// with the bytes hyper read past the response.
async fn handshake<S>(
    target: &Target,
    io: TokioIo<S>,
    codec: Codec,
) -> Result<(Bytes, S), ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::builder()
        .method("GET")
        .uri(&target.path)
        .header(HOST, &target.host)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Protocol", codec.subprotocol())
        .body(Empty::<Bytes>::new())
        .map_err(|err| ConnectError::Handshake(err.to_string()))?;
    // hyper's client connection directly rather than fastwebsockets' handshake helper, which
    // keeps only the status of a refusal: a 503's Retry-After is what the backoff needs.
    let handshake = |err: hyper::Error| ConnectError::Handshake(err.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(handshake)?;
    // Polled until the upgrade hands the socket back (its error, if any, shows in the response).
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut response = sender.send_request(request).await.map_err(handshake)?;
    match response.status() {
        StatusCode::SWITCHING_PROTOCOLS => {}
        StatusCode::SERVICE_UNAVAILABLE => {
            return Err(ConnectError::Shed(retry_after(response.headers())));
        }
        status => return Err(ConnectError::Handshake(format!("HTTP {status}"))),
    }
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(codec.subprotocol()) {
        return Err(ConnectError::Handshake(format!(
            "server did not agree to subprotocol {} (answered {agreed:?})",
            codec.subprotocol()
        )));
    }
    let upgraded = hyper::upgrade::on(&mut response).await.map_err(handshake)?;
    let parts = upgraded
        .downcast::<TokioIo<S>>()
        .map_err(|_| ConnectError::Handshake("unexpected upgraded stream type".into()))?;
    // Copied, so a slice of hyper's larger read buffer is not kept alive for the connection.
    let early = Bytes::copy_from_slice(&parts.read_buf);
    Ok((early, parts.io.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_come_from_the_chosen_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for source in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 9)] {
            let _client = tcp_connect(addr, Some(source)).await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(peer.ip(), source);
        }
    }

    #[tokio::test]
    async fn refused_connections_are_classified() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = tcp_connect(addr, None).await.unwrap_err();
        assert_eq!(err.kind(), "connect_refused");
    }
}
