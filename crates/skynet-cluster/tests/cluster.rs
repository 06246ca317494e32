//! Membership, assignment and leases against a real nats-server with JetStream (a private
//! one per test, on a spare port). Every wait is for a condition, under an overall guard;
//! the times measured are printed, never asserted against the design's bound.

#[path = "../../../tests/common/nats_server.rs"]
mod nats_server;

use std::time::Duration;

use nats_server::PrivateNats;
use skynet_cluster::{
    Assignments, Claims, ClusterConfig, ClusterError, Leases, Membership, Role, View, owner,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// Small, so the tests are quick: heartbeats every 0.67 s, expiry after 1.33 s.
const FAILOVER_S: f64 = 2.0;

/// Far above any expected wait, so only a real failure trips it.
const GUARD: Duration = Duration::from_secs(20);

fn config(url: &str) -> ClusterConfig {
    ClusterConfig {
        failover_s: FAILOVER_S,
        ..ClusterConfig::for_url(url)
    }
}

async fn client(url: &str) -> async_nats::Client {
    skynet_cluster::connect(&config(url))
        .await
        .expect("connects to the private nats-server")
}

async fn join(url: &str, node: &str, role: Role) -> Membership {
    Membership::join(&client(url).await, &config(url), node, role)
        .await
        .expect("joins")
}

/// Waits until the view satisfies `what`, and returns it.
async fn until(view: &mut watch::Receiver<View>, what: impl Fn(&View) -> bool) -> View {
    let last = view.clone();
    match tokio::time::timeout(GUARD, view.wait_for(|v| what(v))).await {
        Ok(v) => v.expect("the membership is alive").clone(),
        Err(_) => panic!("no such view within {GUARD:?}; last {:?}", *last.borrow()),
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn cameras() -> Vec<String> {
    (0..60).map(|i| format!("cam-{i:03}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_each_other_and_a_crashed_member_vanishes_and_its_cameras_move_to_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();

    let a = join(&url, "edge-a", Role::Edge).await;
    let b = join(&url, "edge-b", Role::Edge).await;
    let c = join(&url, "edge-c", Role::Edge).await;
    let scorer = join(&url, "scorer-1", Role::Scorer).await;

    let three = names(&["edge-a", "edge-b", "edge-c"]);
    for m in [&a, &b, &c, &scorer] {
        until(&mut m.view(Role::Edge), |v| v.members == three).await;
        until(&mut m.view(Role::Scorer), |v| v.members == ["scorer-1"]).await;
    }

    // Every edge computes the same owners: together they cover each camera once.
    let mut trackers: Vec<Assignments> = ["edge-a", "edge-b", "edge-c"]
        .iter()
        .map(|n| Assignments::new(*n, Role::Edge, cameras()))
        .collect();
    let view3 = a.view(Role::Edge).borrow().clone();
    let shares: Vec<Vec<String>> = trackers.iter_mut().map(|t| t.update(&view3)).collect();
    assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), cameras().len());
    let of_c = shares[2].clone();
    assert!(!of_c.is_empty(), "edge-c owns some of 60 cameras");

    // edge-c crashes: no leave, its heartbeat just stops.
    let crashed_at = Instant::now();
    drop(c);
    let two = names(&["edge-a", "edge-b"]);
    let mut views = Vec::new();
    for m in [&a, &b] {
        let v = until(&mut m.view(Role::Edge), |v| v.members == two).await;
        assert_eq!(v.crashed, ["edge-c"], "it vanished, it did not leave");
        views.push(v);
    }
    println!(
        "a crashed member vanished from both survivors' views {:.2} s after the crash (failover_s {FAILOVER_S})",
        crashed_at.elapsed().as_secs_f64()
    );
    // The scorers' view was never disturbed.
    assert_eq!(scorer.members(Role::Scorer), ["scorer-1"]);

    // Its cameras move to the survivors, and no other camera moves.
    let after: Vec<Vec<String>> = trackers[..2]
        .iter_mut()
        .zip(&views)
        .map(|(t, v)| t.update(v))
        .collect();
    assert_eq!(after.iter().map(Vec::len).sum::<usize>(), cameras().len());
    for camera in &of_c {
        let now = owner(camera, &two).unwrap();
        assert!(now == "edge-a" || now == "edge-b");
        assert!(after[0].contains(camera) || after[1].contains(camera));
    }
    for (before, now) in shares[..2].iter().zip(&after) {
        assert!(
            before.iter().all(|cam| now.contains(cam)),
            "a survivor kept its own"
        );
    }

    // A member that leaves is gone at once, and is not counted as crashed.
    b.leave().await.unwrap();
    let v = until(&mut a.view(Role::Edge), |v| v.members == ["edge-a"]).await;
    assert_eq!(v.crashed, ["edge-c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_that_comes_back_is_live_again() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let a = join(&url, "edge-a", Role::Edge).await;
    let b = join(&url, "edge-b", Role::Edge).await;
    let mut view = a.view(Role::Edge);
    until(&mut view, |v| v.members.len() == 2).await;
    drop(b);
    until(&mut view, |v| {
        v.members == ["edge-a"] && v.crashed == ["edge-b"]
    })
    .await;
    let _b = join(&url, "edge-b", Role::Edge).await;
    until(&mut view, |v| v.members.len() == 2 && v.crashed.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_never_taken_while_held_and_is_taken_only_after_a_crashed_holder_expires() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let one = Leases::open(&client(&url).await, &config(&url), "edge-a")
        .await
        .unwrap();
    let two = Leases::open(&client(&url).await, &config(&url), "edge-b")
        .await
        .unwrap();
    let key = Leases::camera_key("cam-safety-03");
    let heartbeat = config(&url).timing().heartbeat;

    let mut held = one.try_acquire(&key).await.unwrap().expect("free at first");
    assert!(held.held());
    assert_eq!(one.holder(&key).await.unwrap().as_deref(), Some("edge-a"));

    // Over three lease lengths of renewals, the other edge never gets it.
    let until_then = Instant::now() + one.ttl() * 3;
    let mut tries = 0;
    let mut last_renewal = Instant::now();
    while Instant::now() < until_then {
        last_renewal = Instant::now();
        one.renew(&mut held).await.expect("the holder renews");
        assert!(held.held());
        assert!(
            two.try_acquire(&key).await.unwrap().is_none(),
            "taken while held"
        );
        tries += 1;
        tokio::time::sleep(heartbeat / 2).await;
    }
    assert!(tries >= 3);

    // The holder crashes: it renews no more. The other takes it only once the holder's own
    // lease has run out, so the two never run the camera at once.
    let taken = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(lease) = two.try_acquire(&key).await.unwrap() {
                break lease;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the expired lease is taken");
    assert!(
        !held.held(),
        "taken while the old holder still counted on it"
    );
    assert!(Instant::now() >= held.valid_until());
    println!(
        "a crashed holder's lease was taken {:.2} s after its last renewal (ttl {:.2} s)",
        last_renewal.elapsed().as_secs_f64(),
        one.ttl().as_secs_f64()
    );
    assert_eq!(two.holder(&key).await.unwrap().as_deref(), Some("edge-b"));

    // The old holder, back, cannot renew or release it.
    assert!(matches!(
        one.renew(&mut held).await,
        Err(ClusterError::LeaseLost { .. })
    ));
    assert!(!held.held());
    assert!(matches!(
        one.release(held).await,
        Err(ClusterError::LeaseLost { .. })
    ));
    assert_eq!(two.holder(&key).await.unwrap().as_deref(), Some("edge-b"));

    // Released, it is free at once.
    two.release(taken).await.unwrap();
    assert_eq!(two.holder(&key).await.unwrap(), None);
    let again = one
        .try_acquire(&key)
        .await
        .unwrap()
        .expect("free after release");
    assert!(again.held());
    assert!(two.try_acquire(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn no_url_is_a_single_node_and_bad_names_are_refused() {
    assert!(matches!(
        skynet_cluster::connect(&ClusterConfig::default()).await,
        Err(ClusterError::SingleNode)
    ));
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let c = client(&url).await;
    assert!(matches!(
        Membership::join(&c, &config(&url), "a..b", Role::Edge).await,
        Err(ClusterError::InvalidKey(_))
    ));
    let leases = Leases::open(&c, &config(&url), "edge-a").await.unwrap();
    assert!(matches!(
        leases.try_acquire("camera.").await,
        Err(ClusterError::InvalidKey(_))
    ));
}

/// Two (then three) edges sharing 12 cameras: together they run every camera, no camera is
/// ever runnable on two edges at the same moment (sampled every 10 ms throughout), a
/// crashed edge's cameras run on the survivor once its leases expire, and a joining edge
/// gets its share from the others at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_share_the_cameras_and_a_crashed_edges_cameras_run_on_the_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let timing = config(&url).timing();
    let keys: Vec<String> = (0..12)
        .map(|i| Leases::camera_key(&format!("cam-{i:02}")))
        .collect();
    let all: std::collections::BTreeSet<String> = keys.iter().cloned().collect();

    async fn edge(url: &str, node: &str, keys: &[String]) -> (Membership, Claims) {
        let c = client(url).await;
        let m = Membership::join(&c, &config(url), node, Role::Edge)
            .await
            .unwrap();
        let leases = Leases::open(&c, &config(url), node).await.unwrap();
        let claims = Claims::start(&m, leases, Role::Edge, keys.to_vec(), config(url).timing());
        (m, claims)
    }

    let (ma, a) = edge(&url, "edge-a", &keys).await;
    let (mb, b) = edge(&url, "edge-b", &keys).await;
    let ra = a.runnable();
    let rb = b.runnable();

    // The invariant, checked all along: never runnable on two edges at once.
    let watched = std::sync::Arc::new(std::sync::Mutex::new(vec![ra.clone(), rb.clone()]));
    let checker = {
        let watched = watched.clone();
        tokio::spawn(async move {
            let mut samples = 0u64;
            loop {
                {
                    let sets: Vec<_> = watched
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|r| r.borrow().clone())
                        .collect();
                    for (i, x) in sets.iter().enumerate() {
                        for y in &sets[i + 1..] {
                            let both: Vec<_> = x.intersection(y).collect();
                            assert!(both.is_empty(), "runnable on two edges at once: {both:?}");
                        }
                    }
                }
                samples += 1;
                if samples > 1_000_000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let union = |rs: &[&watch::Receiver<std::collections::BTreeSet<String>>]| {
        rs.iter()
            .flat_map(|r| r.borrow().clone())
            .collect::<std::collections::BTreeSet<String>>()
    };
    let wait = |what: &'static str, cond: Box<dyn Fn() -> bool + Send>| async move {
        tokio::time::timeout(GUARD, async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not within {GUARD:?}: {what}"));
    };

    {
        let (ra, rb, all) = (ra.clone(), rb.clone(), all.clone());
        wait(
            "two edges run every camera between them",
            Box::new(move || {
                union(&[&ra, &rb]) == all && !ra.borrow().is_empty() && !rb.borrow().is_empty()
            }),
        )
        .await;
    }

    // edge-b crashes: its heartbeat stops and its leases are neither renewed nor released.
    let crashed_at = Instant::now();
    drop(b);
    drop(mb);
    {
        let (ra, all) = (ra.clone(), all.clone());
        wait(
            "the survivor runs every camera",
            Box::new(move || *ra.borrow() == all),
        )
        .await;
    }
    println!(
        "a crashed edge's cameras all ran on the survivor {:.2} s after the crash (failover_s {FAILOVER_S}, expiry {:.2} s)",
        crashed_at.elapsed().as_secs_f64(),
        timing.expiry.as_secs_f64()
    );

    // edge-c joins: it takes its share, handed over by edge-a at once.
    let (mc, c) = edge(&url, "edge-c", &keys).await;
    let rc = c.runnable();
    watched.lock().unwrap().push(rc.clone());
    {
        let (ra, rc, all) = (ra.clone(), rc.clone(), all.clone());
        wait(
            "two edges share the cameras again",
            Box::new(move || {
                union(&[&ra, &rc]) == all && !ra.borrow().is_empty() && !rc.borrow().is_empty()
            }),
        )
        .await;
    }

    // edge-c stops cleanly: it releases its leases and leaves, and edge-a runs all again.
    c.stop().await;
    mc.leave().await.unwrap();
    {
        let (ra, all) = (ra.clone(), all.clone());
        wait(
            "edge-a runs every camera again",
            Box::new(move || *ra.borrow() == all),
        )
        .await;
    }
    assert!(!checker.is_finished(), "the invariant checker failed");
    checker.abort();
    a.stop().await;
    drop(ma);
}

/// While NATS is down a node sees no heartbeat, its own included, so it claims nothing;
/// when NATS is back, the members are seen again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_back_after_a_nats_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let a = join(&url, "edge-a", Role::Edge).await;
    let b = join(&url, "edge-b", Role::Edge).await;
    let mut view = a.view(Role::Edge);
    let both = names(&["edge-a", "edge-b"]);
    until(&mut view, |v| v.members == both).await;

    nats.stop();
    until(&mut view, |v| v.members.is_empty()).await;
    let resumed_at = Instant::now();
    nats.resume();
    until(&mut view, |v| v.members == both).await;
    until(&mut b.view(Role::Edge), |v| v.members == both).await;
    println!(
        "members seen again {:.2} s after nats-server came back",
        resumed_at.elapsed().as_secs_f64()
    );
}

/// Sends `signal` (`STOP`, `CONT`) to the process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A nats-server stopped with SIGSTOP: its connections stay open, and its requests are
/// neither answered nor refused, as while a JetStream leader is being elected. Resumed
/// with SIGCONT when dropped, so a failing test leaves no frozen server.
struct Frozen(u32);

impl Frozen {
    fn new(nats: &PrivateNats) -> Self {
        let pid = nats.child.as_ref().expect("nats-server runs").id();
        signal(pid, "STOP");
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// While the leases' NATS hangs, every renewal waits for an answer that does not come; the
/// edge must still stop running its cameras before their leases end (after which another
/// edge may take them), not once the renewals give up. The membership is on a NATS of its
/// own that keeps answering, so the edge stays assigned its cameras throughout: only the
/// leases' end can take them out of the set. Each lease was last renewed before NATS
/// stopped, so each is valid until the stop plus one lease length at the latest: the set
/// must be empty by then (one check of slack for the scheduler: a correctness bound, not
/// a speed target), and stay empty. When NATS answers again, after the leases' end, the
/// edge claims its cameras again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_lease_nats_empties_the_runnable_set_before_the_leases_end_and_claims_recover() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(&dir.path().join("nats"));
    let url = nats.url();
    let members = PrivateNats::start(&dir.path().join("members"));
    let timing = config(&url).timing();
    let keys: Vec<String> = (0..20)
        .map(|i| Leases::camera_key(&format!("cam-{i:02}")))
        .collect();
    let all: std::collections::BTreeSet<String> = keys.iter().cloned().collect();

    let m = join(&members.url(), "edge-a", Role::Edge).await;
    let leases = Leases::open(&client(&url).await, &config(&url), "edge-a")
        .await
        .unwrap();
    let ttl = leases.ttl();
    let claims = Claims::start(&m, leases, Role::Edge, keys, timing);
    let mut runnable = claims.runnable();
    tokio::time::timeout(GUARD, runnable.wait_for(|s| *s == all))
        .await
        .expect("the edge runs every camera")
        .unwrap();

    let frozen = Frozen::new(&nats);
    let stopped_at = Instant::now();
    let bound = stopped_at + ttl + timing.check;
    let last = runnable.clone();
    match tokio::time::timeout_at(bound, runnable.wait_for(|s| s.is_empty())).await {
        Ok(r) => {
            r.unwrap();
        }
        Err(_) => panic!(
            "still running {:?} {:.2} s after NATS stopped answering, past the leases' end (ttl {:.2} s)",
            *last.borrow(),
            stopped_at.elapsed().as_secs_f64(),
            ttl.as_secs_f64()
        ),
    }
    assert_eq!(
        m.members(Role::Edge),
        ["edge-a"],
        "still assigned every camera"
    );
    println!(
        "the runnable set was empty {:.2} s after NATS stopped answering (ttl {:.2} s)",
        stopped_at.elapsed().as_secs_f64(),
        ttl.as_secs_f64()
    );

    // The outage outlasts the leases: nothing comes back into the set while NATS is down,
    // and the claims must recover by taking the leases anew.
    let back = tokio::time::timeout_at(bound, runnable.wait_for(|s| !s.is_empty()))
        .await
        .is_ok();
    assert!(!back, "runnable again while NATS is down");
    drop(frozen);
    let resumed_at = Instant::now();
    tokio::time::timeout(GUARD, runnable.wait_for(|s| *s == all))
        .await
        .expect("the edge runs every camera again once NATS answers")
        .unwrap();
    println!(
        "every camera runnable again {:.2} s after NATS answered again",
        resumed_at.elapsed().as_secs_f64()
    );
    claims.stop().await;
    drop(m);
}
