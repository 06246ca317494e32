//! `skynet outbox dead-letters` and `skynet outbox replay`: the events a sink's destination
//! refused for good (a webhook answering 400), kept in the outbox's `dead_letters` table.
//!
//! A sink's cursor has already passed its dead letters, so a replay does not move it back:
//! it queues the letters, and the sink's worker (in `skynet run`, now or at its next start)
//! delivers them before its next events. A letter delivered is removed; one refused again
//! stays, with the new reason.

use skynet_emit::{DeadLetter, EmitError, Outbox};

use crate::PipelineConfig;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no sink named `{name}` in the config; its sinks: {known}")]
    UnknownSink { name: String, known: String },
    #[error(transparent)]
    Outbox(#[from] EmitError),
}

/// The sinks to act on: `sink`, checked against the config, or every configured sink.
fn sinks<'a>(
    config: &'a PipelineConfig,
    sink: Option<&'a str>,
) -> Result<Vec<&'a str>, DeadLetterError> {
    let configured: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    match sink {
        None => Ok(configured),
        Some(name) if configured.contains(&name) => Ok(vec![name]),
        Some(name) => Err(DeadLetterError::UnknownSink {
            name: name.to_string(),
            known: if configured.is_empty() {
                "none".into()
            } else {
                configured.join(", ")
            },
        }),
    }
}

/// The dead letters of `sink` (or of every sink, configured or not), by sink and outbox
/// order.
pub fn list(
    config: &PipelineConfig,
    sink: Option<&str>,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    if sink.is_some() {
        sinks(config, sink)?;
    }
    Ok(Outbox::open(&config.outbox)?.dead_letters(sink)?)
}

/// Queues dead letters for delivery again: those with event id `id` (or all), of `sink` (or
/// of every configured sink). Returns how many were queued.
pub fn replay(
    config: &PipelineConfig,
    sink: Option<&str>,
    id: Option<&str>,
) -> Result<usize, DeadLetterError> {
    let outbox = Outbox::open(&config.outbox)?;
    let mut queued = 0;
    for name in sinks(config, sink)? {
        queued += outbox.request_replay(Some(name), id)?;
    }
    Ok(queued)
}

/// One line of the text listing: `seq id sink status at reason`, the reason on one line and
/// cut short (`--json` has it whole). The reason and id came from outside (a destination's
/// answer, an event): control characters in them are shown escaped, never obeyed.
pub fn text_line(letter: &DeadLetter) -> String {
    use skynet_core::escape_control;
    const REASON_CHARS: usize = 120;
    let flat: String = letter
        .reason
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut reason: String = flat.chars().take(REASON_CHARS).collect();
    if flat.chars().count() > REASON_CHARS {
        reason.push('…');
    }
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}{}",
        letter.seq,
        escape_control(&letter.id),
        escape_control(&letter.sink),
        letter.status.map_or("-".to_string(), |s| s.to_string()),
        letter.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        escape_control(&reason),
        if letter.replay {
            "\t(replay queued)"
        } else {
            ""
        },
    )
}
