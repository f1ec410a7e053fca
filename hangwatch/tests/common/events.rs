//! Reading the daemon's events: field accessors, and the invariants every episode keeps.
use std::collections::{BTreeSet, HashMap};

use super::{Received, Value};

/// `v[key]` as a string, or "" if absent or not a string.
pub fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `v[key]` as an integer; panics with the event if it is missing.
pub fn u64_of(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("event has no integer {pointer}: {v}"))
}

pub fn is_event(v: &Value, event: &str, kind: &str, tid: u32) -> bool {
    v["event"] == event && v["kind"] == kind && v["tid"].as_u64() == Some(u64::from(tid))
}

/// Parses "0x..." (or decimal) into a number.
pub fn parse_address(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The symbols of the event's kernel stack.
pub fn kernel_symbols(v: &Value) -> Vec<String> {
    v["kernel_stack"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["symbol"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Invariants of every episode in a stream: one hang first, updates with a growing
/// duration, at most one resolved, last; the same thread and kind throughout.
pub fn check_episodes(events: &[Received]) {
    let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in events {
        by_id
            .entry(str_of(&r.value, "/id"))
            .or_default()
            .push(&r.value);
    }
    for (id, episode) in by_id {
        let names: Vec<&str> = episode.iter().map(|v| str_of(v, "/event")).collect();
        assert_eq!(
            names.first(),
            Some(&"hang"),
            "episode {id} must start with its hang: {names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| **n == "hang").count(),
            1,
            "episode {id}: {names:?}"
        );
        let resolved = names.iter().filter(|n| **n == "resolved").count();
        assert!(resolved <= 1, "episode {id} resolved twice: {names:?}");
        if resolved == 1 {
            assert_eq!(
                names.last(),
                Some(&"resolved"),
                "events after resolved in episode {id}: {names:?}"
            );
        }
        let first = episode[0];
        let mut last_duration = 0;
        for v in &episode {
            assert_eq!(v["tid"], first["tid"], "episode {id} changed thread: {v}");
            assert_eq!(v["kind"], first["kind"], "episode {id} changed kind: {v}");
            let duration = u64_of(v, "/duration_ms");
            assert!(
                duration >= last_duration,
                "episode {id}: duration_ms went back to {duration}: {v}"
            );
            last_duration = duration;
        }
    }
}

/// Every distinct episode id among `events` of `kind`.
pub fn episode_ids(events: &[Received], kind: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|r| str_of(&r.value, "/kind") == kind)
        .map(|r| str_of(&r.value, "/id").to_owned())
        .collect()
}

/// The symbols of the frames at `pointer` (a stack), innermost first.
pub fn symbols(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f["symbol"].as_str().map(str::to_owned))
        .collect()
}
