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
    /// The finalizer or the label could not be removed (the error says
    /// why); the other NADs are still released, and the command fails.
    Failed(ObjectKey, String),
}

impl Released {
    fn line(&self) -> String {
        match self {
            Released::Removed(k) => format!("released   {k}"),
            Released::NotHeld(k) => format!("unchanged  {k} (finalizer not held)"),
            Released::Failed(k, why) => {
                format!("FAILED     {k}: {why}; run release-finalizers again")
            }
        }
    }
}

/// Releases one NAD: our finalizer, then our label.
async fn release_one(
    client: &kube::Client,
    nad: &kube::core::PartialObjectMeta<NetworkAttachmentDefinition>,
) -> Result<Released> {
    let key = ObjectKey::of(nad);
    let ns_api: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &key.namespace);
    let finalizers = nad.metadata.finalizers.clone().unwrap_or_default();
    let uid = nad.metadata.uid.as_deref();
    // Nothing here withholds a release (`|| true`): Withheld cannot come back.
    let outcome = match remove_finalizer(&ns_api, &key, uid, &finalizers, || true).await? {
        Removal::Removed(_) => Released::Removed(key.clone()),
        Removal::NotHeld | Removal::Withheld => Released::NotHeld(key.clone()),
    };
    // The label goes too; a 404 (released and gone) or 422 (already off,
    // or another NAD under that name) leaves nothing to do.
    if let Some(patch) = remove_marker_patch(&NadState::from_meta(&nad.metadata)) {
        match json_patch(&ns_api, &key.name, patch).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {}
            Err(e) => return Err(Error::kube("removing the in-use label from", &key)(e)),
        }
    }
    Ok(outcome)
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
            // One NAD that cannot be released (conflicts that outlast the
            // retries, a refused patch) must not leave the rest stuck.
            let outcome = release_one(&client, &nad)
                .await
                .unwrap_or_else(|e| Released::Failed(ObjectKey::of(&nad), e.to_string()));
            let _ = writeln!(out, "{}", outcome.line());
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
    let failed = done
        .iter()
        .filter(|r| matches!(r, Released::Failed(..)))
        .count();
    let _ = writeln!(
        out,
        "{removed} of {} NetworkAttachmentDefinitions released{}",
        done.len(),
        if failed > 0 {
            format!(", {failed} FAILED")
        } else {
            String::new()
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{mock_client, status};
    use crate::names;
    use http::Method;
    use serde_json::{Value, json};

    const LIST: &str = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";

    fn nad(name: &str, finalizers: Value) -> Value {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                            "resourceVersion": "7", "finalizers": finalizers}})
    }

    fn path(name: &str) -> String {
        format!("/apis/k8s.cni.cncf.io/v1/namespaces/ns/network-attachment-definitions/{name}")
    }

    #[tokio::test(start_paused = true)]
    async fn a_nad_that_keeps_conflicting_is_reported_failed_and_the_others_are_still_released() {
        let (client, mut server) = mock_client();
        let run = tokio::spawn(async move {
            let mut out = Vec::new();
            let done = release_all(client, &mut out).await;
            (done, String::from_utf8(out).unwrap())
        });
        server.expect(Method::GET, LIST).await.respond(
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                   "metadata": {}, "items": [nad("busy", json!([names::FINALIZER])),
                                             nad("free", json!([names::FINALIZER])),
                                             nad("other", json!(["example.com/x"]))]}),
        );
        // busy: every patch conflicts, every re-read still holds ours: the
        // first attempt, then one from a fresh read and 4 retries of it.
        server
            .expect(Method::PATCH, &path("busy"))
            .await
            .respond(409, status(409, "Conflict"));
        for _ in 0..5 {
            server
                .expect_within(
                    std::time::Duration::from_secs(5),
                    Method::GET,
                    &path("busy"),
                )
                .await
                .respond(200, nad("busy", json!([names::FINALIZER])));
            server
                .expect(Method::PATCH, &path("busy"))
                .await
                .respond(409, status(409, "Conflict"));
        }
        server
            .expect(Method::PATCH, &path("free"))
            .await
            .respond(200, nad("free", json!([])));
        let (done, out) = run.await.unwrap();
        let done = done.unwrap();
        let key = |n: &str| ObjectKey::new("ns", n);
        assert!(
            matches!(&done[0], Released::Failed(k, _) if *k == key("busy")),
            "{done:?}"
        );
        assert_eq!(done[1], Released::Removed(key("free")));
        assert_eq!(done[2], Released::NotHeld(key("other")));
        assert!(out.contains("FAILED     ns/busy: "), "{out}");
        assert!(!out.contains("unchanged  ns/busy"), "{out}");
        assert!(out.contains("released   ns/free"), "{out}");
        assert!(
            out.contains("unchanged  ns/other (finalizer not held)"),
            "{out}"
        );
        assert!(
            out.ends_with("1 of 3 NetworkAttachmentDefinitions released, 1 FAILED\n"),
            "{out}"
        );
    }
}
