//! The command line. Every flag of `run` can also be set from the
//! environment variable shown in `--help`, which is how the Deployment sets them.

use super::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "k8s-net-attach-def-controller",
    version,
    about = "Protects NetworkAttachmentDefinitions in use with a finalizer, and publishes pods' secondary-network addresses as EndpointSlices"
)]
pub struct Cli {
    /// Kubeconfig file to use; without it, in-cluster config or $KUBECONFIG / ~/.kube/config is used.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Log line format; the level comes from RUST_LOG (default info). Text is coloured only on a
    /// terminal, and never when NO_COLOR is set to a non-empty value.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers against the cluster.
    Run(RunArgs),
    /// Show what the operator would do, for a live cluster (read-only) or for objects in YAML files.
    /// Exit code: 0 nothing to do, 2 actions or warnings pending, 1 error.
    Plan(PlanArgs),
    /// Remove our finalizer from every NetworkAttachmentDefinition (run before uninstalling).
    ReleaseFinalizers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeaderElect {
    /// On when running in a cluster (KUBERNETES_SERVICE_HOST is set), off otherwise.
    Auto,
    /// Always compete for the Lease (also `true`, kube-controller-manager's spelling).
    #[value(alias = "true")]
    On,
    /// Reconcile without a Lease (one replica only; also `false`).
    #[value(alias = "false")]
    Off,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Leader election on a coordination.k8s.io Lease; only the leader reconciles.
    #[arg(long, env = "LEADER_ELECT", value_enum, default_value_t = LeaderElect::Auto)]
    pub leader_elect: LeaderElect,
    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "LEASE_NAME",
        default_value = "k8s-net-attach-def-controller"
    )]
    pub lease_name: String,
    /// The operator's namespace, for its Lease and the pod admission policy's ConfigMap; defaults to the pod's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub lease_namespace: String,
    /// Seconds a leader holds the Lease without renewing it; a standby takes over after that.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(5..=300))]
    pub lease_duration_seconds: u64,
    /// Identity in the Lease; defaults to the pod name, then the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Namespace Multus reads a namespace-less default-network annotation from.
    #[arg(long, env = "MULTUS_NAMESPACE", default_value = crate::names::DEFAULT_MULTUS_NAMESPACE)]
    pub multus_namespace: String,
    /// Most endpoints per EndpointSlice (Kubernetes' own default is 100).
    #[arg(long, env = "MAX_ENDPOINTS_PER_SLICE", default_value_t = DEFAULT_MAX_ENDPOINTS_PER_SLICE, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_endpoints_per_slice: u16,
    /// Page size of LIST requests (pods, NADs). Each page of full pods is
    /// held whole while it is read: 100 keeps that to a few MiB (500 added
    /// 13 MiB of peak RSS at 2,000 pods) for a round-trip more per 100 pods.
    #[arg(long, env = "LIST_PAGE_SIZE", default_value_t = DEFAULT_LIST_PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub list_page_size: u32,
}

impl RunArgs {
    pub fn leader_election_enabled(&self) -> bool {
        match self.leader_elect {
            LeaderElect::On => true,
            LeaderElect::Off => false,
            LeaderElect::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            multus_namespace: self.multus_namespace.clone(),
            namespace: self.lease_namespace.clone(),
            max_endpoints_per_slice: self.max_endpoints_per_slice as usize,
            list_page_size: self.list_page_size,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    /// A readable report.
    Table,
    /// The desired EndpointSlices and NAD finalizer patches as YAML, for `kubectl apply --dry-run=server -f -`.
    Yaml,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// YAML file with Kubernetes objects (a List or several documents); `-` reads stdin. Repeatable.
    /// Without it, the cluster is read (as --live).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "live"
    )]
    pub files: Vec<PathBuf>,
    /// Read the cluster of the kubeconfig (--kubeconfig, --context) with get and list only. The default without -f.
    #[arg(long)]
    pub live: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = PlanOutput::Table)]
    pub output: PlanOutput,
    /// No progress on stderr while the cluster is read (it is shown only when stdout and stderr are terminals).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Namespace Multus reads a namespace-less default-network annotation from.
    #[arg(long, default_value = crate::names::DEFAULT_MULTUS_NAMESPACE)]
    pub multus_namespace: String,
    /// Most endpoints per EndpointSlice.
    #[arg(long, default_value_t = DEFAULT_MAX_ENDPOINTS_PER_SLICE, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_endpoints_per_slice: u16,
    /// The operator's namespace, whose ConfigMap the admission policy bindings must read (with --live).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub operator_namespace: String,
    /// Page size of the LIST requests (with --live), as the operator's --list-page-size.
    #[arg(long, default_value_t = DEFAULT_LIST_PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub list_page_size: u32,
}

impl PlanArgs {
    /// Whether the cluster is read rather than files.
    pub fn reads_cluster(&self) -> bool {
        self.live || self.files.is_empty()
    }
}

