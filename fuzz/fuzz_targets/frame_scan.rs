#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| firstcall_signal::scan::fuzz(data));
