//! `skynet`: run the pipeline, detect objects in images, or check a config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use skynet::simulate::{Scenario, SimulateOptions};
use skynet::{PipelineConfig, PipelineError, RunOptions, Services, pipeline};
use skynet_core::Shutdown;

#[derive(Parser)]
#[command(
    name = "skynet",
    version,
    about = "Real-time video and sensor fusion: cameras and sensors in, grid risk and incidents out."
)]
struct Cli {
    /// Log lines on stderr as text or as JSON (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline described by a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Stop once every file source has ended (instead of waiting for SIGINT/SIGTERM).
        #[arg(long)]
        until_eof: bool,
        /// What this process does in a city of many nodes (`[cluster] url`): `all` (one
        /// node, no NATS), `edge` (cameras, sensors, detection), `scorer` (grid cells,
        /// incidents, sinks) or `console`.
        #[arg(long, default_value = "all", value_parser = parse_role)]
        role: skynet_cluster::Role,
        /// Reload the config when its file changes (SIGHUP reloads it in any case): only the
        /// components that changed are rebuilt; an invalid config is refused and the running
        /// one kept.
        #[arg(long)]
        watch: bool,
    },
    /// Score a config's incidents against labelled events (and optionally its detections
    /// against MOTChallenge `gt.txt` boxes), once or over a sweep of config values; writes
    /// report.json and report.md (sweep.json, sweep.md and plots for a sweep) to --out.
    Eval(skynet::eval_cli::EvalArgs),
    /// Detect objects in images and videos; prints one JSON object per image or video frame.
    Detect {
        /// Model manifest (models/*.toml).
        #[arg(long)]
        model: PathBuf,
        /// Minimum score (objectness x class) to report.
        #[arg(long, default_value_t = 0.3)]
        threshold: f32,
        /// IoU above which NMS suppresses a box of the same class.
        #[arg(long, default_value_t = 0.45)]
        nms_iou: f32,
        /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, then where set-up put it).
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// Track objects across a video's frames: detections carry `track` ids.
        #[arg(long)]
        track: bool,
        /// Stop each video after this many frames.
        #[arg(long, value_name = "N")]
        max_frames: Option<u64>,
        /// Write each image or frame, boxes, labels and zones drawn, into this directory.
        #[arg(long, value_name = "DIR")]
        annotate: Option<PathBuf>,
        /// With --camera: draw that camera's zones and blur its privacy masks.
        #[arg(long, short, requires = "camera")]
        config: Option<PathBuf>,
        /// The camera of --config whose zones are drawn.
        #[arg(long, requires = "config")]
        camera: Option<String>,
        /// Images (.jpg, .jpeg, .png, .bmp, .webp) or videos (anything else GStreamer reads).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Feed recorded observations (JSON Lines; `-` for stdin) through the config's risk
    /// engine and print the incident and grid-risk CloudEvents, one per line. The same input
    /// always gives the same output, ids included.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// What-if: replay with this (older) config too and print the incidents the new
        /// config adds, drops or changes in level, instead of the events.
        #[arg(long, value_name = "OLD")]
        compare: Option<PathBuf>,
        /// With --compare: one JSON object per incident, then a summary object.
        #[arg(long, requires = "compare")]
        json: bool,
        observations: PathBuf,
    },
    /// Validate a config file: exit 0 when valid, else an error naming file, line and column.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Look into the outbox: events a sink's destination refused for good, false-alarm rates.
    Outbox {
        #[command(subcommand)]
        what: OutboxCommand,
    },
    /// Publish simulated traffic for demos, tests and benchmarks.
    Simulate {
        #[command(subcommand)]
        what: SimulateCommand,
    },
    /// The console's users and API tokens, kept in the state database (the outbox file).
    Users {
        #[command(subcommand)]
        what: UsersCommand,
    },
    /// The saved pipeline state (in the outbox file).
    State {
        #[command(subcommand)]
        what: StateCommand,
    },
    /// The console's audit log (in the state database).
    Audit {
        #[command(subcommand)]
        what: AuditCommand,
    },
    /// ONVIF cameras on the local network.
    Onvif {
        #[command(subcommand)]
        what: OnvifCommand,
    },
    /// Video platforms (`[[platforms]]`, GB/T 28181) skynet takes cameras from.
    Platforms {
        #[command(subcommand)]
        what: PlatformsCommand,
    },
}

