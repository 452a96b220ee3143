//! What becomes of an Event the API server refused: pure decisions over how
//! it refused and, for a note published only when it changes, whether that
//! note still says what the object's Events should say.

use super::DropReason;

/// How the API server refused an Event write, as far as another attempt
/// goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Busy, unavailable or unreachable (5xx, 429, 409, 408, a broken
    /// connection): the same write may pass in a moment.
    Passing,
    /// Not allowed (403, 401): the writer's permission or credentials may
    /// come back (a ClusterRole restored, a token renewed).
    Forbidden,
    /// Its namespace is being deleted (403 with the `NamespaceTerminating`
    /// cause): it takes no new objects, and would take the Event with it.
    /// Expected whenever a namespace goes, so told apart from `ForGood`.
    NamespaceTerminating,
    /// Never to be accepted as sent: invalid (400, 422), its namespace gone
    /// (404), or any other refusal.
    ForGood,
}

/// The cause the API server gives when a namespace being deleted refuses
/// new objects (`NamespaceTerminatingCause` in Kubernetes' core/v1).
pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

/// How `error` refused the write.
pub fn refusal_of(error: &kube::Error) -> Refusal {
    match error {
        kube::Error::Api(status) => {
            let causes = status.details.as_ref().map(|d| &d.causes);
            let terminating = causes
                .is_some_and(|causes| causes.iter().any(|c| c.reason == NAMESPACE_TERMINATING));
            refusal_by_code(status.code, terminating)
        }
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::Auth(_) => Refusal::Passing,
        _ => Refusal::ForGood,
    }
}

/// How an API server's answer with HTTP status `code` refused the write;
/// `namespace_terminating`: its causes include `NAMESPACE_TERMINATING`.
pub fn refusal_by_code(code: u16, namespace_terminating: bool) -> Refusal {
    match code {
        500.. | 408 | 409 | 429 => Refusal::Passing,
        _ if namespace_terminating => Refusal::NamespaceTerminating,
        401 | 403 => Refusal::Forbidden,
        _ => Refusal::ForGood,
    }
}

/// Whether a one-off Event (not a change-only note) is tried again at once,
/// up to `WRITE_RETRIES` times: only when the API server was busy or
/// unreachable, not when it refused the Event itself.
pub fn retry_one_off(refusal: Refusal) -> bool {
    refusal == Refusal::Passing
}

/// Where a change-only note stands in its `NoteLedger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The last note published for its object and slot: what its Events
    /// should say.
    Current,
    /// A newer note for the same object and slot was published since.
    Superseded,
    /// Its object's notes were forgotten since (the object is gone, or the
    /// state the note described was cleared).
    Obsolete,
}

impl Standing {
    /// Why a note with this standing is not sent (None: it is).
    pub fn drop_reason(self) -> Option<DropReason> {
        match self {
            Standing::Current => None,
            Standing::Superseded => Some(DropReason::Superseded),
            Standing::Obsolete => Some(DropReason::Obsolete),
        }
    }
}

/// What becomes of a refused change-only note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It waits, and is tried again after its backoff.
    Retry,
    /// It is dropped, and counted under this reason.
    Drop(DropReason),
}

