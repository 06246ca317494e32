//! Membership, assignment and leases against a real nats-server with JetStream (a private
//! one per test, on a spare port). Every wait is for a condition, under an overall guard;
//! the times measured are printed, never asserted against the design's bound.

#[path = "../../../tests/common/nats_server.rs"]
mod nats_server;

use std::time::Duration;

use nats_server::PrivateNats;
use skynet_cluster::{
    Assignments, ClusterConfig, ClusterError, Leases, Membership, Role, View, owner,
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
