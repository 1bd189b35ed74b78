//! The snapshot summary fast path (what a measuring client decodes per snapshot) against the
//! general decoder, on arbitrary snapshots.

use proptest::prelude::*;
use tickrelay_protocol::{Codec, ServerMessage, SnapshotSummary};

use crate::strategies::snapshot;

proptest! {
    #[test]
    fn summary_matches_the_full_decoder(snapshot in snapshot()) {
        let expected = SnapshotSummary::from(&snapshot);
        let message = ServerMessage::Snapshot(snapshot);
        for codec in Codec::ALL {
            let bytes = codec.encode(&message).unwrap();
            prop_assert_eq!(codec.decode_snapshot_summary(&bytes), Some(expected.clone()));
        }
    }

    #[test]
    fn every_truncation_is_declined(snapshot in snapshot()) {
        let bytes = Codec::MessagePack.encode(&ServerMessage::Snapshot(snapshot)).unwrap();
        for end in 0..bytes.len() {
            prop_assert_eq!(Codec::MessagePack.decode_snapshot_summary(&bytes[..end]), None);
        }
    }
}