/// Settings the controllers read (a subset of the command line), and the
/// defaults of each, which the flags share.
#[derive(Clone, Debug)]
pub struct Settings {
    pub multus_namespace: String,
    /// The operator's own namespace: its Lease, and the ConfigMap the pod
    /// admission policy reads.
    pub namespace: String,
    pub max_endpoints_per_slice: usize,
    pub list_page_size: u32,
    /// How long the shared live LIST of pods waits for more NADs to join it.
    pub live_list_gather: std::time::Duration,
}

/// Where the manifests install the operator.
pub const DEFAULT_NAMESPACE: &str = "net-attach-def-system";
/// Kubernetes' own default for endpoints per slice.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: u16 = 100;
/// Objects per page of every paginated LIST.
pub const DEFAULT_LIST_PAGE_SIZE: u32 = 100;
/// How long the first NAD to confirm its release waits for others before
/// the shared live LIST starts (see `protection::live::SharedList`).
pub const DEFAULT_LIVE_LIST_GATHER: std::time::Duration = std::time::Duration::from_millis(500);

/// The shutdown budget, which the pod's `terminationGracePeriodSeconds`
/// (30 s in `manifests/deployment.yaml`) must exceed; a test checks it. On
/// SIGTERM, reconciles in flight get `SHUTDOWN_RECONCILE_GRACE` to finish;
/// then the Lease is released (at most `LEASE_RELEASE_TIMEOUT`) while the
/// queued Events go out (at most `EVENT_DRAIN_DEADLINE`). On losing the lead
/// only the Events are drained, before the process exits.
pub const SHUTDOWN_RECONCILE_GRACE: std::time::Duration = std::time::Duration::from_secs(20);
/// How long releasing the Lease may take on shutdown.
pub const LEASE_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the Event outbox may take to send what it holds on shutdown or
/// on losing the lead; what is still queued then is dropped and counted
/// (`nadc_events_dropped_total{reason="shutdown"}`).
pub const EVENT_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest shutdown the budget above allows.
pub fn shutdown_budget() -> std::time::Duration {
    SHUTDOWN_RECONCILE_GRACE + LEASE_RELEASE_TIMEOUT.max(EVENT_DRAIN_DEADLINE)
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            multus_namespace: crate::names::DEFAULT_MULTUS_NAMESPACE.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            max_endpoints_per_slice: DEFAULT_MAX_ENDPOINTS_PER_SLICE.into(),
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            live_list_gather: DEFAULT_LIVE_LIST_GATHER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["x", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert_eq!(run.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(run.max_endpoints_per_slice, 100);
        assert_eq!(run.multus_namespace, "kube-system");
        assert_eq!(run.leader_elect, LeaderElect::Auto);
    }

    #[test]
    fn flags_override_and_limits_are_enforced() {
        let cli = Cli::try_parse_from([
            "x",
            "--log-format",
            "json",
            "run",
            "--leader-elect",
            "off",
            "--max-endpoints-per-slice",
            "1000",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert!(!run.leader_election_enabled());
        assert_eq!(run.settings().max_endpoints_per_slice, 1000);
        assert!(Cli::try_parse_from(["x", "run", "--max-endpoints-per-slice", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "run", "--max-endpoints-per-slice", "1001"]).is_err());
        assert!(Cli::try_parse_from(["x", "run", "--http-addr", "nope"]).is_err());
    }

    #[test]
    fn leader_elect_takes_true_and_false_as_kube_controller_manager_does() {
        let parse = |v: &str| {
            let Command::Run(run) = Cli::try_parse_from(["x", "run", "--leader-elect", v])
                .unwrap_or_else(|e| panic!("--leader-elect {v}: {e}"))
                .command
            else {
                panic!()
            };
            run.leader_elect
        };
        assert_eq!(parse("true"), LeaderElect::On);
        assert_eq!(parse("on"), LeaderElect::On);
        assert_eq!(parse("false"), LeaderElect::Off);
        assert_eq!(parse("off"), LeaderElect::Off);
        assert_eq!(parse("auto"), LeaderElect::Auto);
        assert!(Cli::try_parse_from(["x", "run", "--leader-elect", "yes"]).is_err());
    }

    #[test]
    fn plan_takes_several_files() {
        let cli =
            Cli::try_parse_from(["x", "plan", "-f", "a.yaml", "-f", "-", "-o", "yaml"]).unwrap();
        let Command::Plan(plan) = cli.command else {
            panic!()
        };
        assert_eq!(plan.files.len(), 2);
        assert_eq!(plan.output, PlanOutput::Yaml);
        assert!(!plan.reads_cluster());
    }

    #[test]
    fn plan_without_files_reads_the_cluster_and_live_takes_no_files() {
        for args in [&["x", "plan"][..], &["x", "plan", "--live", "-q"]] {
            let Command::Plan(plan) = Cli::try_parse_from(args).unwrap().command else {
                panic!()
            };
            assert!(plan.reads_cluster(), "{args:?}");
            assert_eq!(plan.list_page_size, DEFAULT_LIST_PAGE_SIZE);
            assert_eq!(plan.operator_namespace, DEFAULT_NAMESPACE);
        }
        assert!(Cli::try_parse_from(["x", "plan", "--live", "-f", "a.yaml"]).is_err());
    }
}