/// A refused change-only note is tried again, with backoff and without
/// limit, for as long as it is its object's current note and the refusal
/// may pass (a drain's deadline ends that too, in the outbox); a newer
/// note, or the object's notes being forgotten, drops it.
pub fn after_refusal(refusal: Refusal, standing: Standing) -> Verdict {
    if let Some(reason) = standing.drop_reason() {
        return Verdict::Drop(reason);
    }
    match refusal {
        Refusal::ForGood => Verdict::Drop(DropReason::WriteFailed),
        Refusal::NamespaceTerminating => Verdict::Drop(DropReason::NamespaceTerminating),
        Refusal::Passing | Refusal::Forbidden => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::status;
    use proptest::prelude::*;

    fn api(body: serde_json::Value) -> kube::Error {
        kube::Error::Api(Box::new(serde_json::from_value(body).unwrap()))
    }

    #[test]
    fn refusals_are_told_apart_by_code_and_cause() {
        for code in [500, 503, 504, 429, 409, 408] {
            assert_eq!(
                refusal_of(&api(status(code, "Reason"))),
                Refusal::Passing,
                "{code}"
            );
        }
        for code in [401, 403] {
            assert_eq!(
                refusal_of(&api(status(code, "Forbidden"))),
                Refusal::Forbidden,
                "{code}"
            );
        }
        for code in [400, 404, 410, 413, 422] {
            assert_eq!(
                refusal_of(&api(status(code, "Reason"))),
                Refusal::ForGood,
                "{code}"
            );
        }
        assert_eq!(
            refusal_of(&kube::Error::Service("reset".into())),
            Refusal::Passing
        );
    }

    /// The answer Kubernetes' NamespaceLifecycle admission gives to a create
    /// in a namespace being deleted: a 403 that no permission changes.
    #[test]
    fn a_namespace_being_deleted_is_a_refusal_of_its_own() {
        let mut body = status(403, "Forbidden");
        body["details"] = serde_json::json!({"causes": [{
            "reason": "NamespaceTerminating",
            "message": "namespace demo is being terminated",
            "field": "metadata.namespace",
        }]});
        assert_eq!(refusal_of(&api(body)), Refusal::NamespaceTerminating);
        assert_eq!(
            after_refusal(Refusal::NamespaceTerminating, Standing::Current),
            Verdict::Drop(DropReason::NamespaceTerminating)
        );
    }

    #[test]
    fn one_off_events_are_retried_only_when_the_refusal_passes() {
        assert!(retry_one_off(Refusal::Passing));
        assert!(!retry_one_off(Refusal::Forbidden));
        assert!(!retry_one_off(Refusal::ForGood));
        assert!(!retry_one_off(Refusal::NamespaceTerminating));
    }

    fn refusals() -> impl Strategy<Value = Refusal> {
        prop_oneof![
            Just(Refusal::Passing),
            Just(Refusal::Forbidden),
            Just(Refusal::NamespaceTerminating),
            Just(Refusal::ForGood)
        ]
    }

    fn standings() -> impl Strategy<Value = Standing> {
        prop_oneof![
            Just(Standing::Current),
            Just(Standing::Superseded),
            Just(Standing::Obsolete)
        ]
    }

    proptest! {
        /// Over every refusal and standing: a note is tried again exactly
        /// when it is current and the refusal may pass; otherwise it is
        /// dropped under the reason that names why, the standing first.
        #[test]
        fn a_note_is_retried_exactly_while_current_and_the_refusal_may_pass(
            refusal in refusals(),
            standing in standings(),
            code in 100u16..600,
        ) {
            let verdict = after_refusal(refusal, standing);
            let retriable = matches!(refusal, Refusal::Passing | Refusal::Forbidden);
            let expected = match (standing, retriable) {
                (Standing::Superseded, _) => Verdict::Drop(DropReason::Superseded),
                (Standing::Obsolete, _) => Verdict::Drop(DropReason::Obsolete),
                (Standing::Current, false) if refusal == Refusal::NamespaceTerminating => {
                    Verdict::Drop(DropReason::NamespaceTerminating)
                }
                (Standing::Current, false) => Verdict::Drop(DropReason::WriteFailed),
                (Standing::Current, true) => Verdict::Retry,
            };
            prop_assert_eq!(verdict, expected);
            // A code is retried for a note iff it is 5xx, 408, 409, 429, 401
            // or 403 (not a namespace being deleted).
            let by_code = refusal_by_code(code, false);
            let listed = code >= 500 || [401, 403, 408, 409, 429].contains(&code);
            prop_assert_eq!(by_code != Refusal::ForGood, listed, "{}", code);
            // With the cause, every code that does not pass says so.
            let terminating = refusal_by_code(code, true);
            prop_assert_eq!(
                terminating,
                if by_code == Refusal::Passing { Refusal::Passing } else { Refusal::NamespaceTerminating },
                "{}", code
            );
        }
    }
}
