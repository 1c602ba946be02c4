//! The files the operator writes and the server reads (types in crds/,
//! loaders in server/src/files/reload.rs): config.yaml, keyset.json,
//! api-keys.json, and the Go durations inside them.
//!
//! Properties:
//! - no input panics; a bad file is an `Err`;
//! - what a loader accepts is valid and survives being written back: the
//!   API-key table and the config re-serialise to text that loads to the
//!   same value, an accepted keyset re-serialised loads again, and a
//!   duration's printed form parses to the same duration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securechat_crds::Duration;
use securechat_crds::files::keyset::SigningKeySet;
use securechat_server::files::reload::{parse_config, parse_keyset, parse_table};

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(runtime) = parse_config(bytes) {
                let config = &runtime.config;
                let text = serde_yaml::to_string(config).expect("a config serialises");
                let again = parse_config(text.as_bytes())
                    .unwrap_or_else(|e| panic!("written back, the config fails: {e}\n{text}"));
                assert_eq!(&again.config, config, "the config changed on the way back");
            }
        }
        1 => {
            if parse_keyset(bytes).is_ok() {
                let set: SigningKeySet =
                    serde_json::from_slice(bytes).expect("an accepted keyset is JSON");
                let text = serde_json::to_vec(&set).expect("a keyset serialises");
                if let Err(e) = parse_keyset(&text) {
                    panic!("written back, the keyset fails: {e}");
                }
            }
        }
        2 => {
            if let Ok(table) = parse_table(bytes) {
                table.validate().expect("an accepted table is valid");
                let text = serde_json::to_vec(&table).expect("a table serialises");
                let again = parse_table(&text)
                    .unwrap_or_else(|e| panic!("written back, the table fails: {e}"));
                assert_eq!(again, table, "the table changed on the way back");
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return;
            };
            if let Ok(d) = text.parse::<Duration>() {
                let printed = d.to_string();
                let again: Duration = printed
                    .parse()
                    .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}: {e}"));
                assert_eq!(again, d, "{text:?} printed as {printed:?}");
            }
        }
    }
});
