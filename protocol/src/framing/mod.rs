//! WebSocket framing (RFC 6455 §5), sans I/O: the frame decoder over a byte buffer, the header
//! of frames we send, close-payload validation and message reassembly. The server (reading
//! clients' frames) and the load generator (reading the server's) both use it, so the
//! measuring tool never depends on the measured server. Nothing here reads a socket or a
//! clock; the async reader that keeps no buffer between frames is [`reader`] (feature `tokio`).
//!
//! The decoder is "check, then take" (as mini-redis' `Frame::check`/`parse`): it looks at the
//! bytes it was given and answers "a whole frame", "need more" or an error, so every edge case
//! is a byte-vector test. Limits are checked on the header alone, before any payload is
//! buffered. Extensions are never negotiated, so reserved bits are always an error.

#[cfg(feature = "tokio")]
pub mod reader;

use bytes::{Buf, Bytes, BytesMut};

use crate::close;

/// Largest control frame payload (RFC 6455 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest header of an unmasked frame (what a server sends): 2 + 8 length bytes.
pub const MAX_HEAD: usize = 10;

/// Which end reads: a server reads clients' frames (masked), a client reads the server's
/// (unmasked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// What a frame is (its opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Kind {
    fn from_opcode(opcode: u8) -> Option<Self> {
        Some(match opcode {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    const fn opcode(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub const fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One whole frame, payload unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    /// Last frame of its message.
    pub fin: bool,
    pub payload: BytesMut,
}

/// Why bytes are not a valid frame from the peer. Each maps to the close code the reader
/// answers with ([`FrameError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u64),
}

impl FrameError {
    pub const fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => close::PROTOCOL_ERROR,
            Self::TooLarge(_) => close::MESSAGE_TOO_BIG,
        }
    }
}

/// The frame decoder for one connection: its role and its largest accepted frame payload.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    role: Role,
    max_payload: usize,
}

/// A frame header that has been checked: what it is, where its payload starts, how long it is.
struct Header {
    kind: Kind,
    fin: bool,
    mask: Option<[u8; 4]>,
    head_len: usize,
    payload_len: usize,
}

impl Decoder {
    /// A decoder refusing frames with more than `max_payload` bytes (from their header).
    pub const fn new(role: Role, max_payload: usize) -> Self {
        Self { role, max_payload }
    }

    /// Takes one whole frame off the front of `buffer`, unmasked. `Ok(None)`: the frame is not
    /// complete yet; room for the rest of it has then been reserved in `buffer`, so a reader
    /// can read the payload straight into it. When the buffer holds exactly one frame, the
    /// buffer itself becomes the payload (no copy) and is left empty with no capacity.
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.check(buffer)? else {
            return Ok(None);
        };
        let total = header.head_len + header.payload_len;
        if buffer.len() < total {
            buffer.reserve(total - buffer.len());
            return Ok(None);
        }
        buffer.advance(header.head_len);
        let mut payload = if buffer.len() == header.payload_len {
            // The common case, one frame per read: the buffer becomes the payload whole (no
            // split, so no shared-ownership bookkeeping) and the reader keeps nothing.
            std::mem::take(buffer)
        } else {
            buffer.split_to(header.payload_len)
        };
        if let Some(mask) = header.mask {
            unmask(&mut payload, mask);
        }
        Ok(Some(Frame {
            kind: header.kind,
            fin: header.fin,
            payload,
        }))
    }

    /// Parses and checks the header at the front of `bytes` (`None`: not all of it yet).
    fn check(&self, bytes: &[u8]) -> Result<Option<Header>, FrameError> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(FrameError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        let kind =
            Kind::from_opcode(first & 0x0F).ok_or(FrameError::Protocol("reserved opcode"))?;
        let fin = first & 0x80 != 0;
        let masked = second & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(FrameError::Protocol("unmasked frame from a client"));
            }
            (Role::Client, true) => return Err(FrameError::Protocol("masked frame from a server")),
            _ => {}
        }
        let (length, mut head_len) = match second & 0x7F {
            // Lengths in a longer form than needed (RFC 6455 5.2 says "minimal") are accepted,
            // as the common implementations do: they carry the same length.
            126 => {
                let Some(&[a, b]) = bytes.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([a, b])), 4)
            }
            127 => {
                let Some(raw) = bytes.get(2..10) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(raw);
                let length = u64::from_be_bytes(be);
                if length >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length with the top bit set"));
                }
                (length, 10)
            }
            short => (u64::from(short), 2),
        };
        if kind.is_control() && (!fin || length > MAX_CONTROL_PAYLOAD as u64) {
            return Err(FrameError::Protocol(
                "fragmented or oversized control frame",
            ));
        }
        let payload_len = usize::try_from(length)
            .ok()
            .filter(|&len| len <= self.max_payload)
            .ok_or(FrameError::TooLarge(length))?;
        let mask = if masked {
            let Some(raw) = bytes.get(head_len..head_len + 4) else {
                return Ok(None);
            };
            head_len += 4;
            Some([raw[0], raw[1], raw[2], raw[3]])
        } else {
            None
        };
        Ok(Some(Header {
            kind,
            fin,
            mask,
            head_len,
            payload_len,
        }))
    }
}

