//! Command-line wiring only: parse flags, build the client, hand over to the
//! library. `run` starts the controllers, `plan` shows what they would do
//! (for a live cluster, read-only, or for files), and `release-finalizers`
//! prepares an uninstall.

use clap::Parser;
use futures::FutureExt;
use nadc::runtime::config::{
    Cli, Command, EVENT_DRAIN_DEADLINE, LEASE_RELEASE_TIMEOUT, RunArgs, SHUTDOWN_RECONCILE_GRACE,
};
use nadc::runtime::leader::{self, Leadership};
use nadc::runtime::{Shared, http, metrics::Metrics, telemetry};
use nadc::{endpoints, feed, plan, protection, release};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

/// jemalloc, not the platform's malloc: at 50,000 pods it holds the same
/// heap in 99 MiB of anonymous memory where glibc's held 123 MiB (glibc
/// keeps freed pages in per-thread arenas); the static image would otherwise
/// get musl's, widely reported slow under threads (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Argument errors exit 1, as every other error does: `plan`'s exit code
    // 2 means "actions pending", which a usage error must never pass for.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Plan(ref args) if args.reads_cluster() => {
            let (client, server) = match client_and_server(&cli).await {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            plan::live::main(client, &server, args).await
        }
        Command::Plan(ref args) => plan::main(args),
        Command::ReleaseFinalizers => {
            let client = match client(&cli).await {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            match release::release_all(client, &mut std::io::stdout()).await {
                Ok(done)
                    if done
                        .iter()
                        .any(|r| matches!(r, release::Released::Failed(..))) =>
                {
                    ExitCode::FAILURE
                }
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(e.into()),
            }
        }
        Command::Run(ref args) => {
            let telemetry = match telemetry::init(cli.log_format) {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            let code = match client(&cli).await {
                Ok(client) => run(client, args).await,
                Err(e) => fail(e),
            };
            telemetry.shutdown();
            code
        }
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

async fn client(cli: &Cli) -> anyhow::Result<kube::Client> {
    Ok(client_and_server(cli).await?.0)
}

/// The client, and the URL of the API server it talks to.
async fn client_and_server(cli: &Cli) -> anyhow::Result<(kube::Client, String)> {
    let options = kube::config::KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if cli.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    Ok((kube::Client::try_from(config)?, server))
}

/// Resolves on SIGTERM or SIGINT.
/// SIGTERM or SIGINT, from the moment this is called for the rest of the
/// process: one listener for the whole life of `run`, so that a signal that
/// lands between two phases (a standby becoming leader) is never lost, as it
/// would be with a new listener per phase. The returned function gives a
/// future that resolves once the signal has arrived, even long before.
fn termination() -> impl Fn() -> futures::future::BoxFuture<'static, ()> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received, shutting down"),
        }
        let _ = tx.send(true);
    });
    move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|received| *received).await;
        })
    }
}

