//! One connection's session (the server's frame reader, reassembly, limits, message handling,
//! lobby commands and writer) driven by arbitrary frames over an in-memory stream: no panic,
//! and everything the server sends back is well-formed and decodable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| tickrelay_server::fuzzing::session(bytes));
