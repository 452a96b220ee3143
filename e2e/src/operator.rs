//! The operator under test: `E2E_CONTROLLER=deployed` (default) expects it
//! running in the cluster (`just e2e` deploys the kind overlay);
//! `E2E_CONTROLLER=local` starts the freshly built binary here, once per
//! test binary, against the same KUBECONFIG.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

pub const NAMESPACE: &str = "net-attach-def-system";
pub const NAME: &str = "k8s-net-attach-def-controller";
const SELECTOR: &str = "app.kubernetes.io/name=k8s-net-attach-def-controller";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Local,
    Deployed,
}

pub struct Operator {
    pub mode: Mode,
    child: Mutex<Option<Child>>,
    /// Serialises restarts and stops across the tests of one binary.
    lifecycle: tokio::sync::Mutex<()>,
    pub http_addr: String,
}

static OPERATOR: OnceCell<Operator> = OnceCell::const_new();

/// The operator of this test process, once started.
pub fn started() -> Option<&'static Operator> {
    OPERATOR.get()
}

/// Where the local operator of this test process logs (every restart
/// appends).
pub fn local_log() -> PathBuf {
    std::env::temp_dir().join(format!("nadc-e2e-operator-{}.log", std::process::id()))
}

/// (resource, API group) whose RBAC refusals a test provokes on purpose.
static TOLERATED_REFUSALS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The lines of an operator log where the API server refused a request for
/// want of permission: its authorizer answers 403 with `<resource> is
/// forbidden: User "<user>" cannot <verb> resource "<resource>" in API
/// group "<group>" ...`. Other 403s are no RBAC matter and do not count: a
/// namespace being deleted refuses new objects ("forbidden: unable to
/// create new content"), an admission policy denies ("forbidden:
/// ValidatingAdmissionPolicy ..."). Refusals of a `tolerated` (resource,
/// group) are left out. Quotes may come escaped (the JSON log format).
pub fn rbac_refusals<'a>(log: &'a str, tolerated: &[(String, String)]) -> Vec<&'a str> {
    log.lines()
        .filter(|line| {
            let plain = line.replace('\\', "");
            plain.contains("is forbidden: User \"")
                && plain.contains(" cannot ")
                && !tolerated.iter().any(|(resource, group)| {
                    plain.contains(&format!("resource \"{resource}\" in API group \"{group}\""))
                })
        })
        .collect()
}

/// The binary the local mode runs: `E2E_BINARY`, else the operator built
/// beside this executable (same target directory and profile, so
/// `CARGO_TARGET_DIR` and `--release` are followed).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("E2E_BINARY") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the path of this executable");
    let mut dir = exe.parent().expect("the executable's directory");
    // Test binaries live in <profile>/deps, other binaries in <profile>.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("the profile directory");
    }
    dir.join("k8s-net-attach-def-controller")
}

/// A loopback address with a port that is free now.
pub fn free_local_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .to_string()
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// Starts `cmd` so that it cannot outlive this process, even when this
/// process is killed with SIGKILL: on Linux the child asks the kernel for a
/// SIGKILL when its parent goes (prctl PR_SET_PDEATHSIG).
///
/// The kernel's "parent" is the thread that forked, and the test harness
/// runs each test on a thread that ends with the test, so children are
/// forked by one thread that lives as long as the process.
pub fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: std::sync::OnceLock<std::sync::mpsc::Sender<SpawnRequest>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    tie_to_this_process(&mut cmd);
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .expect("the spawner thread is running");
    reply_rx.recv().expect("the spawner thread answers")
}

