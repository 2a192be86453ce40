#![no_main]
//! The filter's reader of the proxy-wasm header map, compiled from the filter's
//! own source (the filter crate exposes no library API for it).

#[allow(dead_code)]
#[path = "../../../filter/src/host.rs"]
mod host;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let pairs = host::parse_header_map(data);
    // Each entry has 8 bytes of lengths in the table, and its value in the data.
    if !pairs.is_empty() {
        assert!(4 + 8 * pairs.len() <= data.len());
    }
    assert!(pairs.iter().map(|(_, v)| v.len()).sum::<usize>() <= data.len());
});
