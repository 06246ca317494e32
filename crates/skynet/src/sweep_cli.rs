//! `skynet eval --sweep KEY=FROM:TO:STEP ...`: every point of the grid evaluated by a
//! `skynet eval` process of its own (`--jobs` at once), then `sweep.json`, `sweep.md` and
//! the plots.
//!
//! Layout of `--out DIR`:
//! - `DIR/points/NNN/`: point NNN's `report.json`, `report.md` and `log.txt` (the child's
//!   standard output and error);
//! - `DIR/sweep.json`, `DIR/sweep.md`: one row per point, the recommended point and its
//!   criterion;
//! - `DIR/pr_curve.svg|png`, `DIR/false_per_hour_<key>.svg|png`.
//!
//! Before any point starts, the first point's config, the labels (parsed and checked against
//! its cameras) and `--objects` (cameras and `gt.txt` files) are checked: an error there
//! exits 2, as a single evaluation does, with no point run.
//!
//! Ctrl-C (or SIGTERM) starts no new point, stops the running ones (SIGTERM, then SIGKILL
//! after a grace period), marks them and the ones not started `cancelled`, writes what
//! finished (points that finished as the stop came included), and exits 130. A second
//! Ctrl-C during the grace period exits 130 at once (the points die with the sweep). A point
//! whose process fails is a `failed` row with the first error line of its log; the sweep
//! goes on, and exits 1.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use skynet_eval::score::Report;
use skynet_eval::sweep::{self, Axis, PointStatus, SweepRow};

use crate::eval_cli::EvalArgs;

/// How long a stopped point gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How often the running points are looked at.
const POLL: Duration = Duration::from_millis(50);

/// Runs a sweep: `skynet eval` with at least one `--sweep`.
pub fn run_sweep(args: &EvalArgs) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    // The whole config read once with the first point's values: a mistyped key or a value
    // of the wrong type is one error now rather than a failed row per point.
    if let Some(first) = plan.points.first() {
        let text = sweep::apply_overrides(&plan.config_text, &plan.overrides(first))?;
        let config = crate::PipelineConfig::parse(&args.config, &text)
            .context("the config with the sweep's first point")?;
        check_inputs(args, &config)?;
    }
    let exe = std::env::current_exe().context("finding the skynet executable")?;
    let cancel = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal (while the points are stopped) exits at once: registered before
        // the flag, so the first one only sets it.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&cancel))
            .context("installing signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&cancel))
            .context("installing signal handlers")?;
    }
    let outcome = run_points(&exe, &[], args, &plan, &cancel, true)?;
    finish(args, &plan, outcome)
}

/// The labels and `--objects` against the first point's config, as a single evaluation
/// checks them: one error now rather than a failed row per point.
fn check_inputs(args: &EvalArgs, config: &crate::PipelineConfig) -> Result<()> {
    let labels = skynet_eval::labels::parse_labels(&args.labels)?;
    let cameras: Vec<(String, String)> = config
        .cameras
        .iter()
        .map(|c| (c.id.to_string(), c.grid.to_string()))
        .collect();
    skynet_eval::labels::check_targets(&args.labels, &labels, &cameras)?;
    for objects in crate::eval_cli::object_labels(args, config)? {
        skynet_eval::objects::parse_gt(&objects.gt, &config.model.labels)?;
    }
    Ok(())
}

/// The grid, checked against the config.
struct Plan {
    axes: Vec<Axis>,
    points: Vec<Vec<(String, f64)>>,
    config_text: String,
    /// `--set`.
    set: Vec<(String, f64)>,
}

impl Plan {
    fn new(args: &EvalArgs) -> Result<Self> {
        if !(args.max_false_per_hour.is_finite() && args.max_false_per_hour >= 0.0) {
            anyhow::bail!(
                "--max-false-per-hour must be a number of at least 0, got {}",
                args.max_false_per_hour
            );
        }
        let axes = sweep::parse_axes(&args.sweep)?;
        let points = sweep::grid(&axes);
        let text = std::fs::read_to_string(&args.config)
            .with_context(|| format!("reading the config {}", args.config.display()))?;
        let set = args
            .set
            .iter()
            .map(|s| sweep::parse_set(s))
            .collect::<Result<Vec<_>, _>>()?;
        // Every point's values fit the config (an integer key takes whole numbers only).
        let plan = Plan {
            axes,
            points,
            config_text: text,
            set,
        };
        for point in &plan.points {
            sweep::apply_overrides(&plan.config_text, &plan.overrides(point))
                .with_context(|| format!("--sweep on {}", args.config.display()))?;
        }
        Ok(plan)
    }

