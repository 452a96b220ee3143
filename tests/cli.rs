//! The binary as a user meets it: the README's first command prints what the
//! README shows, the configuration table matches `--help`, and `plan`'s exit
//! code says what scripts gate on: 0 nothing to do, 2 actions or warnings
//! pending, 1 on any error (bad input, bad arguments, no cluster).

use clap::CommandFactory;
use nadc::runtime::config::Cli;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_k8s-net-attach-def-controller");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn readme() -> String {
    std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap()
}

/// `plan -f FILE`'s table, for a snapshot with actions pending (exit 2).
fn plan_of(file: &str) -> String {
    let out = Command::new(BIN)
        .current_dir(ROOT)
        .args(["plan", "-f", file])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_readme_shows_what_the_first_command_prints() {
    let printed = plan_of("manifests/examples/seed-cluster.yaml");
    let readme = readme();
    assert!(readme.contains("cargo run -- plan -f manifests/examples/seed-cluster.yaml"));
    let marker = readme.find("<!-- plan-output").expect("plan-output marker");
    let block = &readme[marker..];
    let start = block.find("```\n").unwrap() + 4;
    let end = start + block[start..].find("```").unwrap();
    assert_eq!(
        &block[start..end],
        printed,
        "README's shown output is stale"
    );
}

#[test]
fn the_readme_shows_the_plan_reader_role_as_shipped() {
    let readme = readme();
    let marker = readme
        .find("<!-- plan-reader-rbac")
        .expect("plan-reader-rbac marker");
    let block = &readme[marker..];
    let start = block.find("```yaml\n").unwrap() + 8;
    let end = start + block[start..].find("```").unwrap();
    let shipped =
        std::fs::read_to_string(format!("{ROOT}/manifests/plan-reader-rbac.yaml")).unwrap();
    let shipped = &shipped[shipped.find("apiVersion:").unwrap()..];
    assert_eq!(
        &block[start..end],
        shipped,
        "README's plan-reader role is stale"
    );
}

#[test]
fn the_configuration_table_matches_help() {
    let readme = readme();
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    for arg in run.get_arguments().chain(cmd.get_arguments()) {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        assert!(arg.get_help().is_some(), "--{long} has no help text");
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `--{long}` |")))
            .unwrap_or_else(|| panic!("README's configuration table lacks --{long}"));
        if let Some(env) = arg.get_env() {
            assert!(
                row.contains(&format!("`{}`", env.to_string_lossy())),
                "--{long}: env differs in README: {row}"
            );
        }
        for default in arg.get_default_values() {
            assert!(
                row.contains(&format!("`{}`", default.to_string_lossy())),
                "--{long}: default differs in README: {row}"
            );
        }
    }
}

#[test]
fn bad_plan_input_is_a_clear_error_with_exit_code_1() {
    let dir = std::env::temp_dir().join(format!("nadc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "not-yaml.yaml",
            "a: [unclosed",
            "not-yaml.yaml: not valid YAML",
        ),
        (
            "no-kind.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nfoo: 1\n",
            "no-kind.yaml: document 2: object has no `kind`",
        ),
        ("binary.yaml", "\u{0}\u{1}\u{2}", "binary.yaml"),
    ];
    for (name, content, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let out = Command::new(BIN)
            .arg("plan")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let missing = Command::new(BIN)
        .args(["plan", "-f", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A cluster where the operator has nothing left to do: every NAD in use
/// protected and labelled, an unused one protected and unlabelled, no
/// Service opting in.
const SETTLED: &str = "\
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: used, namespace: default, finalizers: [k8s.cni.cncf.io/net-attach-def-protection], labels: {k8s.cni.cncf.io/in-use: 'true'}}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: unused, namespace: default, finalizers: [k8s.cni.cncf.io/net-attach-def-protection]}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default, annotations: {k8s.v1.cni.cncf.io/networks: used}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{port: 80}]}
";

fn plan_stdin(input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["plan", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn plan_exits_0_when_nothing_is_pending_and_2_when_one_change_is() {
    let settled = plan_stdin(SETTLED);
    let table = String::from_utf8_lossy(&settled.stdout);
    assert_eq!(settled.status.code(), Some(0), "{table}");
    assert!(table.contains("default/used "), "{table}");
    // The in-use label missing: one patch pending.
    let unlabelled = SETTLED.replacen(", labels: {k8s.cni.cncf.io/in-use: 'true'}", "", 1);
    let out = plan_stdin(&unlabelled);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{table}");
    assert!(
        table.contains("label k8s.cni.cncf.io/in-use=true"),
        "{table}"
    );
    // A Service whose opt-in is refused: a Warning pending, no write.
    let conflicting = format!(
        "{SETTLED}---\napiVersion: v1\nkind: Service\nmetadata: {{name: mixed, namespace: default, annotations: {{k8s.v1.cni.cncf.io/networks: used, k8s.v1.cni.cncf.io/selector: app=web}}}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
    );
    let out = plan_stdin(&conflicting);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{table}");
    assert!(table.contains("Warning SelectorConflict"), "{table}");
}

#[test]
fn argument_errors_exit_1_never_2_and_help_exits_0() {
    for args in [
        &["plan", "--live", "-f", "x.yaml"][..],
        &["plan", "--no-such-flag"],
        &["plan", "-o", "json"],
        &["run", "--max-endpoints-per-slice", "0"],
        &["no-such-command"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    }
    for args in [&["--help"][..], &["plan", "--help"], &["--version"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn plan_live_without_a_reachable_cluster_exits_1_saying_what_failed() {
    let dir = std::env::temp_dir().join(format!("nadc-cli-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = unreachable_kubeconfig(&dir);
    for args in [&["plan", "--live"][..], &["plan"]] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: discovering admissionregistration.k8s.io/v1: "),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn plan_reads_stdin() {
    let seed =
        std::fs::read_to_string(format!("{ROOT}/manifests/examples/seed-cluster.yaml")).unwrap();
    let out = plan_stdin(&seed);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("default/foo-network"));
}

/// Annotations Multus accepts (free-form interfaces, capitalised JSON keys),
/// one it cannot read, and a network reported in network-status: every NAD
/// they name is held while it is being deleted.
#[test]
fn plan_holds_every_nad_that_multus_edge_case_annotations_use() {
    let printed = plan_of("manifests/examples/multus-edge-cases.yaml");
    for nad in [
        "default/sriov-net",
        "default/macvlan-conf",
        "default/br-a",
        "default/first-net",
        "default/second-net",
        "other/capnet",
        "default/half-typed",
        "default/attached-net",
    ] {
        let row = printed
            .lines()
            .find(|l| l.starts_with(&format!("{nad} ")))
            .unwrap_or_else(|| panic!("no row for {nad}:\n{printed}"));
        assert!(row.contains("deletion blocked"), "{row}");
    }
}

/// A kubeconfig naming an API server that is never reached: `run` must stop
/// on its own HTTP address before it gets that far.
fn unreachable_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: k, cluster: {server: 'http://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: c, context: {cluster: k, user: u}}]\n",
    )
    .unwrap();
    path
}

#[test]
fn run_fails_loudly_when_the_http_address_is_taken() {
    let dir = std::env::temp_dir().join(format!("nadc-cli-port-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["run", "--leader-elect", "off", "--http-addr", &addr])
        .arg("--kubeconfig")
        .arg(unreachable_kubeconfig(&dir))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Before the fix it ran on without its HTTP server: give it 20 s, then fail.
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`run --http-addr {addr}` is still running 20 s after start although {addr} is taken"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(&format!("error: cannot listen on --http-addr {addr}")),
        "{stderr}"
    );
    drop(taken);
    std::fs::remove_dir_all(dir).unwrap();
}
