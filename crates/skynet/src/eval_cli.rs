//! `skynet eval`: the config's file cameras through the same pipeline code as `skynet run`,
//! at full speed and in event time, and the incidents scored against labelled events.

use std::path::PathBuf;
use std::process::ExitCode;

/// `skynet eval` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Labelled events, JSON Lines: `{"camera": ID, "category": C, "start_s": S, "end_s": E}`
    /// (or `grid` for `camera`, `start`/`end` in RFC 3339 for the offsets).
    #[arg(long)]
    pub labels: PathBuf,
    /// Object-level labels of a camera, MOTChallenge `gt.txt` (`CAMERA=PATH`; repeatable):
    /// per-class precision, recall and AP of its detections at IoU 0.5.
    #[arg(long, value_name = "CAMERA=GT.TXT")]
    pub objects: Vec<String>,
    /// Sweep a numeric config key over `FROM:TO:STEP` (repeatable: several make a grid),
    /// e.g. `detect.threshold=0.2:0.6:0.1`, `cameras.0.rules.0.min_frames=1:5:1`.
    #[arg(long, value_name = "KEY=FROM:TO:STEP")]
    pub sweep: Vec<String>,
    /// Set a config key before the run (repeatable), e.g. `risk.levels.iii=0.45`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where report.json and report.md (and for a sweep sweep.json, sweep.md and the plots)
    /// go.
    #[arg(long, default_value = "eval")]
    pub out: PathBuf,
    /// Sweep points run at once, each in a process of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// A sweep's recommended operating point: the highest recall at no more than this many
    /// false alarms per hour of footage.
    #[arg(long, default_value_t = 1.0)]
    pub max_false_per_hour: f64,
}

/// Runs `skynet eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("skynet eval: not built yet")
}
