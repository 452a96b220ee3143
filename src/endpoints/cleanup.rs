//! Applies the cleanup `decide_cleanup` chose for an opted-in Service
//! (Kubernetes' orphaned slices, the mirroring of its legacy Endpoints), and
//! deletes the slices a deleted Service leaves behind.

use super::controller::{Context, service_reference};
use super::decide::{cached_slices, live_service_allows_cleanup};
use super::leftovers::{self, Cleanup, SliceRef};
use crate::model::ObjectKey;
use crate::{Error, Result, names};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use tracing::{Instrument, debug, info, warn};

/// Deletes Kubernetes' orphaned slices (uid precondition: a slice of the
/// same name made since is not ours to judge) and stops the mirroring of the
/// legacy Endpoints object; a Normal Event reports each. The slices are
/// chosen from the cached Service; before the first delete, one read of the
/// live Service confirms the choice (`live_service_allows_cleanup`).
pub(super) async fn apply_cleanup(
    ctx: &Context,
    svc: &Service,
    key: &ObjectKey,
    network: &str,
    cleanup: &Cleanup,
) -> Result<()> {
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.shared.client.clone(), &key.namespace);
    let mut deleted: Vec<SliceRef> = Vec::new();
    let confirmed = cleanup.delete.is_empty() || live_service_confirms(ctx, svc, key).await?;
    let to_delete = if confirmed { &cleanup.delete[..] } else { &[] };
    for slice in to_delete {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: slice.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match slices
            .delete(&slice.name, &dp)
            .instrument(tracing::debug_span!("delete endpointslice", slice = %slice.name))
            .await
        {
            Ok(_) => {
                ctx.shared.metrics.slice_write("delete");
                deleted.push(slice.clone());
            }
            // Gone already, or replaced by another object of that name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                return Err(Error::kube(
                    "deleting the stale Kubernetes EndpointSlice",
                    format!("{}/{}", key.namespace, slice.name),
                )(e));
            }
        }
    }
    if !deleted.is_empty() {
        let note = leftovers::deleted_message(&deleted, network);
        info!(deleted = deleted.len(), "{note}");
        ctx.shared.publish(
            Event {
                type_: EventType::Normal,
                reason: names::reasons::STALE_ENDPOINT_SLICES_DELETED.into(),
                note: Some(note),
                action: "DeleteEndpointSlices".into(),
                secondary: None,
            },
            &service_reference(svc),
        );
    }

    let mirrored: Vec<Option<String>> = cleanup
        .stop_mirroring
        .iter()
        .map(|s| s.uid.clone())
        .collect();
    if mirrored.is_empty() {
        ctx.mirroring_stopped.lock().unwrap().remove(key);
        return Ok(());
    }
    if ctx.mirroring_stopped.lock().unwrap().get(key) == Some(&mirrored) {
        debug!("waiting for the mirroring controller to delete its slices");
        return Ok(());
    }
    let endpoints: Api<Endpoints> = Api::namespaced(ctx.shared.client.clone(), &key.namespace);
    let patch = serde_json::json!({"metadata": {"labels": {names::LABEL_SKIP_MIRROR: "true"}}});
    let pp = PatchParams {
        field_manager: Some(names::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match endpoints
        .patch(&key.name, &pp, &Patch::Merge(&patch))
        .instrument(tracing::debug_span!("label endpoints skip-mirror"))
        .await
    {
        Ok(_) => {
            let note = leftovers::mirroring_stopped_message(&key.name, &cleanup.stop_mirroring);
            info!("{note}");
            ctx.shared.publish(
                Event {
                    type_: EventType::Normal,
                    reason: names::reasons::ENDPOINTS_MIRRORING_STOPPED.into(),
                    note: Some(note),
                    action: "LabelEndpoints".into(),
                    secondary: None,
                },
                &service_reference(svc),
            );
        }
        // No Endpoints left: the mirroring controller deletes its slices itself.
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            return Err(Error::kube("labelling the Endpoints of", key)(e));
        }
    }
    ctx.mirroring_stopped
        .lock()
        .unwrap()
        .insert(key.clone(), mirrored);
    Ok(())
}

/// Reads the Service as the API server holds it now, and says whether it
/// still allows deleting Kubernetes' slices chosen from the cached one.
async fn live_service_confirms(ctx: &Context, cached: &Service, key: &ObjectKey) -> Result<bool> {
    let services: Api<Service> = Api::namespaced(ctx.shared.client.clone(), &key.namespace);
    let live = services
        .get_opt(&key.name)
        .instrument(tracing::debug_span!("get service"))
        .await
        .map_err(Error::kube(
            "reading, before deleting Kubernetes' slices of it,",
            key,
        ))?;
    let confirmed = live_service_allows_cleanup(cached, live.as_ref());
    if !confirmed {
        info!(
            found = live.is_some(),
            "the Service no longer opts in as cached (spec.selector back, opted out, re-created or gone); Kubernetes' slices of it are left alone"
        );
    }
    Ok(confirmed)
}

/// Deletes the slices a deleted Service leaves behind. The garbage collector
/// would too, through the owner reference; doing it here makes it prompt and
/// independent of the collector. Only slices owned by that very Service (by
/// uid) are deleted, so a new Service of the same name keeps its own.
pub(super) async fn delete_orphans(ctx: &Context, deleted: &Service) {
    let key = ObjectKey::of(deleted);
    let uid = deleted.metadata.uid.as_deref();
    let api: Api<EndpointSlice> = Api::namespaced(ctx.shared.client.clone(), &key.namespace);
    for slice in cached_slices(&ctx.slices, &key) {
        if slice
            .owner_references()
            .iter()
            .all(|o| Some(o.uid.as_str()) != uid)
        {
            continue;
        }
        let name = slice.name_any();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: slice.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => ctx.shared.metrics.slice_write("delete"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                warn!(service = %key, slice = %name, error = %e, "could not delete the slice of a deleted Service; the garbage collector will")
            }
        }
    }
    ctx.forget(&key);
    ctx.report_tracked();
}
