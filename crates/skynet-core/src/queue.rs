//! Bounded queues between stages, with their depth and drops exported as metrics.
//!
//! Two policies: video frames go stale, so a full frame queue drops its *oldest* frame
//! (counted in `skynet_queue_dropped_total`); everything else blocks the producer, which
//! is how an incident is never dropped.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    policy: OverloadPolicy,
    tx: Sender<T>,
    // A DropOldest queue evicts from the front itself. Only it holds a receiver: a blocking
    // queue must see its consumer go away, or a producer would wait forever.
    evict: Option<Receiver<T>>,
    // Consumers still alive. The evicting receiver keeps the channel open, so a DropOldest
    // queue learns that later stages are gone from this count instead.
    consumers: Arc<AtomicUsize>,
    depth: metrics::Gauge,
    dropped: metrics::Counter,
}

impl<T> Clone for StageQueue<T> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy,
            tx: self.tx.clone(),
            evict: self.evict.clone(),
            consumers: Arc::clone(&self.consumers),
            depth: self.depth.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

/// The receiving side. It keeps the depth gauge current as items leave, so an idle queue
/// reads 0 rather than its depth at the last send.
#[derive(Debug)]
pub struct StageReceiver<T> {
    rx: Receiver<T>,
    depth: metrics::Gauge,
    consumers: Arc<AtomicUsize>,
}

impl<T> Clone for StageReceiver<T> {
    fn clone(&self) -> Self {
        self.consumers.fetch_add(1, Ordering::SeqCst);
        Self {
            rx: self.rx.clone(),
            depth: self.depth.clone(),
            consumers: Arc::clone(&self.consumers),
        }
    }
}

impl<T> Drop for StageReceiver<T> {
    fn drop(&mut self) {
        self.consumers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A queue named `name` (the metric's `queue` label), for `label` (a camera id, or the stage).
pub fn stage_queue<T>(
    name: &'static str,
    label: impl Into<String>,
    capacity: usize,
    policy: OverloadPolicy,
) -> (StageQueue<T>, StageReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let label: String = label.into();
    // Resolved once: the per-item cost is an atomic store, not a registry lookup.
    let depth = metrics::gauge!("skynet_queue_depth", "queue" => name, "source" => label.clone());
    let dropped =
        metrics::counter!("skynet_queue_dropped_total", "queue" => name, "source" => label);
    let evict = (policy == OverloadPolicy::DropOldest).then(|| rx.clone());
    let consumers = Arc::new(AtomicUsize::new(1));
    let queue = StageQueue {
        policy,
        tx,
        evict,
        consumers: Arc::clone(&consumers),
        depth: depth.clone(),
        dropped,
    };
    (
        queue,
        StageReceiver {
            rx,
            depth,
            consumers,
        },
    )
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
        self.depth.set(self.tx.len() as f64);
        Ok(dropped)
    }

    fn send_dropping_oldest(&self, mut item: T) -> Result<usize, QueueClosed> {
        if !self.has_consumers() {
            return Err(QueueClosed);
        }
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
                            self.dropped.increment(1);
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

    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// False once every receiver is gone: the next stage has stopped.
    pub fn has_consumers(&self) -> bool {
        self.consumers.load(Ordering::SeqCst) > 0
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

impl<T> StageReceiver<T> {
    /// Waits up to `timeout`: `Ok(None)` when nothing came, `Err` once every sender is gone
    /// and the queue is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<T>, QueueClosed> {
        let result = match self.rx.recv_timeout(timeout) {
            Ok(item) => Ok(Some(item)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(QueueClosed),
        };
        self.took();
        result
    }

    /// The channel itself, for `crossbeam_channel::Select` over several queues; call
    /// [`took`](Self::took) after receiving through it.
    pub fn channel(&self) -> &Receiver<T> {
        &self.rx
    }

    /// Updates the depth gauge after an item left through [`channel`](Self::channel).
    pub fn took(&self) {
        self.depth.set(self.rx.len() as f64);
    }

    /// Receives until every sender is gone.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.rx.iter().inspect(|_| self.took())
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
        assert_eq!(rx.channel().try_iter().collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn drop_oldest_queue_notices_its_consumers_are_gone() {
        let (q, rx) = stage_queue::<u32>("test", "cam", 2, OverloadPolicy::DropOldest);
        let rx2 = rx.clone();
        drop(rx);
        assert_eq!(q.send(1), Ok(0));
        drop(rx2);
        assert!(!q.has_consumers());
        assert_eq!(q.send(2), Err(QueueClosed));
    }

    #[test]
    fn send_after_receiver_is_gone_reports_closed() {
        let (q, rx) = stage_queue::<u32>("test", "cam", 1, OverloadPolicy::Block);
        drop(rx);
        assert_eq!(q.send(1), Err(QueueClosed));
    }
}