#[derive(Subcommand)]
enum PlatformsCommand {
    /// The platforms and their channels, as the running node sees them (`GET /platforms` on
    /// `[metrics] listen`, with its `auth_token`): one line per platform
    /// (`platform<TAB>kind<TAB>listen<TAB>owner<TAB>state<TAB>N lower platform(s) online`),
    /// then one per channel of the catalogs and the config
    /// (`  channel<TAB>name<TAB>status<TAB>cell|-<TAB>analysed yes|no<TAB>placed by|-`).
    /// When the node does not answer: the config's view
    /// (`platform<TAB>kind<TAB>listen<TAB>owner<TAB>channels`, then
    /// `  channel<TAB>cell<TAB>analysed yes|no`) and a note on stderr.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the node's JSON as it answers (needs the running node).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OnvifCommand {
    /// Probe the local network (WS-Discovery) and list the ONVIF cameras that answer: the
    /// device service to give as a `kind = "onvif"` camera's `url`, its name and hardware.
    Discover {
        /// How long to collect answers, in seconds (0.1 to 60).
        #[arg(long, default_value_t = 3.0)]
        wait_s: f64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain: "ok, N rows" (exit 0), or the first row where it
    /// breaks and what differs there (exit 1).
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// A chain head printed earlier ("last hash", or the console's `audit chain head`
        /// log line) and kept outside the database: exit 1 naming it when no row has it any
        /// more (the newest rows were removed, or the chain was rewritten, since then).
        #[arg(long)]
        head: Option<String>,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// After a saved state that cannot be read: close every incident the outbox lists as
    /// open with a `state_lost` revision (delivered to every sink) and delete the saved
    /// state, so the next `skynet run` starts afresh. Run it while skynet is stopped.
    Recover {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Operator,
    Inspector,
    Engineer,
    Admin,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user, or replace one of the same name; the password is read from stdin.
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The department whose incidents an inspector sees.
        #[arg(long)]
        department: Option<String>,
        /// Narrows an inspector to one owner's incidents: police, safety_production,
        /// city_management.
        #[arg(long)]
        owner: Option<String>,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create an API token for a machine acting as user NAME; printed once on stdout.
    Token {
        name: String,
        /// What the token is for (shown in the audit log).
        #[arg(long)]
        label: Option<String>,
        /// Days until the token expires (1 to 3650); issue a new one before then.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
        ttl_days: u32,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Revoke user NAME's API tokens (those with --label, when given). Exit 1 when none was
    /// revoked.
    Revoke {
        name: String,
        #[arg(long)]
        label: Option<String>,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the users: name, role, department, owner.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a user and every token of theirs. Exit 1 when there is no such user.
    Remove {
        name: String,
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// List the dead letters: seq, event id, sink, status, when, reason.
    DeadLetters {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead letters for delivery again; the sink's worker delivers them before its
    /// next events (at once if skynet is running, else at its next start). Exit 1 when
    /// `--id` matches none.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// The CloudEvent id of the event to replay.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter (of `--sink`, else of every configured sink).
        #[arg(long)]
        all: bool,
    },
    /// False-alarm rates from the incident history: per category, rule and device, the
    /// incidents, those the case system decided on, and those it rejected as false alarms.
    FalseAlarms {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SimulateCommand {
    /// MQTT sensors (the fleet of configs/city.toml): noise, drift, leaks, stuck sensors and
    /// malformed messages.
    Sensors {
        /// The broker, mqtt://host:port.
        #[arg(long, env = "SKYNET_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
        url: String,
        /// Messages per second over the whole fleet.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Seconds to run; 0 runs until Ctrl-C.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        #[arg(long, value_enum, default_value_t = Scenario::Normal)]
        scenario: Scenario,
        /// QoS of the published messages (0 or 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
    },
}

fn main() -> ExitCode {
    skynet::memory::limit_malloc_arenas();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Run {
            config,
            until_eof,
            role,
            watch,
        } => run(&config, until_eof, role, watch),
        Command::Eval(args) => skynet::eval_cli::run(&args),
        Command::Detect {
            model,
            threshold,
            nms_iou,
            onnxruntime,
            track,
            max_frames,
            annotate,
            config,
            camera,
            inputs,
        } => skynet::detect_cli::run(&skynet::detect_cli::DetectArgs {
            model,
            threshold,
            nms_iou,
            onnxruntime,
            track,
            max_frames,
            annotate,
            config,
            camera,
            inputs,
        })
        .map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        Command::Check { config } => check(&config),
        Command::Replay {
            config,
            compare: None,
            observations,
            ..
        } => replay(&config, &observations),
        Command::Replay {
            config,
            compare: Some(old),
            json,
            observations,
        } => skynet::replay::compare_cli(&config, &old, &observations, json),
        Command::Outbox {
            what: OutboxCommand::DeadLetters { config, sink, json },
        } => dead_letters(&config, sink.as_deref(), json),
        Command::Outbox {
            what:
                OutboxCommand::Replay {
                    config,
                    sink,
                    id,
                    all: _,
                },
        } => replay_dead_letters(&config, sink.as_deref(), id.as_deref()),
        Command::Outbox {
            what: OutboxCommand::FalseAlarms { config, json },
        } => false_alarms(&config, json),
        Command::Simulate {
            what:
                SimulateCommand::Sensors {
                    url,
                    rate,
                    duration,
                    scenario,
                    qos,
                },
        } => skynet::simulate::run(&SimulateOptions {
            url,
            rate,
            duration,
            scenario,
            qos: if qos == 0 {
                rumqttc::QoS::AtMostOnce
            } else {
                rumqttc::QoS::AtLeastOnce
            },
        })
        .map(|_| ExitCode::SUCCESS),
        Command::Users { what } => users(what),
        Command::State {
            what: StateCommand::Recover { config },
        } => recover_state(&config),
        Command::Audit {
            what: AuditCommand::Verify { config, head },
        } => PipelineConfig::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|config| skynet::audit_cli::verify(&config, head.as_deref()))
            .map(|ok| {
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }),
        Command::Onvif {
            what: OnvifCommand::Discover { wait_s },
        } => onvif_discover(wait_s),
        Command::Platforms {
            what: PlatformsCommand::List { config, json },
        } => platforms_list(&config, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors quote what came from outside (a file, a database, a destination's
            // answer): control characters are shown escaped, never obeyed.
            eprintln!(
                "error: {}",
                skynet_core::escape_control_lines(&format!("{e:#}"))
            );
            ExitCode::from(2)
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // Logs go to stderr: stdout carries incidents and detections as JSON.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in files or log shippers.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// `skynet platforms list`: what the running node reports of each platform and its
/// channels (`GET /platforms`); the config's view when the node does not answer.
fn platforms_list(config: &Path, json: bool) -> Result<ExitCode> {
    let c = PipelineConfig::load(config)?;
    let why_offline = match c.metrics_listen {
        None => "the config has no [metrics] listen to ask a running node at".to_string(),
        Some(listen) => match ask_node_platforms(listen, c.metrics_auth_token.as_ref())? {
            NodeAnswer::Platforms(body) => {
                if json {
                    // Catalog names come from lower platforms: no control or bidi character
                    // reaches the terminal as it is.
                    println!("{}", skynet_core::escape_json_controls(&body.to_string()));
                } else {
                    print_node_platforms(&body);
                    eprintln!(
                        "{} platform(s), from the node at {listen}",
                        body["platforms"].as_array().map_or(0, Vec::len)
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            NodeAnswer::Silent(why) => format!("the node at {listen} did not answer ({why})"),
        },
    };
    if json {
        anyhow::bail!("{why_offline}: --json needs the running node");
    }
    eprintln!("{why_offline}, so this is the config's view");
    platforms_config_view(&c);
    Ok(ExitCode::SUCCESS)
}

/// What a node's `/platforms` gave.
enum NodeAnswer {
    /// Its JSON (`{"platforms": [...]}`).
    Platforms(serde_json::Value),
    /// No answer, or not one to list (why, in words).
    Silent(String),
}

/// `GET http://LISTEN/platforms` with `[metrics] auth_token`. A 401 is an error that names
/// the token; no answer (nothing listening, a timeout, an older node without the route) is
/// [`NodeAnswer::Silent`].
fn ask_node_platforms(
    listen: std::net::SocketAddr,
    token: Option<&skynet_core::Secret>,
) -> Result<NodeAnswer> {
    // A node listening on every address is asked on loopback.
    let mut at = listen;
    if at.ip().is_unspecified() {
        at.set_ip(match at {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    // (reqwest's rustls wants the process's provider, plain HTTP or not.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("could not make an HTTP client")?;
    let mut request = client.get(format!("http://{at}/platforms"));
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let response = match request.send() {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Ok(NodeAnswer::Silent("could not connect".into())),
        Err(e) if e.is_timeout() => return Ok(NodeAnswer::Silent("timed out".into())),
        Err(e) => return Ok(NodeAnswer::Silent(e.without_url().to_string())),
    };
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        anyhow::bail!(
            "the node at {listen} refused /platforms (401): {}",
            match token {
                Some(_) => "the config's [metrics] auth_token is not the node's",
                None => "the node needs [metrics] auth_token, and this config has none",
            }
        );
    }
    if !status.is_success() {
        return Ok(NodeAnswer::Silent(format!("HTTP {status} to /platforms")));
    }
    let body = response
        .text()
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    match body {
        Some(body) if body["platforms"].is_array() => Ok(NodeAnswer::Platforms(body)),
        _ => Ok(NodeAnswer::Silent(
            "/platforms gave no platform list".into(),
        )),
    }
}

/// The node's report as lines: one per platform, one indented per channel. What came from
/// lower platforms (names) is shown with its control characters escaped.
fn print_node_platforms(body: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v.as_str() {
        Some(s) if !s.is_empty() => skynet_core::escape_control(s).into_owned(),
        _ => "-".to_string(),
    };
    for platform in body["platforms"].as_array().into_iter().flatten() {
        let state = match platform["reason"].as_str() {
            Some(reason) => format!(
                "{} ({})",
                text(&platform["state"]),
                skynet_core::escape_control(reason)
            ),
            None => text(&platform["state"]),
        };
        let online = platform["lower_platforms_online"]
            .as_array()
            .map_or(0, Vec::len);
        println!(
            "{}\t{}\t{}\t{}\t{}\t{online} lower platform(s) online",
            text(&platform["id"]),
            text(&platform["kind"]),
            text(&platform["listen"]),
            text(&platform["owner"]),
            state,
        );
        for channel in platform["channels"].as_array().into_iter().flatten() {
            println!(
                "  {}\t{}\t{}\t{}\t{}\t{}",
                text(&channel["id"]),
                text(&channel["name"]),
                text(&channel["status"]),
                text(&channel["grid"]),
                if channel["analysed"].as_bool() == Some(true) {
                    "analysed yes"
                } else {
                    "analysed no"
                },
                text(&channel["placed_by"]),
            );
        }
    }
}

/// The config's view of each platform and its configured channels.
fn platforms_config_view(c: &PipelineConfig) {
    for platform in &c.platforms {
        let p = &platform.config;
        let channels = match p.all_channels() {
            true => "all".to_string(),
            false => format!("{} configured", p.channels().len()),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}",
            p.id(),
            platform.kind,
            p.listen(),
            p.owner(),
            channels
        );
        for channel in p.channels() {
            let camera = c.cameras.iter().find(|cam| cam.id.as_str() == channel.id);
            println!(
                "  {}\t{}\t{}",
                channel.id,
                camera.map_or("-", |cam| cam.grid.as_str()),
                if camera.is_some() { "yes" } else { "no" }
            );
        }
    }
    eprintln!(
        "{} platform(s), from the config; registrations and catalogs of a running node are in its logs and metrics",
        c.platforms.len()
    );
}

/// `skynet onvif discover`: one line per device, `url<TAB>name<TAB>hardware`.
fn onvif_discover(wait_s: f64) -> Result<ExitCode> {
    let wait = std::time::Duration::try_from_secs_f64(wait_s.clamp(0.1, 60.0))
        .context("--wait-s must be a number of seconds")?;
    let found = skynet_ingest::onvif::discovery::discover(wait)
        .context("could not send the WS-Discovery probe")?;
    // What devices on the network send is printed with its control characters escaped: a
    // host on the LAN cannot drive the terminal.
    let shown = |text: &str| skynet_core::escape_control(text).into_owned();
    for device in &found {
        println!(
            "{}\t{}\t{}",
            shown(device.xaddrs.first().map_or("-", String::as_str)),
            shown(&device.scope("name").unwrap_or_else(|| "-".into())),
            shown(&device.scope("hardware").unwrap_or_else(|| "-".into())),
        );
    }
    eprintln!("{} ONVIF device(s) answered within {wait_s} s", found.len());
    Ok(ExitCode::SUCCESS)
}

fn check(config: &Path) -> Result<ExitCode> {
    let c = PipelineConfig::load(config)?;
    let sensors = if c.sensors.is_empty() {
        String::new()
    } else {
        format!(", {} sensor(s)", c.sensors.len())
    };
    println!(
        "ok: {} ({} camera(s){sensors}, {} rule(s), {}, model {})",
        config.display(),
        c.cameras.len(),
        c.rule_count(),
        if c.grids.is_h3() {
            c.grids.describe()
        } else {
            format!("{} grid cell(s)", c.grids.grids().len())
        },
        c.model.model.name
    );
    for warning in c.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

fn dead_letters(config: &Path, sink: Option<&str>, json: bool) -> Result<ExitCode> {
    let config = PipelineConfig::load(config)?;
    let letters = skynet::dead_letters::list(&config, sink)?;
    print_rows(
        &letters,
        json,
        "seq\tid\tsink\tstatus\tat\treason",
        skynet::dead_letters::text_line,
        "no dead letters",
    )
}

fn false_alarms(config: &Path, json: bool) -> Result<ExitCode> {
    let config = PipelineConfig::load(config)?;
    let outbox = skynet_emit::Outbox::open(&config.outbox)
        .with_context(|| format!("opening the outbox {}", config.outbox.display()))?;
    let rates = skynet::false_alarms::rates(&outbox.incidents()?);
    print_rows(
        &rates,
        json,
        "category\trule\tdevice\tincidents\tdecided\trejected\trate",
        skynet::false_alarms::text_line,
        "no incidents in the history yet",
    )
}

/// Rows on stdout: one JSON object per line, or a header and tab-separated lines; `none` on
/// stderr when there are no rows to show as text.
fn print_rows<T: serde::Serialize>(
    rows: &[T],
    json: bool,
    header: &str,
    text_line: fn(&T) -> String,
    none: &str,
) -> Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json && !rows.is_empty() {
        writeln!(out, "{header}")?;
    }
    for row in rows {
        if json {
            let line = serde_json::to_string(row)?;
            writeln!(out, "{}", skynet_core::escape_json_controls(&line))?;
        } else {
            writeln!(out, "{}", text_line(row))?;
        }
    }
    out.flush()?;
    if !json && rows.is_empty() {
        eprintln!("{none}");
    }
    Ok(ExitCode::SUCCESS)
}

fn replay_dead_letters(config: &Path, sink: Option<&str>, id: Option<&str>) -> Result<ExitCode> {
    let config = PipelineConfig::load(config)?;
    let queued = skynet::dead_letters::replay(&config, sink, id)?;
    match (queued, id) {
        (0, Some(id)) => {
            eprintln!(
                "error: no dead letter with id `{}`",
                skynet_core::escape_control(id)
            );
            Ok(ExitCode::from(1))
        }
        (0, None) => {
            eprintln!("no dead letters to replay");
            Ok(ExitCode::SUCCESS)
        }
        (n, _) => {
            eprintln!(
                "queued {n} dead letter(s) for delivery; the sink delivers them before its next events"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn replay(config: &Path, observations: &Path) -> Result<ExitCode> {
    let config = PipelineConfig::load(config)?;
    let input: Box<dyn std::io::BufRead> = if observations == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(observations)
            .with_context(|| format!("opening {}", observations.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let name = observations.display().to_string();
    let report = skynet::replay::replay(&config, input, stdout, |line, reason| {
        eprintln!(
            "error: {}:{line}: {}",
            skynet_core::escape_control(&name),
            skynet_core::escape_control(&reason.to_string())
        );
    })?;
    tracing::info!(
        observations = report.observations,
        refused = report.refused,
        events = report.events,
        "replay finished"
    );
    Ok(if report.refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn users(command: UsersCommand) -> Result<ExitCode> {
    use skynet::users;
    let load = |config: &Path| PipelineConfig::load(config);
    match command {
        UsersCommand::Add {
            name,
            role,
            department,
            owner,
            config,
        } => {
            let config = load(&config)?;
            let password = users::read_password(&mut std::io::stdin().lock())?;
            let role = match role {
                RoleArg::Operator => skynet_serve::console::Role::Operator,
                RoleArg::Inspector => skynet_serve::console::Role::Inspector,
                RoleArg::Engineer => skynet_serve::console::Role::Engineer,
                RoleArg::Admin => skynet_serve::console::Role::Admin,
            };
            users::add(
                &config,
                users::NewUser {
                    name,
                    role,
                    department,
                    owner,
                },
                &password,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        UsersCommand::Token {
            name,
            label,
            ttl_days,
            config,
        } => {
            users::token(&load(&config)?, &name, label.as_deref(), ttl_days)?;
            Ok(ExitCode::SUCCESS)
        }
        UsersCommand::Revoke {
            name,
            label,
            config,
        } => Ok(
            if users::revoke(&load(&config)?, &name, label.as_deref())? > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            },
        ),
        UsersCommand::List { config } => {
            users::list(&load(&config)?)?;
            Ok(ExitCode::SUCCESS)
        }
        UsersCommand::Remove { name, config } => Ok(if users::remove(&load(&config)?, &name)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }),
    }
}

/// `skynet state recover`: closes downstream what an unreadable state held open, and clears
/// the state.
fn recover_state(config: &Path) -> Result<ExitCode> {
    let config = PipelineConfig::load(config)?;
    let mut outbox = skynet_emit::Outbox::open(&config.outbox)
        .with_context(|| format!("opening the outbox {}", config.outbox.display()))?;
    let damaged = outbox.quick_check()?;
    let closed = outbox
        .close_lost_incidents(&config.node)
        .with_context(|| format!("closing the open incidents in {}", config.outbox.display()))?;
    for incident in &closed {
        use skynet_core::escape_control;
        println!(
            "{}\t{}\t{}\trevision {}\tclosed: state_lost",
            escape_control(&incident.id),
            incident.grid,
            escape_control(&incident.category),
            incident.revision
        );
    }
    eprintln!(
        "closed {} incident(s) with a `state_lost` revision (delivered to every sink by the next \
         `skynet run`); the saved state is deleted, so the next start is a fresh one",
        closed.len()
    );
    if let Some(problems) = damaged.and(outbox.quick_check()?) {
        eprintln!(
            "error: {} is still damaged ({problems}): move it aside (or restore a backup) \
             before the next start",
            config.outbox.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_role(text: &str) -> Result<skynet_cluster::Role, String> {
    text.parse()
        .map_err(|e: skynet_cluster::UnknownRole| e.to_string())
}

fn run(
    config_path: &Path,
    until_eof: bool,
    role: skynet_cluster::Role,
    watch: bool,
) -> Result<ExitCode> {
    // Read once: a reload diffs against exactly the text this config came from.
    let text = std::fs::read_to_string(config_path).map_err(|source| {
        skynet_core::locate::ConfigError::Read {
            path: config_path.to_path_buf(),
            source,
        }
    })?;
    let config = PipelineConfig::parse(config_path, &text)?;
    if role != skynet_cluster::Role::All && config.cluster.is_single_node() {
        anyhow::bail!(
            "--role {role} needs a cluster: set [cluster] url in {} (configs/city.toml reads \
             SKYNET_CLUSTER_URL)",
            config_path.display()
        );
    }
    let services = Arc::new(
        Services::start_with_token(config.metrics_listen, config.metrics_auth_token.clone())
            .context("starting the HTTP endpoint")?,
    );
    let shutdown = Shutdown::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while draining exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, shutdown.flag())
            .context("installing signal handlers")?;
        signal_hook::flag::register(signal, shutdown.flag())
            .context("installing signal handlers")?;
    }
    // SIGHUP reloads the config once the pipeline runs (`pipeline/reload.rs`); before that,
    // and in the console role, it is ignored instead of ending the process.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .context("installing signal handlers")?;
    tracing::info!(config = %config_path.display(), node = %config.node, role = %role, cameras = config.cameras.len(), sensors = config.sensors.len(), "starting");
    let result = pipeline::run(
        &config,
        RunOptions {
            shutdown: shutdown.clone(),
            services: Some(Arc::clone(&services)),
            detectors: None,
            wait_for_shutdown: !until_eof,
            role,
            reload: Some(pipeline::ReloadOptions {
                config_path: config_path.to_path_buf(),
                watch,
                running_text: Some(text),
            }),
        },
    );
    let summary = match result {
        Ok(summary) => summary,
        Err(e @ PipelineError::State { .. }) => {
            services.stop();
            eprintln!(
                "error: {e}\n  skynet state recover --config {}",
                config_path.display()
            );
            return Ok(ExitCode::from(1));
        }
        Err(e @ PipelineError::StageFailed { .. }) => {
            // Drained what could be drained; a supervisor restarts us and we go on from the
            // state committed last.
            services.stop();
            eprintln!(
                "error: {}",
                skynet_core::escape_control_lines(&e.to_string())
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            services.stop();
            return Err(e.into());
        }
    };
    tracing::info!(
        decoded = summary.frames_decoded,
        analysed = summary.frames_analysed,
        dropped = summary.frames_dropped,
        late = summary.frames_late,
        observations = summary.observations,
        incident_revisions = summary.incident_revisions,
        seconds = summary.elapsed.as_secs_f64(),
        "pipeline finished"
    );
    services.stop();
    if summary.failed_cameras.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        let ids: Vec<String> = summary
            .failed_cameras
            .iter()
            .map(ToString::to_string)
            .collect();
        eprintln!("error: camera(s) failed: {}", ids.join(", "));
        Ok(ExitCode::from(1))
    }
}
