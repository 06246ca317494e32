//! Every component reports its state here; `/readyz` and `skynet_component_up` read it.
//!
//! A component is named by `(component, kind)`: `("cam-street-01", "source")`,
//! `("detect", "stage")`, `("jsonl", "sink")`. The gauge `skynet_component_up{component,kind}`
//! is 1 while the component works (or has finished its work, like a file that was read to
//! the end) and 0 while it starts, retries or is down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Built, not yet working.
    Starting,
    /// Working.
    Up,
    /// Failed and waiting to try again.
    Retrying,
    /// Failed for good, or stopped while it should run.
    Down,
    /// Done with all its work (a file read to the end). Not a failure.
    Finished,
}

impl ComponentState {
    /// Counts as up for `skynet_component_up` and `/readyz`.
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Up | Self::Finished)
    }
}

/// One component's state, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentStatus {
    pub component: String,
    pub kind: String,
    pub state: ComponentState,
    /// Why it is not up (the last error), without secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failed attempts since it was last up.
    pub retries: u32,
    pub since: DateTime<Utc>,
    /// The component's own finer state, where it has one (a camera: `starting`, `running`,
    /// `stalled`, `retrying`, `stopped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A source's last frame (wall clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_frame_at: Option<DateTime<Utc>>,
}

/// What `/readyz` answers: ready when every component is ok.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    pub ready: bool,
    pub components: Vec<ComponentStatus>,
}

type Key = (String, String);

/// The process-wide table of component states. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<Key, ComponentStatus>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a component in state `Starting` and returns its handle.
    pub fn register(
        &self,
        component: impl Into<String>,
        kind: impl Into<String>,
    ) -> ComponentHealth {
        let (component, kind) = (component.into(), kind.into());
        let up = metrics::gauge!("skynet_component_up", "component" => component.clone(), "kind" => kind.clone());
        up.set(0.0);
        let status = ComponentStatus {
            component: component.clone(),
            kind: kind.clone(),
            state: ComponentState::Starting,
            reason: None,
            retries: 0,
            since: Utc::now(),
            detail: None,
            last_frame_at: None,
        };
        self.lock()
            .insert((component.clone(), kind.clone()), status);
        ComponentHealth {
            health: self.clone(),
            key: (component, kind),
            up,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, ComponentStatus>> {
        // A panic elsewhere must not take health reporting down with it.
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn report(&self) -> HealthReport {
        let components: Vec<ComponentStatus> = self.lock().values().cloned().collect();
        HealthReport {
            ready: components.iter().all(|c| c.state.is_ok()),
            components,
        }
    }

    /// The state of one component, if registered.
    pub fn state(&self, component: &str, kind: &str) -> Option<ComponentStatus> {
        self.lock()
            .get(&(component.to_string(), kind.to_string()))
            .cloned()
    }
}

/// A component's handle for reporting its own state.
#[derive(Debug, Clone)]
pub struct ComponentHealth {
    health: Health,
    key: Key,
    up: metrics::Gauge,
}

impl ComponentHealth {
    /// A handle that reports into a table of its own: for tests and tools that run one stage.
    pub fn detached(component: &str, kind: &str) -> Self {
        Health::new().register(component, kind)
    }

    pub fn up(&self) {
        self.set(ComponentState::Up, None);
    }

    pub fn finished(&self) {
        self.set(ComponentState::Finished, None);
    }

    /// Failed; will try again. Counts a retry.
    pub fn retrying(&self, reason: impl Into<String>) {
        self.set(ComponentState::Retrying, Some(reason.into()));
    }

    pub fn down(&self, reason: impl Into<String>) {
        self.set(ComponentState::Down, Some(reason.into()));
    }

    pub fn set(&self, state: ComponentState, reason: Option<String>) {
        self.up.set(if state.is_ok() { 1.0 } else { 0.0 });
        let mut table = self.health.lock();
        if let Some(status) = table.get_mut(&self.key) {
            if status.state != state {
                status.since = Utc::now();
            }
            match state {
                ComponentState::Retrying => status.retries = status.retries.saturating_add(1),
                ComponentState::Up => status.retries = 0,
                _ => {}
            }
            status.state = state;
            status.reason = reason;
        }
    }

    /// Sets the finer state and last frame time shown beside the state.
    pub fn describe(&self, detail: Option<&str>, last_frame_at: Option<DateTime<Utc>>) {
        let mut table = self.health.lock();
        if let Some(status) = table.get_mut(&self.key) {
            status.detail = detail.map(str::to_string);
            status.last_frame_at = last_frame_at;
        }
    }

    pub fn status(&self) -> Option<ComponentStatus> {
        self.health.state(&self.key.0, &self.key.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is_ok() {
        let health = Health::new();
        let source = health.register("cam-1", "source");
        let sink = health.register("jsonl", "sink");
        assert!(!health.report().ready);
        source.up();
        sink.up();
        assert!(health.report().ready);
        source.retrying("connection refused");
        source.retrying("connection refused");
        let report = health.report();
        assert!(!report.ready);
        let cam = report
            .components
            .iter()
            .find(|c| c.component == "cam-1")
            .unwrap();
        assert_eq!((cam.state, cam.retries), (ComponentState::Retrying, 2));
        source.finished();
        assert!(health.report().ready);
    }
}