    /// A point's overrides: `--set`, then its values (which win).
    fn overrides(&self, point: &[(String, f64)]) -> Vec<(String, f64)> {
        self.set.iter().chain(point).cloned().collect()
    }

    fn dir_name(&self, index: usize) -> String {
        let width = self.points.len().saturating_sub(1).to_string().len().max(3);
        format!("points/{index:0width$}")
    }
}

/// `--set` for a point: the command line's, then the point's values (which win).
fn point_sets(args: &EvalArgs, point: &[(String, f64)]) -> Vec<String> {
    args.set
        .iter()
        .cloned()
        .chain(
            point
                .iter()
                .map(|(k, v)| format!("{k}={}", sweep::format_value(*v))),
        )
        .collect()
}

/// What the points came to.
struct Outcome {
    rows: Vec<SweepRow>,
    cancelled: bool,
}

struct Running {
    index: usize,
    child: Child,
}

/// Runs every point as `EXE PREFIX... eval --config .. --labels .. --set .. --out
/// DIR/points/NNN`, `args.jobs` at once, until all are done or `cancel` is set.
fn run_points(
    exe: &Path,
    prefix: &[OsString],
    args: &EvalArgs,
    plan: &Plan,
    cancel: &AtomicBool,
    progress: bool,
) -> Result<Outcome> {
    let points_dir = args.out.join("points");
    std::fs::create_dir_all(&points_dir)
        .with_context(|| format!("creating {}", points_dir.display()))?;
    let mut rows: Vec<SweepRow> = plan
        .points
        .iter()
        .enumerate()
        .map(|(i, p)| SweepRow::new(i, p, plan.dir_name(i), PointStatus::Cancelled))
        .collect();
    let bar = progress_bar(rows.len(), progress);
    let jobs = (args.jobs.max(1)) as usize;
    let mut next = 0usize;
    let mut running: Vec<Running> = Vec::new();
    let mut failed = 0usize;
    loop {
        if cancel.load(Ordering::SeqCst) {
            break;
        }
        while running.len() < jobs && next < rows.len() {
            let index = next;
            next += 1;
            match spawn_point(exe, prefix, args, plan, index) {
                Ok(child) => running.push(Running { index, child }),
                Err(e) => {
                    rows[index].status = PointStatus::Failed;
                    rows[index].error = Some(format!("{e:#}"));
                    failed += 1;
                    bar.inc(1);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let mut finished = Vec::new();
        let mut i = 0;
        while i < running.len() {
            match running[i].child.try_wait() {
                Ok(Some(status)) => finished.push((running.swap_remove(i), Ok(status))),
                Ok(None) => i += 1,
                Err(e) => finished.push((running.swap_remove(i), Err(e))),
            }
        }
        if finished.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        // Points that finished are recorded even when the stop came meanwhile (the points
        // run in their own process group: a Ctrl-C does not reach them); the loop's head
        // then stops the rest.
        for (run, status) in finished {
            let row = &mut rows[run.index];
            let dir = args.out.join(&row.dir);
            match point_result(&dir, status) {
                Ok(report) => {
                    row.status = PointStatus::Ok;
                    row.figures = Some(report.overall);
                    row.per_category = report.per_category;
                    row.per_camera = report.per_camera;
                }
                Err(e) => {
                    row.status = PointStatus::Failed;
                    // Above the bar where there is one; on standard error in any case.
                    bar.suspend(|| {
                        eprintln!("point {} ({}) failed: {e}", run.index, describe(row, plan))
                    });
                    row.error = Some(e);
                    failed += 1;
                }
            }
            bar.inc(1);
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
        }
    }
    let cancelled = cancel.load(Ordering::SeqCst);
    if cancelled {
        bar.suspend(|| {
            eprintln!(
                "stopping: {} running point(s) stopped, {} not started",
                running.len(),
                rows.len() - next
            )
        });
        stop(running);
    }
    bar.finish_and_clear();
    Ok(Outcome { rows, cancelled })
}

fn describe(row: &SweepRow, plan: &Plan) -> String {
    row.describe(&plan.axes)
}

fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    // Drawn on standard error, and only where that is a terminal.
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "sweep [{bar:30}] {pos}/{len} points, {elapsed} elapsed, ETA {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Starts one point's `skynet eval`, its output into `points/NNN/log.txt`.
fn spawn_point(
    exe: &Path,
    prefix: &[OsString],
    args: &EvalArgs,
    plan: &Plan,
    index: usize,
) -> Result<Child> {
    let dir = args.out.join(plan.dir_name(index));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A report left by an earlier sweep is not this point's.
    for stale in ["report.json", "report.md"] {
        match std::fs::remove_file(dir.join(stale)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", dir.join(stale).display()));
            }
            _ => {}
        }
    }
    let log_path = dir.join("log.txt");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(prefix)
        .arg("eval")
        .arg("--config")
        .arg(&args.config)
        .arg("--labels")
        .arg(&args.labels);
    for o in &args.objects {
        cmd.arg("--objects").arg(o);
    }
    for s in point_sets(args, &plan.points[index]) {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--out")
        .arg(&dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // Its own process group: a Ctrl-C in the terminal reaches the sweep, which stops the
    // points itself; and a point dies with the sweep.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, and calls only prctl(2),
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// The point's report, or why there is none (the first error line of its log).
fn point_result(dir: &Path, status: std::io::Result<ExitStatus>) -> Result<Report, String> {
    let status = status.map_err(|e| format!("waiting for it: {e}"))?;
    if !status.success() {
        let how = match (status.code(), status_signal(&status)) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        };
        return Err(match first_error_line(&dir.join("log.txt")) {
            Some(line) => line,
            None => format!("{how} (see {})", dir.join("log.txt").display()),
        });
    }
    let path = dir.join("report.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn status_signal(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// The first line of a log that reads as an error (`error: ...`, or a log line at ERROR),
/// else its last line; without ANSI colours, at most 300 characters.
fn first_error_line(log: &Path) -> Option<String> {
    let file = std::fs::File::open(log).ok()?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .map_while(|l| l.ok())
        .map(|l| strip_ansi(&l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let pick = lines
        .iter()
        .find(|l| l.starts_with("error"))
        .or_else(|| lines.iter().find(|l| l.contains(" ERROR ")))
        .or_else(|| lines.last())?;
    Some(
        skynet_core::escape_control_lines(&pick.chars().take(300).collect::<String>()).into_owned(),
    )
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters up to the final byte (a letter).
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Stops the running points: SIGTERM, and SIGKILL to any still there after [`GRACE`].
fn stop(mut running: Vec<Running>) {
    for run in &running {
        if let Ok(pid) = libc::pid_t::try_from(run.child.id()) {
            // SAFETY: kill(2) on our own child, not yet waited for (its pid is still ours).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + GRACE;
    while !running.is_empty() && Instant::now() < deadline {
        running.retain_mut(|r| matches!(r.child.try_wait(), Ok(None)));
        if !running.is_empty() {
            std::thread::sleep(POLL);
        }
    }
    for mut run in running {
        let _ = run.child.kill();
        let _ = run.child.wait();
    }
}

/// Writes the sweep's files and the summary; the exit code.
fn finish(args: &EvalArgs, plan: &Plan, outcome: Outcome) -> Result<ExitCode> {
    let summary = write_outputs(args, plan, &outcome)?;
    print!("{summary}");
    Ok(if outcome.cancelled {
        ExitCode::from(130)
    } else if outcome.rows.iter().any(|r| r.status != PointStatus::Ok) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `sweep.json`, `sweep.md` and the plots; returns the summary for standard output.
fn write_outputs(args: &EvalArgs, plan: &Plan, outcome: &Outcome) -> Result<String> {
    let rows = &outcome.rows;
    let rec = sweep::recommend(rows, args.max_false_per_hour);
    let file = sweep::write_sweep(
        &args.out,
        &plan.axes,
        rows,
        rec.as_ref(),
        args.max_false_per_hour,
    )?;
    let mut files: Vec<PathBuf> = vec![args.out.join("sweep.json"), args.out.join("sweep.md")];
    match skynet_eval::plot::write_plots(
        &args.out,
        &plan.axes,
        rows,
        rec.as_ref().map(|r| r.index),
        args.max_false_per_hour,
    ) {
        Ok(plots) => {
            for w in &plots.warnings {
                eprintln!("warning: {w}");
            }
            files.extend(plots.files);
        }
        Err(e) => eprintln!("warning: the plots: {e}"),
    }
    let mut out = format!(
        "sweep: {} point(s): {} ok, {} failed, {} cancelled{}\n",
        file.points,
        file.ok,
        file.failed,
        file.cancelled,
        if outcome.cancelled { " (stopped)" } else { "" }
    );
    for row in rows.iter().filter(|r| r.status == PointStatus::Failed) {
        out.push_str(&format!(
            "  point {} ({}) failed: {}\n",
            row.index,
            row.describe(&plan.axes),
            row.error.as_deref().unwrap_or("-")
        ));
    }
    match &rec {
        Some(r) => {
            let row = &rows[r.index];
            let f = row.figures.clone().unwrap_or_default();
            out.push_str(&format!(
                "recommended: point {} ({}): recall {:.3}, precision {:.3}, {:.2} false alarms per hour\n  criterion: {}\n",
                r.index,
                row.describe(&plan.axes),
                f.recall,
                f.precision,
                f.false_alarms_per_hour,
                r.criterion
            ));
        }
        None => out.push_str("recommended: none (no point finished)\n"),
    }
    out.push_str(&format!(
        "wrote {}\n",
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_eval::score::Figures;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn args(dir: &Path, sweep: &[&str], jobs: u32) -> EvalArgs {
        use clap::Parser;
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "[detect]\nthreshold = 0.5 # score\nmin_frames = 2\n",
        )
        .unwrap();
        let mut argv: Vec<OsString> = vec!["eval".into(), "--config".into(), config.into()];
        argv.extend(["--labels".into(), dir.join("labels.jsonl").into()]);
        argv.extend(["--objects".into(), "cam-1=gt.txt".into()]);
        argv.extend(["--set".into(), "detect.min_frames=3".into()]);
        argv.extend(["--out".into(), dir.join("out").into()]);
        argv.extend(["--jobs".into(), jobs.to_string().into()]);
        for s in sweep {
            argv.extend(["--sweep".into(), OsString::from(*s)]);
        }
        Cli::parse_from(argv).eval
    }

    /// A stand-in for `skynet eval`: copies `reports/<threshold>.json` to `--out`; fails
    /// at 0.3; at 0.4 touches `marker` and sleeps (until stopped).
    fn fake(dir: &Path, thresholds: &[f64]) -> PathBuf {
        let reports = dir.join("reports");
        std::fs::create_dir_all(&reports).unwrap();
        for &t in thresholds {
            let report = Report {
                overall: Figures {
                    recall: 1.0 - t,
                    precision: 0.5 + t,
                    false_alarms_per_hour: 4.0 * (1.0 - t),
                    ..Figures::default()
                },
                ..Report::default()
            };
            std::fs::write(
                reports.join(format!("{}.json", sweep::format_value(t))),
                serde_json::to_string(&report).unwrap(),
            )
            .unwrap();
        }
        let script = dir.join("fake.sh");
        std::fs::write(
            &script,
            format!(
                r#"out=""; t=""; args="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2;;
    --set) case "$2" in detect.threshold=*) t="${{2#detect.threshold=}}";; esac; shift 2;;
    *) shift;;
  esac
done
echo "args: $args"
case "$t" in
  0.3) echo "starting" >&2; echo "error: no model at $t" >&2; echo "error: second" >&2; exit 2;;
  0.4) touch "{dir}/marker"; exec sleep 60;;
esac
cp "{reports}/$t.json" "$out/report.json"
"#,
                dir = dir.display(),
                reports = reports.display()
            ),
        )
        .unwrap();
        script
    }

    fn wait_for(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn runs_every_point_and_writes_the_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let script = fake(tmp.path(), &[0.1, 0.2, 0.5, 0.6]);
        let args = args(tmp.path(), &["detect.threshold=0.1:0.6:0.1"], 1);
        let plan = Plan::new(&args).unwrap();
        let sh = PathBuf::from("/bin/sh");
        // Left over from an earlier sweep: not taken for point 2's.
        let stale = args.out.join("points/002");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::copy(
            tmp.path().join("reports/0.1.json"),
            stale.join("report.json"),
        )
        .unwrap();
        // 0.4 sleeps: stop it once it has started (one job: 0.1 to 0.3 are done by then).
        let cancel = AtomicBool::new(false);
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                wait_for(&tmp.path().join("marker"));
                cancel.store(true, Ordering::SeqCst);
            });
            run_points(&sh, &[script.clone().into()], &args, &plan, &cancel, false).unwrap()
        });
        assert!(outcome.cancelled);
        let rows = &outcome.rows;
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].status, PointStatus::Ok);
        assert_eq!(rows[1].status, PointStatus::Ok);
        assert_eq!(rows[1].figures.as_ref().unwrap().recall, 0.8);
        assert_eq!(rows[1].values["detect.threshold"], 0.2);
        assert_eq!(rows[2].status, PointStatus::Failed);
        assert_eq!(rows[2].error.as_deref(), Some("error: no model at 0.3"));
        assert_eq!(rows[3].status, PointStatus::Cancelled);
        assert_eq!(rows[5].status, PointStatus::Cancelled);
        assert!(rows[2].figures.is_none());
        // The child's command line.
        let log = std::fs::read_to_string(args.out.join("points/001/log.txt")).unwrap();
        let expected = format!(
            "args: eval --config {} --labels {} --objects cam-1=gt.txt --set detect.min_frames=3 \
             --set detect.threshold=0.2 --out {}",
            args.config.display(),
            args.labels.display(),
            args.out.join("points/001").display()
        );
        assert!(log.contains(&expected), "{log}");

        let code = finish(&args, &plan, outcome).unwrap();
        assert_eq!(code, ExitCode::from(130));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(args.out.join("sweep.json")).unwrap())
                .unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 6);
        assert_eq!(json["rows"][3]["status"], "cancelled");
        assert!(args.out.join("sweep.md").exists());
        assert!(args.out.join("pr_curve.svg").exists());
        assert!(
            args.out
                .join("false_per_hour_detect_threshold.png")
                .exists()
        );

        // Again without the sleeper: everything but the failure finishes.
        std::fs::remove_file(tmp.path().join("marker")).unwrap();
        let script = fake(tmp.path(), &[0.1, 0.2, 0.5]);
        let args2 = EvalArgs {
            sweep: vec!["detect.threshold=0.1:0.3:0.1".into(), "x.y=1:2:1".into()],
            jobs: 2,
            ..args.clone()
        };
        std::fs::write(
            &args2.config,
            "[detect]\nthreshold = 0.5\nmin_frames = 2\n[x]\ny = 0\n",
        )
        .unwrap();
        let plan = Plan::new(&args2).unwrap();
        let cancel = AtomicBool::new(false);
        let outcome = run_points(&sh, &[script.into()], &args2, &plan, &cancel, false).unwrap();
        assert!(!outcome.cancelled);
        let status: Vec<_> = outcome.rows.iter().map(|r| r.status).collect();
        use PointStatus::*;
        assert_eq!(status, vec![Ok, Ok, Ok, Ok, Failed, Failed]);
        let summary = write_outputs(&args2, &plan, &outcome).unwrap();
        assert!(
            summary.starts_with("sweep: 6 point(s): 4 ok, 2 failed, 0 cancelled\n"),
            "{summary}"
        );
        assert_eq!(finish(&args2, &plan, outcome).unwrap(), ExitCode::from(1));
        assert!(args.out.join("false_per_hour_x_y.svg").exists());
    }

    #[test]
    fn plan_checks_the_keys_up_front() {
        let tmp = tempfile::tempdir().unwrap();
        let args = args(tmp.path(), &["detect.min_frames=1:2:0.5"], 1);
        let e = format!("{:#}", Plan::new(&args).err().unwrap());
        assert!(
            e.contains("`detect.min_frames`") && e.contains("whole number"),
            "{e}"
        );
        let args2 = EvalArgs {
            sweep: vec!["cameras.0.threshold=0:1:0.5".into()],
            ..args.clone()
        };
        let e = format!("{:#}", Plan::new(&args2).err().unwrap());
        assert!(e.contains("no `cameras`"), "{e}");
        let args3 = EvalArgs {
            sweep: vec!["detect.threshold=0.1:0.2:0.1".into()],
            max_false_per_hour: -1.0,
            ..args.clone()
        };
        assert!(Plan::new(&args3).is_err());
        let plan = Plan::new(&EvalArgs {
            sweep: vec![
                "detect.threshold=0:0.999:0.001".into(),
                "detect.min_frames=1:2:1".into(),
            ],
            ..args.clone()
        })
        .unwrap();
        assert_eq!(plan.dir_name(7), "points/0007");
    }

    #[test]
    fn error_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log.txt");
        std::fs::write(
            &log,
            "\u{1b}[2m2026\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m skynet: broken pipe\nlast\n",
        )
        .unwrap();
        assert_eq!(
            first_error_line(&log).unwrap(),
            "2026 ERROR skynet: broken pipe"
        );
        std::fs::write(&log, "one\ntwo\n\n").unwrap();
        assert_eq!(first_error_line(&log).unwrap(), "two");
        std::fs::write(&log, "").unwrap();
        assert_eq!(first_error_line(&log), None);
    }
}