/// XORs a payload with its 4-byte mask (RFC 6455 5.3), a word at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// The header of a final, unmasked frame (what a server sends), formatted on the stack.
#[derive(Debug, Clone, Copy)]
pub struct FrameHead {
    bytes: [u8; MAX_HEAD],
    len: usize,
}

impl FrameHead {
    pub fn new(kind: Kind, payload_len: usize) -> Self {
        let mut bytes = [0u8; MAX_HEAD];
        bytes[0] = 0x80 | kind.opcode();
        let len = match payload_len {
            0..=125 => {
                bytes[1] = payload_len as u8;
                2
            }
            126..=0xFFFF => {
                bytes[1] = 126;
                bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                bytes[1] = 127;
                bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
                10
            }
        };
        Self { bytes, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What a peer's close frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCheck {
    /// A valid close with this code (1000 when the payload is empty): echo it.
    Valid(u16),
    /// An invalid close: answer with this code instead (1002 for a one-byte payload or a code
    /// that must not be sent, 1007 for a reason that is not UTF-8).
    Invalid(u16),
}

/// The status code a close frame's payload carries (its first two bytes), if any.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// Validates a received close frame's payload (RFC 6455 5.5.1, 7.4).
pub fn check_close(payload: &[u8]) -> CloseCheck {
    let code = match (payload.len(), close_code(payload)) {
        (0, _) => return CloseCheck::Valid(close::NORMAL),
        (_, None) => return CloseCheck::Invalid(close::PROTOCOL_ERROR),
        (_, Some(code)) => code,
    };
    if !close_code_allowed(code) {
        return CloseCheck::Invalid(close::PROTOCOL_ERROR);
    }
    if std::str::from_utf8(&payload[2..]).is_err() {
        return CloseCheck::Invalid(close::INVALID_PAYLOAD);
    }
    CloseCheck::Valid(code)
}

/// Whether a peer may send this close code: the defined ones except those reserved for local
/// use only (1005, 1006, 1015), and the registered (3000–3999) and private (4000–4999) ranges.
pub const fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Collects a message's frames into one message, enforcing the order rules, a total size
/// limit and, for text, UTF-8 (RFC 6455 8.1). Data frames must be of the kind the connection's
/// codec uses (`expected`), or of either kind (`None`, the echo endpoint).
///
/// Text is validated frame by frame as fragments arrive, so a message that can no longer be
/// UTF-8 fails at the first bad frame rather than at its end; a code point split across two
/// frames is fine.
#[derive(Debug)]
pub struct Reassembler {
    expected: Option<Kind>,
    max_message: usize,
    /// The bytes so far of a message being reassembled from fragments (its first frame's
    /// kind was checked when it came).
    fragments: Option<BytesMut>,
    /// The kind of that message.
    kind: Kind,
    /// How much of a fragmented text message's bytes are known to be whole UTF-8 (a `u32`,
    /// with the kind, so the reassembler is no larger than one without: it sits in every
    /// connection's task, and messages are far below 4 GiB).
    checked: u32,
}

/// One whole data message.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    /// [`Kind::Text`] or [`Kind::Binary`].
    pub kind: Kind,
    pub payload: Bytes,
}

impl Reassembler {
    /// A reassembler taking `expected` data frames (either kind: `None`) into messages of at
    /// most `max_message` bytes (at most 4 GiB whatever it says).
    pub const fn new(expected: Option<Kind>, max_message: usize) -> Self {
        let max_message = if max_message > u32::MAX as usize {
            u32::MAX as usize
        } else {
            max_message
        };
        Self {
            expected,
            max_message,
            fragments: None,
            kind: Kind::Binary,
            checked: 0,
        }
    }

