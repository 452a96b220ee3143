//! The API permissions the code uses, one entry per call site family. The
//! manifests' ClusterRole and Role must grant exactly these (a test checks).

pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub used_by: &'static str,
}

/// Cluster-wide permissions (ClusterRole).
pub const CLUSTER: &[Permission] = &[
    Permission {
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
        used_by: "the pod feed (watch) and the live LIST before releasing a NAD",
    },
    Permission {
        group: "",
        resource: "namespaces",
        verbs: &["list", "watch"],
        used_by: "the protection controller's metadata watch: an unused NAD in a namespace being deleted is released before the namespace controller reaches it",
    },
    Permission {
        group: "",
        resource: "services",
        verbs: &["get", "list", "watch"],
        used_by: "the EndpointSlice controller's Service watch, and the live read (get) that confirms a Service still opts in before Kubernetes' slices of it are deleted",
    },
    Permission {
        group: "",
        resource: "services/finalizers",
        verbs: &["update"],
        used_by: "our slices' owner reference sets blockOwnerDeletion, which OwnerReferencesPermissionEnforcement allows only with update on the owner's finalizers",
    },
    Permission {
        group: "",
        resource: "endpoints",
        verbs: &["patch"],
        used_by: "labelling a migrated Service's leftover Endpoints skip-mirror, so Kubernetes stops mirroring it into slices",
    },
    Permission {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
        used_by: "the EndpointSlice controller (watch, create, update, delete; patch for kubectl-style repairs; metadata watch and delete of Kubernetes' orphaned slices)",
    },
    Permission {
        group: "k8s.cni.cncf.io",
        resource: "network-attachment-definitions",
        verbs: &["get", "list", "watch", "patch", "update"],
        used_by: "the protection controller (metadata watch, finalizer patches) and release-finalizers",
    },
    Permission {
        group: "admissionregistration.k8s.io",
        resource: "validatingadmissionpolicies",
        verbs: &["get"],
        used_by: "looking whether the pod admission policy is installed (no early release without it)",
    },
    Permission {
        group: "admissionregistration.k8s.io",
        resource: "validatingadmissionpolicybindings",
        verbs: &["get"],
        used_by: "looking whether the pod admission policy is bound to deny, reading our ConfigMap",
    },
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        used_by: "kube-runtime's Recorder (create, then patch into a series)",
    },
];

/// Permissions in the operator's own namespace (one Role).
pub const NAMESPACED: &[Permission] = &[
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "list", "watch", "create", "patch"],
        used_by: "kube-lease-manager (get, create once, renew by server-side apply); a standby watches the Lease to take over as soon as it is released",
    },
    Permission {
        group: "",
        resource: "configmaps",
        verbs: &["get", "create", "patch"],
        used_by: "the ConfigMap the pod admission policy reads: NADs no new pod may use, written before a release",
    },
];
