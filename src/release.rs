//! `release-finalizers`: removes our finalizer, and only ours, and our
//! in-use label from every NAD, so that uninstalling the operator never
//! leaves NADs stuck (the label would keep the admission policy refusing
//! their deletion, were it left installed).

use crate::model::{NetworkAttachmentDefinition, ObjectKey};
use crate::protection::decide::{NadState, remove_marker_patch};
use crate::protection::finalizer::{Removal, remove_finalizer};
use crate::{Error, Result};
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::io::Write;

/// Outcome per NAD, for the printed report.
#[derive(Debug, PartialEq, Eq)]
pub enum Released {
    Removed(ObjectKey),
    NotHeld(ObjectKey),
}

pub async fn release_all(client: kube::Client, out: &mut impl Write) -> Result<Vec<Released>> {
    let api: Api<NetworkAttachmentDefinition> = Api::all(client.clone());
    let mut params = ListParams::default().limit(500);
    let mut done = Vec::new();
    loop {
        let page = api
            .list_metadata(&params)
            .await
            .map_err(Error::kube("listing", "NetworkAttachmentDefinitions"))?;
        for nad in page.items {
            let key = ObjectKey::of(&nad);
            let ns_api: Api<NetworkAttachmentDefinition> =
                Api::namespaced(client.clone(), &key.namespace);
            let finalizers = nad.metadata.finalizers.clone().unwrap_or_default();
            let uid = nad.metadata.uid.as_deref();
            let outcome = match remove_finalizer(&ns_api, &key, uid, &finalizers, || true).await? {
                Removal::Removed(_) => Released::Removed(key.clone()),
                Removal::NotHeld | Removal::Withheld => Released::NotHeld(key.clone()),
            };
            // The label goes too; a 404 (released and gone) or 422 (already
            // off, or another NAD under that name) leaves nothing to do.
            if let Some(patch) = remove_marker_patch(&NadState::from_meta(&nad.metadata)) {
                match json_patch(&ns_api, &key.name, patch).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {}
                    Err(e) => return Err(Error::kube("removing the in-use label from", &key)(e)),
                }
            }
            let line = match &outcome {
                Released::Removed(k) => format!("released   {k}"),
                Released::NotHeld(k) => format!("unchanged  {k} (finalizer not held)"),
            };
            let _ = writeln!(out, "{line}");
            done.push(outcome);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    let removed = done
        .iter()
        .filter(|r| matches!(r, Released::Removed(_)))
        .count();
    let _ = writeln!(
        out,
        "{removed} of {} NetworkAttachmentDefinitions released",
        done.len()
    );
    Ok(done)
}

/// One JSON patch of a NAD's metadata.
async fn json_patch(
    api: &Api<NetworkAttachmentDefinition>,
    name: &str,
    patch: json_patch::Patch,
) -> kube::Result<()> {
    api.patch_metadata(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
}
