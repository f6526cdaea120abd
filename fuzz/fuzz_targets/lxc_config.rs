#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lxgate::fuzzing::lxc_config(data));
