# Developer tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

image := env_var_or_default("IMAGE", "k8s-net-attach-def-controller:dev")
cluster := env_var_or_default("KIND_CLUSTER", "nadc-e2e")
operator_sa := "system:serviceaccount:net-attach-def-system:k8s-net-attach-def-controller"

default:
    @just --list

# Run the controllers against the cluster in KUBECONFIG (leader election off).
run *ARGS:
    cargo run -- run --leader-elect off --http-addr 127.0.0.1:8080 {{ARGS}}

# What the operator would do for the seed snapshot, offline.
plan FILE="manifests/examples/seed-cluster.yaml":
    cargo run -- plan -f {{FILE}}

# Unit, property, mock-API and manifest tests (no cluster needed).
test:
    cargo test --workspace

fmt:
    cargo fmt --all

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Everything CI runs.
ci:
    bash .ci/run

# Criterion benchmark of the desired-state computation.
bench:
    cargo bench --bench plan

# Build the container image (static musl binary, distroless, non-root).
image:
    docker build -t {{image}} .

# Render every kustomize overlay.
manifests:
    for o in kustomize/base kustomize/overlays/*; do echo "== $o"; kubectl kustomize "$o" > /dev/null; done

# End-to-end on a new kind cluster: create, build, load, deploy, test, delete (KEEP_CLUSTER=1 keeps it).
e2e:
    #!/usr/bin/env bash
    set -euo pipefail
    kind create cluster --name {{cluster}} --config e2e/kind-config.yaml
    cleanup() { if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name {{cluster}}; fi; }
    trap cleanup EXIT
    docker build -t {{image}} .
    kind load docker-image {{image}} --name {{cluster}}
    kubectl --context kind-{{cluster}} apply -f e2e/crds/network-attachment-definitions.yaml
    kubectl --context kind-{{cluster}} wait --for=condition=Established crd/network-attachment-definitions.k8s.cni.cncf.io --timeout=60s
    kubectl kustomize kustomize/overlays/kind | kubectl --context kind-{{cluster}} apply -f -
    kubectl --context kind-{{cluster}} -n net-attach-def-system rollout status deployment/k8s-net-attach-def-controller --timeout=120s
    kubectl config use-context kind-{{cluster}}
    cargo build --bin k8s-net-attach-def-controller
    export E2E_CONTROLLER=deployed
    # alone: it stops the operator, and its exit code 0 means nothing is left in the whole cluster
    cargo test -p nadc-e2e --test plan -- --ignored
    cargo test -p nadc-e2e --test e2e --test protection -- --ignored --test-threads=4
    cargo test -p nadc-e2e --test handover -- --ignored
    # alone: it takes the Events permission from the operator's ClusterRole for 10 s
    cargo test -p nadc-e2e --test events -- --ignored
    # last: it stops the operator and strips finalizers cluster-wide
    cargo test -p nadc-e2e --test uninstall -- --ignored

# End-to-end against the current KUBECONFIG, the operator started locally by the harness.
# The e2e tests are #[ignore]d (they need a cluster), hence --ignored.
# The local operator runs as the shipped ServiceAccount (E2E_OPERATOR_AS: its client impersonates it),
# with the shipped RBAC applied first, so that the suite fails on any permission the code lacks.
e2e-local:
    cargo build --bin k8s-net-attach-def-controller
    kubectl apply -f manifests/namespace.yaml -f manifests/serviceaccount.yaml -f manifests/rbac.yaml -f manifests/leader-election-rbac.yaml
    # alone: the operator must be stopped when it starts, and its exit code 0 means nothing is left in the whole cluster
    E2E_CONTROLLER=local E2E_OPERATOR_AS={{operator_sa}} cargo test -p nadc-e2e --test plan -- --ignored
    E2E_CONTROLLER=local E2E_OPERATOR_AS={{operator_sa}} cargo test -p nadc-e2e --test e2e --test protection --test network_checks -- --ignored --test-threads=4
    E2E_OPERATOR_AS={{operator_sa}} cargo test -p nadc-e2e --test handover -- --ignored
    # alone: they install the pod admission policy, whose binding covers every pod
    E2E_CONTROLLER=local E2E_OPERATOR_AS={{operator_sa}} cargo test -p nadc-e2e --test admission -- --ignored
    # alone: it takes the Events permission from the operator's ClusterRole for 10 s
    E2E_CONTROLLER=local E2E_OPERATOR_AS={{operator_sa}} cargo test -p nadc-e2e --test events -- --ignored
    # SIGKILLs the operator every 30-45 s; E2E_CHAOS_SECONDS (default 150), E2E_CHAOS_SEED
    E2E_CONTROLLER=local E2E_OPERATOR_AS={{operator_sa}} cargo test -p nadc-e2e --test chaos -- --ignored --nocapture
    E2E_CONTROLLER=local E2E_OPERATOR_AS={{operator_sa}} cargo test -p nadc-e2e --test uninstall -- --ignored

# Scale benchmark against the current KUBECONFIG (see README: Testing).
bench-scale *ARGS:
    cargo build --release --bin k8s-net-attach-def-controller
    cargo run --release -p nadc-e2e --bin bench-scale -- {{ARGS}}

# Soak against the current KUBECONFIG: waves of pods, NADs and Services created and deleted; RSS and every per-object map after each (see docs/benchmarks.md, Soak).
bench-soak *ARGS:
    cargo build --release --bin k8s-net-attach-def-controller
    cargo run --release -p nadc-e2e --bin bench-soak -- {{ARGS}}

# Wall time and peak RSS of `plan --live` (release build) over N pods, against the current KUBECONFIG (no operator; see docs/benchmarks.md).
bench-plan-live *ARGS:
    cargo build --release --bin k8s-net-attach-def-controller
    cargo run -p nadc-e2e --bin bench-plan-live -- --binary "${CARGO_TARGET_DIR:-target}/release/k8s-net-attach-def-controller" {{ARGS}}

# Pod CREATE latency with and without the pod admission policy, against the current KUBECONFIG (no operator; see docs/benchmarks.md).
bench-admission *ARGS:
    cargo run --release -p nadc-e2e --bin bench-admission -- {{ARGS}}
