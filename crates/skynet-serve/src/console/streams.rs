//! Live-stream slots: `[api] max_streams_per_user` per user and `max_streams` in all. Each
//! open stream holds a broadcast receiver and a 30 s token check against the database, so
//! one token must not open hundreds; and one user's tabs never take another's slots beyond
//! the total.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Which cap refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamCap {
    PerUser,
    Total,
}

impl StreamCap {
    /// The `reason` label of `skynet_api_refused_total`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::PerUser => "streams_per_user",
            Self::Total => "streams_total",
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// The open streams, counted.
pub(crate) struct StreamSlots {
    per_user: usize,
    total: usize,
    open: Arc<Mutex<Open>>,
}

/// One open stream; its slot is freed when this drops (the stream ended or the tab closed).
pub(crate) struct StreamSlot {
    open: Arc<Mutex<Open>>,
    user: String,
}

impl StreamSlots {
    pub(crate) fn new(per_user: usize, total: usize) -> Self {
        Self {
            per_user,
            total,
            open: Arc::default(),
        }
    }

    pub(crate) fn acquire(&self, user: &str) -> Result<StreamSlot, StreamCap> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.per_user.get(user).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(StreamCap::PerUser);
        }
        if open.total >= self.total {
            return Err(StreamCap::Total);
        }
        open.total += 1;
        *open.per_user.entry(user.to_string()).or_insert(0) += 1;
        Ok(StreamSlot {
            open: Arc::clone(&self.open),
            user: user.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_user.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_user_and_in_all_and_a_dropped_slot_is_free_again() {
        let slots = StreamSlots::new(2, 3);
        let a1 = slots.acquire("a").unwrap();
        let _a2 = slots.acquire("a").unwrap();
        assert_eq!(slots.acquire("a").err(), Some(StreamCap::PerUser));
        let _b1 = slots.acquire("b").unwrap();
        assert_eq!(slots.acquire("b").err(), Some(StreamCap::Total));
        drop(a1);
        let _b2 = slots.acquire("b").unwrap();
        assert_eq!(slots.acquire("c").err(), Some(StreamCap::Total));
    }
}
