//! Bounded queues between stages, with their depth and drops exported as metrics.
//!
//! Two policies: video frames go stale, so a full frame queue drops its *oldest* frame
//! (counted in `skynet_queue_dropped_total`); everything else blocks the producer, which
//! is how an incident is never dropped.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverloadPolicy {
    /// Make room by discarding the oldest queued item. For live video.
    DropOldest,
    /// Wait for room. For files replayed as fast as possible, and for everything after detection.
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the next stage has stopped")]
pub struct QueueClosed;

/// The sending side of a bounded stage queue.
#[derive(Debug)]
pub struct StageQueue<T> {
    name: &'static str,
    label: String,
    policy: OverloadPolicy,
    tx: Sender<T>,
    // A DropOldest queue evicts from the front itself. Only it holds a receiver: a blocking
    // queue must see its consumer go away, or a producer would wait forever.
    evict: Option<Receiver<T>>,
}

impl<T> Clone for StageQueue<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            label: self.label.clone(),
            policy: self.policy,
            tx: self.tx.clone(),
            evict: self.evict.clone(),
        }
    }
}

/// A queue named `name` (the metric's `queue` label), for `label` (a camera id, or the stage).
pub fn stage_queue<T>(
    name: &'static str,
    label: impl Into<String>,
    capacity: usize,
    policy: OverloadPolicy,
) -> (StageQueue<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let evict = (policy == OverloadPolicy::DropOldest).then(|| rx.clone());
    let q = StageQueue {
        name,
        label: label.into(),
        policy,
        tx,
        evict,
    };
    (q, rx)
}

impl<T> StageQueue<T> {
    /// Sends `item`; returns how many old items were dropped to make room.
    pub fn send(&self, item: T) -> Result<usize, QueueClosed> {
        let dropped = match self.policy {
            OverloadPolicy::Block => {
                self.tx.send(item).map_err(|_| QueueClosed)?;
                0
            }
            OverloadPolicy::DropOldest => self.send_dropping_oldest(item)?,
        };
        self.record_depth();
        Ok(dropped)
    }

    /// Like [`send`](Self::send) for a blocking queue, but gives up after `timeout` so the
    /// caller can check for shutdown; returns the item back on timeout.
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<Result<(), T>, QueueClosed> {
        match self.tx.send_timeout(item, timeout) {
            Ok(()) => {
                self.record_depth();
                Ok(Ok(()))
            }
            Err(crossbeam_channel::SendTimeoutError::Timeout(item)) => Ok(Err(item)),
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => Err(QueueClosed),
        }
    }

    fn send_dropping_oldest(&self, mut item: T) -> Result<usize, QueueClosed> {
        let mut dropped = 0;
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(QueueClosed),
                Err(TrySendError::Full(back)) => {
                    item = back;
                    let Some(evict) = &self.evict else {
                        return Err(QueueClosed);
                    };
                    match evict.try_recv() {
                        Ok(_stale) => {
                            dropped += 1;
                            metrics::counter!("skynet_queue_dropped_total", "queue" => self.name, "source" => self.label.clone())
                                .increment(1);
                        }
                        // A consumer took one meanwhile: there is room now.
                        Err(TryRecvError::Empty) => {}
                        Err(TryRecvError::Disconnected) => return Err(QueueClosed),
                    }
                }
            }
        }
        Ok(dropped)
    }

    fn record_depth(&self) {
        metrics::gauge!("skynet_queue_depth", "queue" => self.name, "source" => self.label.clone())
            .set(self.tx.len() as f64);
    }

    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// Receives with a timeout, telling apart "nothing yet" from "all senders are gone".
pub fn recv_or_closed<T>(rx: &Receiver<T>, timeout: Duration) -> Result<Option<T>, QueueClosed> {
    match rx.recv_timeout(timeout) {
        Ok(item) => Ok(Some(item)),
        Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(RecvTimeoutError::Disconnected) => Err(QueueClosed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_items() {
        let (q, rx) = stage_queue("test", "cam", 2, OverloadPolicy::DropOldest);
        assert_eq!(q.send(1).unwrap(), 0);
        assert_eq!(q.send(2).unwrap(), 0);
        assert_eq!(q.send(3).unwrap(), 1);
        assert_eq!(q.send(4).unwrap(), 1);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn send_after_receiver_is_gone_reports_closed() {
        let (q, rx) = stage_queue::<u32>("test", "cam", 1, OverloadPolicy::Block);
        drop(rx);
        assert_eq!(q.send(1), Err(QueueClosed));
    }
}
