//! Taking our finalizer, and only ours, off one NAD: the release's write and
//! `release-finalizers`' alike. The patch pins the NAD's uid and the entry's
//! index (`decide::remove_finalizer_patch`); a conflict means the NAD
//! changed under us, so it is read again and the patch recomputed, with
//! backoff, a few times.

use super::decide::remove_finalizer_patch;
use crate::model::{NetworkAttachmentDefinition, ObjectKey};
use crate::{Error, Result};
use backon::{ExponentialBuilder, Retryable};
use kube::api::{Api, Patch, PatchParams};
use std::time::Duration;

/// How a conflicting NAD write is retried.
pub fn conflict_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(4)
        .with_jitter()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Removed; the NAD's resourceVersion after our write.
    Removed(Option<String>),
    /// Our finalizer is not on it, or the NAD is gone or was re-created.
    NotHeld,
    /// After a conflict, `may_release` said no: nothing was written.
    Withheld,
}

/// Removes our finalizer from the NAD `key` with this `uid`, starting from
/// the `finalizers` we last saw. `may_release` is asked again before every
/// retry, so a retry never releases what the first attempt's checks would
/// no longer allow.
pub async fn remove_finalizer(
    api: &Api<NetworkAttachmentDefinition>,
    key: &ObjectKey,
    uid: Option<&str>,
    finalizers: &[String],
    may_release: impl Fn() -> bool,
) -> Result<Removal> {
    let remove = |finalizers: Vec<String>| async move {
        let Some(patch) = remove_finalizer_patch(uid, &finalizers) else {
            return Ok(Removal::NotHeld);
        };
        match api
            .patch_metadata(
                &key.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
        {
            Ok(written) => Ok(Removal::Removed(written.metadata.resource_version)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Removal::NotHeld),
            Err(e) => Err(Error::kube("removing the finalizer from", key)(e)),
        }
    };
    match remove(finalizers.to_vec()).await {
        Err(e) if e.is_conflict() => {
            let again = || async {
                if !may_release() {
                    return Ok(Removal::Withheld);
                }
                match api
                    .get_metadata_opt(&key.name)
                    .await
                    .map_err(Error::kube("reading", key))?
                {
                    Some(m) if m.metadata.uid.as_deref() == uid => {
                        remove(m.metadata.finalizers.unwrap_or_default()).await
                    }
                    _ => Ok(Removal::NotHeld),
                }
            };
            again
                .retry(conflict_retries())
                .when(Error::is_conflict)
                .await
        }
        other => other,
    }
}
