//! Fault and attack tests of issue 21 ("nothing lost, nothing forged"), one binary so the
//! skynet crates are linked once: forged and replayed case statuses, readings acknowledged
//! only once durable, incremental state and its recovery, retention and a full disk, sinks
//! that refuse, and time that jumps. Every test starts its own brokers on spare ports and
//! waits for conditions, never for a fixed time.

#[path = "../common/mod.rs"]
mod common;

mod case_status;
mod clock;
mod disk;
mod sensor_acks;
mod sinks;
mod state;
