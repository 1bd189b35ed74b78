//! Integration tests for the tickrelay v1 wire protocol: property-based round trips through both
//! codecs, decoder robustness on hostile input, golden byte vectors (the ones PROTOCOL.md shows)
//! and the field-name contract.

mod contract;
mod golden;
mod msgpack;
mod robustness;
mod roundtrip;
mod strategies;
mod summary;