    /// Adds a data frame. Returns the whole message when its last frame arrives, or the close
    /// code for a protocol violation (1002), a frame of the wrong kind (1003), text that is
    /// not UTF-8 (1007) or a message over the limit (1009).
    pub fn push(
        &mut self,
        kind: Kind,
        fin: bool,
        payload: BytesMut,
    ) -> Result<Option<Message>, u16> {
        let (kind, buffer) = match (kind, self.fragments.as_mut()) {
            (Kind::Continuation, None) => return Err(close::PROTOCOL_ERROR),
            (Kind::Continuation, Some(buffer)) => {
                if buffer.len() + payload.len() > self.max_message {
                    return Err(close::MESSAGE_TOO_BIG);
                }
                buffer.extend_from_slice(&payload);
                (self.kind, buffer)
            }
            (_, Some(_)) => return Err(close::PROTOCOL_ERROR),
            (kind, None) if self.expected.is_some_and(|expected| expected != kind) => {
                return Err(close::UNSUPPORTED_DATA);
            }
            // A whole message in one frame: the frame's own bytes, no copy.
            (kind, None) if fin => {
                if kind == Kind::Text && std::str::from_utf8(&payload).is_err() {
                    return Err(close::INVALID_PAYLOAD);
                }
                let payload = payload.freeze();
                return Ok(Some(Message { kind, payload }));
            }
            (kind, None) => {
                self.kind = kind;
                self.checked = 0;
                (kind, self.fragments.insert(payload))
            }
        };
        if kind == Kind::Text {
            // Within u32: the buffer is within the limit, and the limit within 4 GiB.
            let checked = self.checked as usize;
            match std::str::from_utf8(&buffer[checked..]) {
                Ok(_) => self.checked = buffer.len() as u32,
                // Cut short inside a code point: fine while more frames may follow.
                Err(err) if err.error_len().is_none() && !fin => {
                    self.checked = (checked + err.valid_up_to()) as u32;
                }
                Err(_) => return Err(close::INVALID_PAYLOAD),
            }
        }
        if !fin {
            return Ok(None);
        }
        let payload = self.fragments.take().map(BytesMut::freeze);
        Ok(payload.map(|payload| Message { kind, payload }))
    }
}

/// Test support: one frame as a client (masked with `mask`) or a server (unmasked) sends it.
#[doc(hidden)]
pub fn encode_frame(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first_byte];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(masked | n as u8),
        n @ 126..=65535 => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn decode_all(role: Role, wire: &[u8], max: usize) -> (Vec<Frame>, Result<(), FrameError>) {
        let decoder = Decoder::new(role, max);
        let mut buffer = BytesMut::from(wire);
        let mut frames = Vec::new();
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, Ok(())),
                Err(err) => return (frames, Err(err)),
            }
        }
    }

    #[test]
    fn a_masked_client_frame_is_unmasked_and_taken_whole() {
        let wire = encode_frame(0x82, b"hello", MASK);
        assert_eq!(wire[..2], [0x82, 0x85], "FIN+binary, masked, length 5");
        let mut buffer = BytesMut::from(&wire[..]);
        let frame = Decoder::new(Role::Server, 1024)
            .decode(&mut buffer)
            .unwrap()
            .unwrap();
        assert_eq!((frame.kind, frame.fin), (Kind::Binary, true));
        assert_eq!(&frame.payload[..], b"hello");
        assert_eq!(buffer.capacity(), 0, "the buffer became the payload");
    }

    #[test]
    fn every_length_encoding_decodes_in_both_roles() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for (role, mask) in [(Role::Server, MASK), (Role::Client, None)] {
                let wire = encode_frame(0x02, &payload, mask);
                let (frames, end) = decode_all(role, &wire, 1 << 20);
                assert_eq!(end, Ok(()));
                assert_eq!(frames.len(), 1, "length {len}");
                assert_eq!(frames[0].payload, payload, "length {len}");
                assert!(!frames[0].fin);
            }
        }
    }

    #[test]
    fn an_incomplete_frame_waits_and_reserves_its_room() {
        let wire = encode_frame(0x82, &[9u8; 300], MASK);
        let decoder = Decoder::new(Role::Server, 1024);
        // Every prefix is "need more", never an error.
        for cut in 0..wire.len() {
            let mut buffer = BytesMut::from(&wire[..cut]);
            assert_eq!(
                decoder.decode(&mut buffer),
                Ok(None),
                "prefix of {cut} bytes"
            );
            if cut >= 8 {
                assert!(buffer.capacity() >= wire.len(), "room for the whole frame");
            }
        }
        let mut buffer = BytesMut::from(&wire[..]);
        assert!(decoder.decode(&mut buffer).unwrap().is_some());
    }

    #[test]
    fn two_frames_in_one_buffer_come_out_in_order() {
        let wire = [
            encode_frame(0x01, b"ab", MASK),
            encode_frame(0x80, b"cd", MASK),
            encode_frame(0x89, b"", MASK),
        ]
        .concat();
        let (frames, end) = decode_all(Role::Server, &wire, 1024);
        assert_eq!(end, Ok(()));
        let seen: Vec<_> = frames
            .iter()
            .map(|f| (f.kind, f.fin, &f.payload[..]))
            .collect();
        assert_eq!(
            seen,
            [
                (Kind::Text, false, &b"ab"[..]),
                (Kind::Continuation, true, &b"cd"[..]),
                (Kind::Ping, true, &b""[..]),
            ]
        );
    }

    #[test]
    fn violations_are_refused_from_the_header() {
        let unmasked = |first, payload: &[u8]| encode_frame(first, payload, None);
        let masked = |first, payload: &[u8]| encode_frame(first, payload, MASK);
        let too_long = vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        let cases = [
            (
                Role::Server,
                unmasked(0x82, b"x"),
                "unmasked frame from a client",
            ),
            (
                Role::Client,
                masked(0x82, b"x"),
                "masked frame from a server",
            ),
            (
                Role::Server,
                masked(0xC2, b"x"),
                "reserved bits set without an extension",
            ),
            (Role::Server, masked(0x83, b"x"), "reserved opcode"),
            (Role::Server, masked(0x8B, b"x"), "reserved opcode"),
            (
                Role::Server,
                masked(0x09, b"x"),
                "fragmented or oversized control frame",
            ),
            (
                Role::Server,
                masked(0x89, &[0; 126]),
                "fragmented or oversized control frame",
            ),
            (
                Role::Client,
                too_long,
                "payload length with the top bit set",
            ),
        ];
        for (role, wire, expected) in cases {
            let (frames, end) = decode_all(role, &wire, 1 << 20);
            assert!(frames.is_empty());
            assert_eq!(end, Err(FrameError::Protocol(expected)));
        }
        // Too large is refused from the first bytes of the header, before the payload arrives
        // and before any room is reserved for it.
        let header_only = &encode_frame(0x82, &[0; 2000], MASK)[..4];
        let mut buffer = BytesMut::from(header_only);
        let decoder = Decoder::new(Role::Server, 1000);
        assert_eq!(decoder.decode(&mut buffer), Err(FrameError::TooLarge(2000)));
        assert!(buffer.capacity() < 2000);
        assert_eq!(FrameError::TooLarge(1).close_code(), close::MESSAGE_TOO_BIG);
        assert_eq!(
            FrameError::Protocol("x").close_code(),
            close::PROTOCOL_ERROR
        );
    }

    #[test]
    fn heads_match_the_decoder() {
        for len in [0, 5, 125, 126, 65_535, 65_536] {
            let head = FrameHead::new(Kind::Binary, len);
            let mut wire = head.as_slice().to_vec();
            wire.extend(std::iter::repeat_n(3u8, len));
            assert_eq!(
                wire,
                encode_frame(0x82, &vec![3u8; len], None),
                "length {len}"
            );
        }
        assert_eq!(FrameHead::new(Kind::Close, 2).as_slice(), [0x88, 2]);
        assert_eq!(FrameHead::new(Kind::Ping, 0).as_slice(), [0x89, 0]);
        assert_eq!(FrameHead::new(Kind::Text, 1).as_slice(), [0x81, 1]);
    }

    #[test]
    fn unmask_is_its_own_inverse_at_every_alignment() {
        let original: Vec<u8> = (0..37).collect();
        for start in 0..4 {
            let mut data = original[start..].to_vec();
            unmask(&mut data, [0xde, 0xad, 0xbe, 0xef]);
            let expected: Vec<u8> = original[start..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [0xde, 0xad, 0xbe, 0xef][i % 4])
                .collect();
            assert_eq!(data, expected);
            unmask(&mut data, [0xde, 0xad, 0xbe, 0xef]);
            assert_eq!(data, original[start..]);
        }
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(check_close(b""), CloseCheck::Valid(1000));
        assert_eq!(check_close(&[0x03]), CloseCheck::Invalid(1002));
        assert_eq!(check_close(&[0x03, 0xe8]), CloseCheck::Valid(1000));
        assert_eq!(
            check_close(&[0x0f, 0xa1, b'o', b'k']),
            CloseCheck::Valid(4001)
        );
        for forbidden in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                check_close(&forbidden.to_be_bytes()),
                CloseCheck::Invalid(1002),
                "code {forbidden}"
            );
        }
        assert_eq!(
            check_close(&[0x03, 0xe8, 0xff, 0xfe]),
            CloseCheck::Invalid(1007)
        );
    }

    #[test]
    fn reassembly_joins_fragments_and_enforces_order_kind_and_size() {
        let part = |s: &str| BytesMut::from(s.as_bytes());
        let binary = |s: &'static str| Message {
            kind: Kind::Binary,
            payload: Bytes::from(s),
        };
        let mut messages = Reassembler::new(Some(Kind::Binary), 6);
        assert_eq!(
            messages.push(Kind::Binary, true, part("one")),
            Ok(Some(binary("one")))
        );
        assert_eq!(messages.push(Kind::Binary, false, part("ab")), Ok(None));
        assert_eq!(
            messages.push(Kind::Continuation, false, part("cd")),
            Ok(None)
        );
        assert_eq!(
            messages.push(Kind::Continuation, true, part("ef")),
            Ok(Some(binary("abcdef")))
        );
        // Over the total limit across fragments.
        assert_eq!(messages.push(Kind::Binary, false, part("abcd")), Ok(None));
        assert_eq!(
            messages.push(Kind::Continuation, true, part("efg")),
            Err(close::MESSAGE_TOO_BIG)
        );

        let mut messages = Reassembler::new(Some(Kind::Binary), 64);
        assert_eq!(
            messages.push(Kind::Continuation, true, part("x")),
            Err(close::PROTOCOL_ERROR)
        );
        assert_eq!(
            messages.push(Kind::Text, true, part("x")),
            Err(close::UNSUPPORTED_DATA)
        );
        assert_eq!(messages.push(Kind::Binary, false, part("x")), Ok(None));
        assert_eq!(
            messages.push(Kind::Binary, true, part("y")),
            Err(close::PROTOCOL_ERROR),
            "a new message mid-message"
        );

        let mut messages = Reassembler::new(Some(Kind::Binary), 64);
        assert_eq!(
            messages.push(Kind::Text, false, part("x")),
            Err(close::UNSUPPORTED_DATA)
        );
    }

    #[test]
    fn text_is_utf8_checked_per_fragment_and_either_kind_is_taken_when_asked() {
        let part = |b: &[u8]| BytesMut::from(b);
        let text = |s: &str| Message {
            kind: Kind::Text,
            payload: Bytes::copy_from_slice(s.as_bytes()),
        };
        let mut messages = Reassembler::new(None, 64);
        assert_eq!(
            messages.push(Kind::Text, true, part("κόσμε".as_bytes())),
            Ok(Some(text("κόσμε")))
        );
        assert_eq!(
            messages.push(Kind::Binary, true, part(&[0xff])),
            Ok(Some(Message {
                kind: Kind::Binary,
                payload: Bytes::from_static(&[0xff])
            })),
            "binary is never checked"
        );
        assert_eq!(
            messages.push(Kind::Text, true, part(&[0xce, 0xba, 0xff])),
            Err(close::INVALID_PAYLOAD)
        );
        // A code point split across three frames is whole text.
        let kappa = "κ".as_bytes();
        let mut messages = Reassembler::new(None, 64);
        assert_eq!(messages.push(Kind::Text, false, part(b"a")), Ok(None));
        assert_eq!(
            messages.push(Kind::Continuation, false, part(&kappa[..1])),
            Ok(None)
        );
        assert_eq!(
            messages.push(Kind::Continuation, true, part(&kappa[1..])),
            Ok(Some(text("aκ")))
        );
        // Fail fast: the first frame that cannot start valid UTF-8 fails, before the end.
        assert_eq!(messages.push(Kind::Text, false, part(b"ok")), Ok(None));
        assert_eq!(
            messages.push(Kind::Continuation, false, part(&[0xed, 0xa0, 0x80])),
            Err(close::INVALID_PAYLOAD),
            "a surrogate"
        );
        // A message that ends inside a code point is not text.
        let mut messages = Reassembler::new(None, 64);
        assert_eq!(messages.push(Kind::Text, false, part(b"a")), Ok(None));
        assert_eq!(
            messages.push(Kind::Continuation, true, part(&kappa[..1])),
            Err(close::INVALID_PAYLOAD)
        );
    }
}
