//! What a server sends (the load generator and clients read it): both codecs' decoders on
//! arbitrary bytes, and the snapshot-summary fast paths checked against the full decoder. The
//! MessagePack summary accepts a subset of what the full decoder does; the JSON one skips
//! payloads without checking their base64, so where the full decoder refuses it, it may not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickrelay_protocol::{Codec, ServerMessage, SnapshotSummary};

fuzz_target!(|bytes: &[u8]| {
    for codec in Codec::ALL {
        let general = codec.decode_server(bytes);
        let Some(summary) = codec.decode_snapshot_summary(bytes) else {
            continue;
        };
        match (&general, codec) {
            (Ok(ServerMessage::Snapshot(snapshot)), _) => {
                assert_eq!(summary, SnapshotSummary::from(snapshot), "{bytes:02x?}")
            }
            (Err(_), Codec::Json) => {}
            (other, _) => panic!("a summary where the full decoder gave {other:?}: {bytes:02x?}"),
        }
    }
});
