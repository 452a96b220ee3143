//! Our admission policies as `plan --live` finds them: which
//! admissionregistration version serves ValidatingAdmissionPolicy, and for
//! each of ours whether it is installed and bound to deny. Pure: the live
//! reader fetches the objects, this judges them as the operator does.

use crate::names;
use crate::protection::policy::binding_enforces;
use serde_json::Value;

/// Our policies, each with whether its binding must read the operator's
/// ConfigMap (`paramRef`).
pub const OUR_POLICIES: [(&str, bool); 3] = [
    (names::ADMISSION_POLICY, false),
    (names::PROTECTION_PENDING_POLICY, true),
    (names::POD_ADMISSION_POLICY, true),
];

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionPolicies {
    /// `v1` or `v1beta1`: the newest version serving
    /// ValidatingAdmissionPolicy; None when the API server serves neither.
    pub version: Option<String>,
    /// One entry per policy of `OUR_POLICIES`, in that order (empty when
    /// no version is served).
    pub found: Vec<PolicyFound>,
    /// The namespace whose ConfigMap the bindings must read.
    pub operator_namespace: String,
}

/// One of our policies and its binding (same name), as the API server
/// returned them.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFound {
    pub name: String,
    pub installed: bool,
    pub binding: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    InForce,
    NotInstalled,
    /// Partly there, or bound so that it refuses nothing: why.
    NotInForce(String),
}

impl AdmissionPolicies {
    /// Each policy with its verdict.
    pub fn verdicts(&self) -> Vec<(&str, Verdict)> {
        self.found
            .iter()
            .map(|f| (f.name.as_str(), self.verdict(f)))
            .collect()
    }

    fn verdict(&self, found: &PolicyFound) -> Verdict {
        let reads_param = OUR_POLICIES
            .iter()
            .any(|(name, param)| *name == found.name && *param);
        match (found.installed, &found.binding) {
            (false, None) => Verdict::NotInstalled,
            (true, None) => Verdict::NotInForce(format!("policy {} has no binding", found.name)),
            (false, Some(_)) => Verdict::NotInForce(format!(
                "binding {} is there, policy {} is not",
                found.name, found.name
            )),
            (true, Some(binding)) => match binding_enforces(
                binding,
                &found.name,
                reads_param.then_some(self.operator_namespace.as_str()),
            ) {
                Ok(()) => Verdict::InForce,
                Err(why) => Verdict::NotInForce(why),
            },
        }
    }

    /// Whether the pod admission policy is in force, as the operator judges
    /// it (`protection::admission::check_policy`): without it, no NAD is
    /// released before its own deletion.
    pub fn pod_policy_in_force(&self) -> bool {
        self.found
            .iter()
            .find(|f| f.name == names::POD_ADMISSION_POLICY)
            .is_some_and(|f| self.verdict(f) == Verdict::InForce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(policy: &str, actions: &[&str], param_ns: Option<&str>) -> Value {
        let mut spec = json!({"policyName": policy, "validationActions": actions});
        if let Some(ns) = param_ns {
            spec["paramRef"] = json!({"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": ns});
        }
        json!({"spec": spec})
    }

    fn policies(found: Vec<PolicyFound>) -> AdmissionPolicies {
        AdmissionPolicies {
            version: Some("v1".into()),
            found,
            operator_namespace: "nadc".into(),
        }
    }

    fn found(name: &str, installed: bool, binding: Option<Value>) -> PolicyFound {
        PolicyFound {
            name: name.into(),
            installed,
            binding,
        }
    }

    #[test]
    fn the_shipped_bindings_are_in_force() {
        let p = policies(vec![
            found(
                names::ADMISSION_POLICY,
                true,
                Some(binding(names::ADMISSION_POLICY, &["Deny"], None)),
            ),
            found(
                names::PROTECTION_PENDING_POLICY,
                true,
                Some(binding(
                    names::PROTECTION_PENDING_POLICY,
                    &["Deny"],
                    Some("nadc"),
                )),
            ),
            found(
                names::POD_ADMISSION_POLICY,
                true,
                Some(binding(
                    names::POD_ADMISSION_POLICY,
                    &["Deny"],
                    Some("nadc"),
                )),
            ),
        ]);
        assert!(p.verdicts().iter().all(|(_, v)| *v == Verdict::InForce));
        assert!(p.pod_policy_in_force());
    }

    #[test]
    fn a_policy_without_binding_or_a_binding_without_policy_is_not_in_force() {
        let p = policies(vec![
            found(names::ADMISSION_POLICY, true, None),
            found(
                names::POD_ADMISSION_POLICY,
                false,
                Some(binding(
                    names::POD_ADMISSION_POLICY,
                    &["Deny"],
                    Some("nadc"),
                )),
            ),
        ]);
        let v = p.verdicts();
        assert_eq!(
            v[0].1,
            Verdict::NotInForce(format!("policy {} has no binding", names::ADMISSION_POLICY))
        );
        assert!(
            matches!(&v[1].1, Verdict::NotInForce(why) if why.contains("policy net-attach-def-pod-admission is not"))
        );
        assert!(!p.pod_policy_in_force());
    }

    #[test]
    fn a_disarmed_binding_or_one_reading_another_namespace_is_not_in_force() {
        let p = policies(vec![
            found(
                names::POD_ADMISSION_POLICY,
                true,
                Some(binding(
                    names::POD_ADMISSION_POLICY,
                    &["Warn"],
                    Some("nadc"),
                )),
            ),
            found(
                names::PROTECTION_PENDING_POLICY,
                true,
                Some(binding(
                    names::PROTECTION_PENDING_POLICY,
                    &["Deny"],
                    Some("elsewhere"),
                )),
            ),
        ]);
        let v = p.verdicts();
        assert!(matches!(&v[0].1, Verdict::NotInForce(why) if why.contains("no Deny")));
        assert!(
            matches!(&v[1].1, Verdict::NotInForce(why) if why.contains("elsewhere/nad-admission-state"))
        );
        assert!(!p.pod_policy_in_force());
    }

    #[test]
    fn nothing_installed_is_not_installed_and_not_in_force() {
        let p = policies(
            OUR_POLICIES
                .iter()
                .map(|(name, _)| found(name, false, None))
                .collect(),
        );
        assert!(
            p.verdicts()
                .iter()
                .all(|(_, v)| *v == Verdict::NotInstalled)
        );
        assert!(!p.pod_policy_in_force());
    }
}
