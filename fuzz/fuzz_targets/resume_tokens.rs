//! Resume-token parsing: arbitrary strings never verify and never panic; tokens issued for
//! arbitrary claims verify to exactly those claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| tickrelay_server::fuzzing::resume_token(bytes));
