//! Fuzzes the launch-spec parser, `vireo_spec::VmConfig::from_json`: the one reader of the JSON
//! `vireo launch` takes from a file or a pod annotation.
//!
//! Input: the bytes of a would-be spec (UTF-8 is required by JSON; other bytes are refused
//! without reaching the parser). Properties: the parser never panics; what it accepts passes
//! validation, and serializes to JSON it reads back as the same config.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_spec::VmConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = VmConfig::from_json(text) {
        assert_eq!(config.validate(), Ok(()));
        let again = serde_json::to_string(&config).expect("an accepted spec serializes");
        let reread = VmConfig::from_json(&again).expect("a serialized spec reads back");
        assert_eq!(reread, config);
    }
});
