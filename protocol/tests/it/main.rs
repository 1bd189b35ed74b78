//! Integration tests for the tickrelay v1 wire protocol: property-based round trips through both
//! codecs, decoder robustness on hostile input, golden byte vectors (the ones PROTOCOL.md shows),
//! the field-name contract and the fast decoders against the general one.

mod contract;
mod fast;
mod golden;
mod msgpack;
mod robustness;
mod roundtrip;
mod strategies;
