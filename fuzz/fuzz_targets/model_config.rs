//! The engine's model registry: any bytes as a `models.json` or
//! `models.toml` document give a registry or a typed error naming where the
//! problem is, never a panic; what parses obeys the registry's rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::{ConfigFormat, Registry};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if selector & 1 == 0 {
        ConfigFormat::Json
    } else {
        ConfigFormat::Toml
    };
    match Registry::parse(text, format, None) {
        Ok(registry) => {
            for (i, spec) in registry.models().iter().enumerate() {
                assert!(!spec.id.is_empty());
                assert!(!spec.devices.is_empty());
                assert!(spec.max_batch_size >= 1);
                assert!(registry.models()[..i].iter().all(|m| m.id != spec.id));
            }
        }
        Err(e) => {
            assert!(!e.reason.is_empty());
            let _ = e.to_string();
        }
    }
});
