#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| firstcall_turn::fuzzing::run(data, std::time::Instant::now()));