#[cfg(target_os = "linux")]
fn tie_to_this_process(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (prctl, getppid), and nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn tie_to_this_process(_: &mut Command) {}

impl Operator {
    pub async fn ensure(client: &Client) -> &'static Operator {
        OPERATOR
            .get_or_init(|| async {
                let mode = match std::env::var("E2E_CONTROLLER").as_deref() {
                    Ok("local") => Mode::Local,
                    Ok("deployed") | Err(_) => Mode::Deployed,
                    Ok(other) => panic!("E2E_CONTROLLER must be local or deployed, not {other:?}"),
                };
                let op = Operator {
                    mode,
                    child: Mutex::new(None),
                    lifecycle: tokio::sync::Mutex::new(()),
                    // A free port by default: a fixed one was answered by
                    // another harness' operator, and its /readyz taken for ours.
                    http_addr: std::env::var("E2E_HTTP_ADDR").unwrap_or_else(|_| free_local_addr()),
                };
                if mode == Mode::Local {
                    crate::assert_no_other_operator(client).await;
                }
                op.start(client).await;
                op
            })
            .await
    }

    /// Starts the operator (local) or makes sure it runs (deployed), and waits until it is ready.
    pub async fn start(&self, client: &Client) {
        match self.mode {
            Mode::Local => {
                if let Err(e) = std::net::TcpListener::bind(&self.http_addr) {
                    panic!(
                        "{} is taken ({e}): another operator? set E2E_HTTP_ADDR to a free address",
                        self.http_addr
                    );
                }
                let bin = binary();
                assert!(
                    bin.exists(),
                    "{} is missing: run `cargo build --bin k8s-net-attach-def-controller` first (just e2e-local does)",
                    bin.display()
                );
                let log = local_log();
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                let mut cmd = Command::new(&bin);
                cmd.args([
                    "run",
                    "--leader-elect",
                    "off",
                    "--http-addr",
                    &self.http_addr,
                ])
                .env(
                    "RUST_LOG",
                    std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(out.try_clone().unwrap())
                .stderr(out);
                // E2E_OPERATOR_AS=system:serviceaccount:<ns>:<sa> runs the
                // local operator with that identity's permissions only (the
                // client impersonates it: kube's debug override), so that
                // the shipped RBAC, once applied, is what the suite exercises.
                if let Ok(user) = std::env::var("E2E_OPERATOR_AS") {
                    cmd.env("KUBE_RS_DEBUG_IMPERSONATE_USER", user);
                }
                let child = spawn_tied(cmd).expect("start the operator");
                // Besides the kernel's parent-death signal (Linux only), a
                // watchdog ends the operator when this test process ends; it
                // outlives us on purpose, so it is never waited for.
                #[allow(clippy::zombie_processes)]
                Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "while kill -0 {} 2>/dev/null; do sleep 1; done; kill {} 2>/dev/null",
                        std::process::id(),
                        child.id()
                    ))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start the watchdog");
                println!(
                    "operator started locally (pid {}, log {})",
                    child.id(),
                    log.display()
                );
                *self.child.lock().unwrap() = Some(child);
                self.wait_ready_local().await;
            }
            Mode::Deployed => {
                let deploys: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
                let d = deploys.get_opt(NAME).await.expect("read the operator Deployment").unwrap_or_else(|| {
                    panic!("E2E_CONTROLLER=deployed but {NAMESPACE}/{NAME} does not exist: deploy kustomize/overlays/kind, or use E2E_CONTROLLER=local")
                });
                if d.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
                    let patch = json!({"spec": {"replicas": 1}});
                    deploys
                        .patch(NAME, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .expect("scale up");
                }
                wait_deployed_ready(client, &[]).await;
            }
        }
    }

    /// Stops the operator: kill -9 the local process, or scale the Deployment to 0.
    pub async fn stop(&self, client: &Client) {
        match self.mode {
            Mode::Local => {
                if let Some(mut c) = self.child.lock().unwrap().take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Mode::Deployed => {
                let deploys: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
                let patch = json!({"spec": {"replicas": 0}});
                deploys
                    .patch(NAME, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .expect("scale down");
                let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
                let start = Instant::now();
                while !pods
                    .list(&ListParams::default().labels(SELECTOR))
                    .await
                    .unwrap()
                    .items
                    .is_empty()
                {
                    assert!(
                        start.elapsed() < Duration::from_secs(120),
                        "operator pods did not go away"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Restarts the operator abruptly (SIGKILL locally, pod deletion in the
    /// cluster), losing all of its in-memory state.
    pub async fn restart(&self, client: &Client) {
        let _guard = self.lifecycle.lock().await;
        match self.mode {
            Mode::Local => {
                self.stop(client).await;
                self.start(client).await;
            }
            Mode::Deployed => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
                let old: Vec<String> = pods
                    .list(&ListParams::default().labels(SELECTOR))
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|p| p.name_any())
                    .collect();
                pods.delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels(SELECTOR),
                )
                .await
                .expect("delete operator pods");
                wait_deployed_ready(client, &old).await;
            }
        }
    }

    /// Holds other restarts off while a test needs the operator stopped.
    pub async fn lifecycle(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lifecycle.lock().await
    }

    async fn wait_ready_local(&self) {
        let start = Instant::now();
        loop {
            // Exited first: a 200 from another process on the address must
            // not pass for ours (ours exits when the address is taken).
            if let Some(c) = self.child.lock().unwrap().as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "the operator exited with {status} before becoming ready (see its log in the temp directory)"
                );
            }
            if let Some((200, _)) = http_get(&self.http_addr, "/readyz").await {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the operator did not become ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The operator's /metrics text (local mode only).
    pub async fn metrics(&self) -> Option<String> {
        match self.mode {
            Mode::Local => http_get(&self.http_addr, "/metrics")
                .await
                .map(|(_, body)| body),
            Mode::Deployed => None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// For a test that takes a permission away on purpose: refusals of
    /// `resource` in API `group` ("" for the core group) no longer fail
    /// the tests of this process.
    pub fn tolerate_rbac_refusals(&self, resource: &str, group: &str) {
        TOLERATED_REFUSALS
            .lock()
            .unwrap()
            .push((resource.into(), group.into()));
    }

    /// The RBAC refusals in the local operator's log so far (`rbac_refusals`).
    /// None for a deployed operator, whose log is not read here (a restart
    /// deletes its pod, and the log with it).
    pub fn rbac_refusals_so_far(&self) -> Option<Vec<String>> {
        if self.mode != Mode::Local {
            return None;
        }
        let log = std::fs::read_to_string(local_log()).unwrap_or_default();
        let tolerated = TOLERATED_REFUSALS.lock().unwrap().clone();
        Some(
            rbac_refusals(&log, &tolerated)
                .into_iter()
                .map(str::to_string)
                .collect(),
        )
    }
}

/// Waits until a ready operator pod exists that is not one of `old`.
async fn wait_deployed_ready(client: &Client, old: &[String]) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .expect("list operator pods");
        let ready = list.items.iter().any(|p| {
            !old.contains(&p.name_any())
                && p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no ready operator pod after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::BufRead;

    const HELPER_ENV: &str = "NADC_E2E_TIED_CHILD_HELPER";

    /// Whether `pid` still runs (a zombie, dead but not yet reaped, does not).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    /// Not a test on its own: run by the test below as a separate process
    /// (this test binary, with HELPER_ENV set). Starts a tied `sleep` from a
    /// thread that then ends, prints its pid, and waits to be killed.
    #[test]
    fn tied_child_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        // Never waited for: this process is SIGKILLed while the child runs.
        #[allow(clippy::zombie_processes)]
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("300");
            spawn_tied(cmd).unwrap()
        })
        .join()
        .unwrap();
        println!("child {}", child.id());
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    #[test]
    fn a_tied_child_outlives_its_spawning_thread_and_dies_with_a_sigkilled_parent() {
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "operator::tests::tied_child_helper",
                "--nocapture",
            ])
            .env(HELPER_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(helper.stdout.take().unwrap());
        let pid: u32 = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("child ")?.trim().parse().ok())
            .expect("the helper prints its child's pid");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            running(pid),
            "the child died with the thread that started it"
        );
        helper.kill().unwrap(); // SIGKILL: no handler, no destructor runs
        helper.wait().unwrap();
        let start = Instant::now();
        while running(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the child {pid} outlived its SIGKILLed parent by 5 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    /// As the operator logs them (text format, from a run on Kubernetes
    /// 1.36.2 with `get` on services taken away; the Status cut short).
    const REFUSED_GET: &str = r#"2026-12-01T04:58:24.275201Z  WARN reconciling object{object.ref=Service.v1./mig.e2e-migrate-373472 object.reason=object updated}: nadc::runtime::retry: reconcile failed controller="secondary-endpoints" object=e2e-migrate-373472/mig attempt=1 retry_in=1s error=reading, before deleting Kubernetes' slices of it, e2e-migrate-373472/mig: ApiError: services "mig" is forbidden: User "system:serviceaccount:net-attach-def-system:k8s-net-attach-def-controller" cannot get resource "services" in API group "" in the namespace "e2e-migrate-373472": Forbidden (Status { status: Some(Failure), code: 403 })"#;
    const TERMINATING: &str = r#"2026-12-01T04:56:46.766054Z  WARN nadc::runtime::events: could not publish event; the Event is dropped reason=DeletionBlocked object=Some("local") error=ApiError: events.events.k8s.io "local.18ed08597656f5ba" is forbidden: unable to create new content in namespace e2e-nsdel-cc0531 because it is being terminated: Forbidden (Status { status: Some(Failure), code: 403 })"#;
    /// The JSON log format escapes the quotes.
    const REFUSED_EVENT_JSON: &str = r#"{"level":"WARN","fields":{"message":"could not publish event; the Event is dropped","error":"ApiError: events.events.k8s.io \"web.1\" is forbidden: User \"system:serviceaccount:net-attach-def-system:k8s-net-attach-def-controller\" cannot patch resource \"events\" in API group \"events.k8s.io\" in the namespace \"e2e-a\": Forbidden"}}"#;
    const ADMISSION: &str = r#"2026-12-01T05:00:02.000000Z  INFO x: pods "p" is forbidden: ValidatingAdmissionPolicy 'net-attach-def-pod-admission' with binding 'net-attach-def-pod-admission' denied request: NAD is being released"#;

    #[test]
    fn only_refusals_for_want_of_permission_count() {
        let log = [
            REFUSED_GET,
            TERMINATING,
            REFUSED_EVENT_JSON,
            ADMISSION,
            "INFO ready",
        ]
        .join("\n");
        assert_eq!(
            rbac_refusals(&log, &[]),
            vec![REFUSED_GET, REFUSED_EVENT_JSON]
        );
    }

    #[test]
    fn a_tolerated_resource_is_left_out() {
        let log = [REFUSED_GET, REFUSED_EVENT_JSON].join("\n");
        let events = [("events".to_string(), "events.k8s.io".to_string())];
        assert_eq!(rbac_refusals(&log, &events), vec![REFUSED_GET]);
        let pods_elsewhere = [("pods".to_string(), "apps".to_string())];
        assert_eq!(rbac_refusals(&log, &pods_elsewhere).len(), 2);
    }
}
