#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| firstcall_stun::fuzzing::decode(data));
