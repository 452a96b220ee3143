//! Every fixed name the operator writes to or reads from the cluster.
//!
//! Kept in one place so that a rename is one edit and the manifests, the e2e
//! suite and the code can never disagree.

/// Finalizer held on every NetworkAttachmentDefinition while any pod uses it.
pub const FINALIZER: &str = "k8s.cni.cncf.io/net-attach-def-protection";

/// Label kept on every NAD that at least one non-terminal pod uses (value
/// `"true"`); the admission policy refuses to delete a NAD that carries it.
pub const IN_USE_LABEL: &str = "k8s.cni.cncf.io/in-use";

/// NAD annotation (value `"true"`) with which an admin deliberately lets a
/// delete of an in-use NAD through admission; the finalizer still holds it.
pub const ALLOW_DELETE_IN_USE_ANNOTATION: &str = "k8s.cni.cncf.io/allow-delete-in-use";

/// Name of the ValidatingAdmissionPolicy and its binding.
pub const ADMISSION_POLICY: &str = "net-attach-def-in-use-protection";

/// The ValidatingAdmissionPolicy (and binding) refusing the delete of a NAD
/// that the operator has not yet given its finalizer
/// (`manifests/admission-policy.yaml`).
pub const PROTECTION_PENDING_POLICY: &str = "net-attach-def-protection-pending";

/// Name of the ValidatingAdmissionPolicy (and its binding) that refuses a
/// pod naming a NAD no new pod may use: one being deleted, or one released
/// early because its namespace is being deleted.
pub const POD_ADMISSION_POLICY: &str = "net-attach-def-pod-admission";

/// ConfigMap, in the operator's namespace, that the pod admission policy
/// (and the protection-pending policy, for NADs released early) reads as
/// its param. Each NAD no new pod may use has the key
/// `<namespace>.<name>` (unambiguous: a namespace has no dot), whose value
/// says why, as it reads in the refusal ("being deleted"). The operator
/// writes a NAD's key *before* it releases the NAD's finalizer.
pub const ADMISSION_STATE_CONFIGMAP: &str = "nad-admission-state";

/// Key of [`ADMISSION_STATE_CONFIGMAP`] holding the Multus namespace, where a
/// namespace-less `v1.multus-cni.io/default-network` lives (no dot, so it
/// never collides with a NAD's key).
pub const ADMISSION_STATE_MULTUS_NAMESPACE_KEY: &str = "multus-namespace";

/// Values of a NAD's key in [`ADMISSION_STATE_CONFIGMAP`].
pub const REFUSAL_BEING_DELETED: &str = "being deleted";
/// A NAD whose namespace is being deleted: released as soon as no pod uses
/// it, so no new pod may start using it.
pub const REFUSAL_NAMESPACE_DELETED: &str = "in a namespace that is being deleted";

/// Value of `endpointslice.kubernetes.io/managed-by` on the EndpointSlices we own.
pub const MANAGED_BY: &str = "net-attach-def-controller.k8s.cni.cncf.io";

/// `reportingController` of every Event we emit.
pub const REPORTER: &str = "k8s-net-attach-def-controller";

/// Field manager for every write we send.
pub const FIELD_MANAGER: &str = "k8s-net-attach-def-controller";

/// Pod and Service annotation naming secondary networks (Multus' format).
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// Service annotation holding the pod selector (in `kubectl -l` equality form).
pub const SELECTOR_ANNOTATION: &str = "k8s.v1.cni.cncf.io/selector";

/// Pod annotation replacing the cluster default network (Multus).
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";

/// Pod annotation in which Multus reports the attached networks and their addresses.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// The pre-2020 spelling of [`NETWORK_STATUS_ANNOTATION`], still written by old Multus.
pub const LEGACY_NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks-status";

/// Well-known EndpointSlice labels and annotations (discovery.k8s.io).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const ANNOTATION_LAST_CHANGE: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// `managed-by` of the slices Kubernetes' EndpointSlice controller writes for
/// a Service with `spec.selector`. It never updates or deletes them once the
/// selector is gone (kubernetes/kubernetes#118376).
pub const KUBERNETES_SLICE_MANAGER: &str = "endpointslice-controller.k8s.io";

/// `managed-by` of the slices Kubernetes' EndpointSliceMirroring controller
/// copies from a selectorless Service's legacy Endpoints object.
pub const MIRRORING_SLICE_MANAGER: &str = "endpointslicemirroring-controller.k8s.io";

/// Endpoints label that tells the mirroring controller not to mirror it (and
/// to delete the slices it mirrored from it).
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// Event reasons, as they appear in `kubectl describe`.
pub mod reasons {
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    pub const PROTECTION_RELEASED: &str = "ProtectionReleased";
    pub const INVALID_NETWORK_ANNOTATION: &str = "InvalidNetworkAnnotation";
    pub const INVALID_SELECTOR_ANNOTATION: &str = "InvalidSelectorAnnotation";
    pub const SELECTOR_CONFLICT: &str = "SelectorConflict";
    pub const UNSUPPORTED_SERVICE: &str = "UnsupportedService";
    pub const SECONDARY_ENDPOINTS_UPDATED: &str = "SecondaryEndpointsUpdated";
    pub const STALE_ENDPOINT_SLICES_DELETED: &str = "StaleEndpointSlicesDeleted";
    pub const ENDPOINTS_MIRRORING_STOPPED: &str = "EndpointsMirroringStopped";
    pub const FOREIGN_ENDPOINT_SLICES: &str = "ForeignEndpointSlices";
    /// A NAD whose `spec.config` Multus cannot use.
    pub const INVALID_NETWORK_CONFIG: &str = "InvalidNetworkConfig";
    /// A pod that names a NAD which does not exist.
    pub const NETWORK_ATTACHMENT_DEFINITION_NOT_FOUND: &str = "NetworkAttachmentDefinitionNotFound";
}

/// Default Multus namespace: where a namespace-less default-network lives.
pub const DEFAULT_MULTUS_NAMESPACE: &str = "kube-system";

/// Controller names, used in metrics labels and span names.
pub const PROTECTION_CONTROLLER: &str = "nad-protection";
pub const ENDPOINTS_CONTROLLER: &str = "secondary-endpoints";
/// The pod watch that feeds both controllers (`feed`), in metrics labels.
pub const POD_FEED: &str = "pod-feed";