async fn run(client: kube::Client, args: &RunArgs) -> ExitCode {
    let termination = termination();
    let listener = match http::bind(args.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot start");
            return fail(e);
        }
    };
    let metrics = Arc::new(Metrics::default());
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "k8s-net-attach-def-controller".into());
    let (shared, synced_tx) = Shared::new(
        client.clone(),
        metrics.clone(),
        args.settings(),
        Some(identity.clone()),
    );
    let (ready_tx, ready_rx) = watch::channel(false);

    // One shutdown signal, cloned into every task that must stop.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = stop_rx.map(|_| ()).shared();
    let mut stop_tx = Some(stop_tx);
    let http_task = tokio::spawn(http::serve(
        listener,
        http::HttpState {
            metrics: metrics.clone(),
            ready: ready_rx,
        },
        stop.clone(),
    ));

    let mut leadership = None;
    if args.leader_election_enabled() {
        info!(lease = %args.lease_name, namespace = %args.lease_namespace, %identity, "waiting for leadership");
        let mut l = tokio::select! {
            l = Leadership::start(client.clone(), &args.lease_name, &args.lease_namespace, &identity, args.lease_duration_seconds, metrics.leader.clone()) => l,
            _ = termination() => return ExitCode::SUCCESS,
        };
        // A standby that reaches the Lease API is ready: it can take over.
        let _ = ready_tx.send(true);
        tokio::select! {
            _ = l.acquired() => info!("leadership acquired"),
            _ = termination() => {
                l.release(LEASE_RELEASE_TIMEOUT).await;
                return ExitCode::SUCCESS;
            }
        }
        let _ = ready_tx.send(false);
        leadership = Some(l);
    } else {
        // Without leader election this replica is the one that reconciles.
        metrics.leader.set(1);
    }

    // The leader is ready once the pod index is synced.
    let mut synced_rx = shared.pods_synced.clone();
    let ready_task = tokio::spawn(async move {
        if synced_rx.wait_for(|s| *s).await.is_ok() {
            let _ = ready_tx.send(true);
        }
    });

    let (nad_tx, nad_rx) = futures::channel::mpsc::unbounded();
    let (svc_tx, svc_rx) = futures::channel::mpsc::unbounded();
    let (resync_tx, resync_rx) = futures::channel::mpsc::unbounded();
    let services = endpoints::watch::service_watch(client.clone());
    let feed_task = tokio::spawn(feed::run(
        shared.clone(),
        services.selectors.clone(),
        feed::Outputs {
            nads: nad_tx,
            services: svc_tx,
            resync_services: resync_tx,
            synced: synced_tx,
        },
    ));
    let controllers = futures::future::join(
        protection::controller::run(shared.clone(), nad_rx, stop.clone()),
        endpoints::controller::run(shared.clone(), services, svc_rx, resync_rx, stop.clone()),
    );
    let lost = || match &leadership {
        Some(l) => Leadership::lost(l.state.clone()).boxed(),
        None => futures::future::pending().boxed(),
    };
    info!("controllers starting");
    let mut controllers = Box::pin(controllers);
    let mut lost_leadership = false;
    // While we lead: on losing the lease the controllers are dropped there
    // and then, cancelling every reconcile in flight (leader::while_leading),
    // so that no write of ours follows the loss.
    let stopping = async {
        tokio::select! {
            _ = &mut controllers => false,
            _ = termination() => true,
        }
    };
    match leader::while_leading(stopping, lost()).await {
        None => lost_leadership = true,
        Some(false) => {}
        Some(true) => {
            // SIGTERM: stop accepting work, let in-flight reconciles finish
            // (bounded), unless the lease goes meanwhile.
            if let Some(tx) = stop_tx.take() {
                let _ = tx.send(());
            }
            let finish = tokio::time::timeout(SHUTDOWN_RECONCILE_GRACE, &mut controllers);
            match leader::while_leading(finish, lost()).await {
                None => lost_leadership = true,
                Some(Err(_)) => {
                    error!(grace = ?SHUTDOWN_RECONCILE_GRACE, "controllers did not stop in time")
                }
                Some(Ok(_)) => {}
            }
        }
    }
    if lost_leadership {
        // No write of ours follows: the controllers are dropped here, and
        // returning ends the runtime with every task it still runs. Only
        // the Events already queued, which change nothing, still go out
        // until the drain deadline.
        drop(controllers);
        feed_task.abort();
        error!(
            "leadership lost; in-flight reconciles cancelled, stopping so that this replica restarts as a standby"
        );
        shared.drain_events(EVENT_DRAIN_DEADLINE).await;
        return ExitCode::FAILURE;
    }
    feed_task.abort();
    ready_task.abort();
    // The Lease goes while the queued Events do, so that a standby takes
    // over without waiting for them.
    let release = async {
        if let Some(l) = leadership {
            l.release(LEASE_RELEASE_TIMEOUT).await;
        }
    };
    futures::future::join(release, shared.drain_events(EVENT_DRAIN_DEADLINE)).await;
    match http_task.await {
        Ok(Err(e)) => error!(error = %e, "the HTTP server failed"),
        Err(e) => error!(error = %e, "the HTTP server task panicked"),
        Ok(Ok(())) => {}
    }
    info!("stopped");
    ExitCode::SUCCESS
}
