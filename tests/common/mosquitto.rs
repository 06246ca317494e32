//! A private Mosquitto for tests that stop and start the broker, and a test client.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use super::{eventually, free_port};

/// A private Mosquitto on a spare port, which tests may stop and start.
pub struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Self {
        let port = free_port().port();
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root runs as its own user: it must be able to persist here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
                 max_inflight_messages 10000\n\
                 persistence true\npersistence_location {dir}/\nautosave_interval 1\n\
                 log_dest file {dir}/mosquitto.log\nlog_type error\nlog_type warning\n\
                 log_type notice\nlog_type information\nlog_type subscribe\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts it again (with what it persisted).
    pub fn restart(&mut self) {
        let child = Command::new("/usr/sbin/mosquitto")
            .args([
                "-c",
                self.dir.path().join("mosquitto.conf").to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (scripts/setup.sh installs it)");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "the private broker listens"
        );
    }

    /// The broker's log so far: connections, disconnections and subscriptions, in the
    /// order the broker handled them.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// How many times the broker has accepted a subscription of `client_id` to exactly
    /// `filter`, read from its log (`log_type subscribe`: Mosquitto writes the line once
    /// the subscription is in place, before its SUBACK). A client resubscribing after each
    /// reconnect adds one line each time.
    pub fn subscriptions(&self, client_id: &str, filter: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| {
                // "<time>: <client id> <qos> <filter>"
                let Some((_, rest)) = line.split_once(": ") else {
                    return false;
                };
                let mut parts = rest.splitn(3, ' ');
                parts.next() == Some(client_id)
                    && parts.next().is_some_and(|q| q.parse::<u8>().is_ok())
                    && parts.next() == Some(filter)
            })
            .count()
    }

    /// Waits until `client_id` (skynet's sensor feed, say) has subscribed to `filter` at
    /// least `times` times: messages published after that reach it, whatever its session.
    pub fn wait_subscribed(&self, client_id: &str, filter: &str, times: usize) {
        assert!(
            eventually(Duration::from_secs(30), || self
                .subscriptions(client_id, filter)
                >= times),
            "{client_id} subscribed to {filter} {times} time(s) on the private broker: {}",
            self.log()
        );
    }

    /// SIGTERM: it saves its sessions and queues, then exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Messages a test client received: topic and payload.
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A publisher (and optionally subscriber) on `url`, its connection polled on a thread.
pub struct Mqtt {
    pub client: Client,
    pub received: Received,
    /// SUBACKs received so far (see [`Mqtt::subscribe_acked`]).
    pub subacks: Arc<AtomicUsize>,
}

impl Mqtt {
    pub fn connect(url: &str, id: &str) -> Self {
        Self::connect_with(url, id, true)
    }

    /// `clean_session = false` keeps the client's subscriptions, and what the broker queues
    /// for it, across disconnects and broker restarts (with persistence).
    pub fn connect_with(url: &str, id: &str, clean_session: bool) -> Self {
        let broker = skynet_ingest::sensor::BrokerUrl::parse(url).unwrap();
        let mut options = MqttOptions::new(id, broker.host, broker.port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_session(clean_session);
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut connection) = Client::new(options, 10_000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(Mutex::new(false));
        let subacks = Arc::new(AtomicUsize::new(0));
        let (r, c, acks) = (
            Arc::clone(&received),
            Arc::clone(&connected),
            Arc::clone(&subacks),
        );
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        r.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => *c.lock().unwrap() = true,
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        *c.lock().unwrap() = false;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        assert!(
            eventually(Duration::from_secs(10), || *connected.lock().unwrap()),
            "test client connects to {url}"
        );
        Self {
            client,
            received,
            subacks,
        }
    }

    /// Subscribes and waits for the broker's SUBACK: what is published after this returns
    /// reaches the client.
    pub fn subscribe_acked(&self, filter: &str, qos: QoS) {
        let before = self.subacks.load(Ordering::SeqCst);
        self.client.subscribe(filter, qos).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || self
                .subacks
                .load(Ordering::SeqCst)
                > before),
            "the broker acknowledged the subscription to {filter}"
        );
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .unwrap();
    }
}
