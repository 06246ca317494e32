//! The registry of component kinds: each stage crate registers its own kinds (sources,
//! rules, sinks, ...) with their config types, validation and `build()`; the binary only
//! collects them. A new kind is one module and one line in its own crate's `register`.

use skynet_core::Registry;

/// Every kind skynet knows.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    skynet_ingest::register(&mut registry);
    skynet_detect::register(&mut registry);
    skynet_risk::register(&mut registry);
    skynet_emit::register(&mut registry);
    registry
}
