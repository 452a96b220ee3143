//! Leader handover between two replicas started here (`run --leader-elect on`,
//! the Lease in the test's namespace): a SIGTERM'd leader releases the Lease
//! and the standby must hold it within 2 s; a SIGKILL'd leader releases
//! nothing and the standby must hold it within the lease duration plus a
//! margin. A separate test binary: while it runs, its leader reconciles the
//! whole cluster, which the tests of `e2e` must not share.

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use nadc_e2e::operator::{binary, free_local_addr, http_get, spawn_tied};
use nadc_e2e::{TestNs, cluster};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE: &str = "k8s-net-attach-def-controller";
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// What the README promises after a leader's SIGTERM.
const SIGTERM_BOUND: Duration = Duration::from_secs(2);
/// Past the lease duration after a SIGKILL: the standby's re-read, its
/// random wait after clearing the expired holder (up to 1 s), API latency.
const SIGKILL_MARGIN: Duration = Duration::from_secs(3);

struct Replica {
    identity: &'static str,
    http_addr: String,
    log: PathBuf,
    child: Child,
}

impl Replica {
    fn start(identity: &'static str, namespace: &str) -> Replica {
        let http_addr = free_local_addr();
        let log = std::env::temp_dir().join(format!(
            "nadc-e2e-handover-{identity}-{}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(binary());
        cmd.args([
            "run",
            "--leader-elect",
            "on",
            "--lease-namespace",
            namespace,
        ])
        .args(["--identity", identity, "--http-addr", &http_addr])
        .arg("--lease-duration-seconds")
        .arg(LEASE_DURATION.as_secs().to_string())
        .env("RUST_LOG", "info,kube_lease_manager=debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        let child = spawn_tied(cmd).expect("start a replica");
        Replica {
            identity,
            http_addr,
            log,
            child,
        }
    }

    /// Waits until /readyz answers 200: a standby is ready once it competes.
    async fn wait_ready(&mut self) {
        let start = Instant::now();
        while http_get(&self.http_addr, "/readyz").await.map(|r| r.0) != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "replica {} exited with {status}; {}",
                    self.identity,
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "replica {} not ready after 60 s; {}",
                self.identity,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(
            rc,
            0,
            "kill {}: {}",
            self.identity,
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to end, at most `bound`.
    async fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < bound,
                "replica {} still running {bound:?} after the signal; {}",
                self.identity,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        format!(
            "its log ({}):\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// What a replica's /metrics says of itself in `nadc_leader`.
async fn leader_gauge(replica: &Replica) -> Option<f64> {
    let (_, body) = http_get(&replica.http_addr, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix("nadc_leader "))?
        .parse()
        .ok()
}

/// Polls `replica`'s /metrics until `nadc_leader` is `want`, for at most
/// two scrapes' worth of a Prometheus at 1 s.
async fn wait_leader_gauge(replica: &Replica, want: f64) {
    let start = Instant::now();
    while leader_gauge(replica).await != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "nadc_leader of {} is {:?}, {want} expected",
            replica.http_addr,
            leader_gauge(replica).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the Lease until `identity` holds it; the time that took, or None
/// after `give_up`.
async fn time_until_held(
    leases: &Api<Lease>,
    identity: &str,
    give_up: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < give_up {
        if holder(leases).await.as_deref() == Some(identity) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_standby_takes_over_within_2s_of_a_sigterm_and_within_the_lease_duration_of_a_sigkill() {
    let client = cluster().await;
    let t = TestNs::new(&client, "handover").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &t.ns);

    let mut a = Replica::start("a", &t.ns);
    a.wait_ready().await;
    time_until_held(&leases, "a", Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("a never took the free Lease; {}", a.log_text()));
    let mut b = Replica::start("b", &t.ns);
    b.wait_ready().await;
    // Let b settle into waiting on a's term, where the slow handover happened.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("a"));
    assert_eq!(leader_gauge(&a).await, Some(1.0), "a leads");
    assert_eq!(leader_gauge(&b).await, Some(0.0), "b stands by");

    // 1. SIGTERM: a releases the Lease, b takes it at once.
    a.signal(libc::SIGTERM);
    let on_sigterm = time_until_held(&leases, "b", LEASE_DURATION * 2).await;
    let status = a.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "a exited with {status} on SIGTERM; {}",
        a.log_text()
    );
    let on_sigterm = on_sigterm
        .unwrap_or_else(|| panic!("b never took the Lease after a's SIGTERM; {}", b.log_text()));
    println!("handover after the leader's SIGTERM: {on_sigterm:?}");
    wait_leader_gauge(&b, 1.0).await;
    assert!(
        on_sigterm <= SIGTERM_BOUND,
        "b took the Lease {on_sigterm:?} after a's SIGTERM; at most {SIGTERM_BOUND:?} expected"
    );

    // 2. SIGKILL: nothing is released, a (now the standby) takes over when b's term ends.
    let mut a = Replica::start("a", &t.ns);
    a.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("b"));
    assert_eq!(
        leader_gauge(&a).await,
        Some(0.0),
        "the restarted a stands by"
    );
    b.signal(libc::SIGKILL);
    let on_sigkill = time_until_held(&leases, "a", LEASE_DURATION * 3)
        .await
        .unwrap_or_else(|| panic!("a never took the Lease after b's SIGKILL; {}", a.log_text()));
    println!("handover after the leader's SIGKILL: {on_sigkill:?}");
    wait_leader_gauge(&a, 1.0).await;
    assert!(
        on_sigkill <= LEASE_DURATION + SIGKILL_MARGIN,
        "a took the Lease {on_sigkill:?} after b's SIGKILL; at most {:?} expected",
        LEASE_DURATION + SIGKILL_MARGIN
    );
    drop(b);
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(30)).await;
}
