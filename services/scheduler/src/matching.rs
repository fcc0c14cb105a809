//! Whether a worker can run a step: OpenJD host requirements against the
//! capabilities the worker registered.
//!
//! Amounts use OpenJD's names (`amount.worker.vcpu`, `amount.worker.memory`
//! and `amount.worker.gpu.memory` in MiB, `amount.worker.gpu`); attributes
//! are `attr.worker.os.family` or `attr.<name>`, matched against the worker's
//! `--attribute name=value` (a value may list several, comma-separated).

use std::collections::HashMap;

use kiln_jobmodel::HostRequirements;
use kiln_proto::v1::WorkerCapabilities;

const MIB: f64 = 1024.0 * 1024.0;

/// Commands that name a renderer or one of the worker's own commands: only
/// workers that registered that name take them.
const NAMED_COMMANDS: [&str; 6] = [
    "blender",
    "ffmpeg",
    "natron",
    "kiln-encode",
    "kiln-check",
    "kiln-blender-variant",
];

/// Whether a worker runs a step's command: one it registered as a
/// renderer, or, on a worker that runs any command (because it sandboxes
/// every task), any program that is not a renderer it lacks (bash,
/// python3, a studio's own tool).
pub fn runs_command(worker: &WorkerCapabilities, command: &str) -> bool {
    let registered = worker.renderers.iter().any(|r| r.name == command);
    registered || (worker.any_command && !NAMED_COMMANDS.contains(&command))
}

/// A step's requirements, resolved once when the job is loaded.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    amounts: Vec<Amount>,
    attributes: Vec<Attribute>,
}

#[derive(Debug, Clone)]
struct Amount {
    name: String,
    min: Option<f64>,
    max: Option<f64>,
}

#[derive(Debug, Clone)]
struct Attribute {
    name: String,
    any_of: Vec<String>,
    all_of: Vec<String>,
}

impl Requirements {
    pub fn from_openjd(requirements: Option<&HostRequirements>) -> Self {
        let Some(requirements) = requirements else {
            return Self::default();
        };
        let amounts = requirements.amounts.iter().flatten();
        let attributes = requirements.attributes.iter().flatten();
        Self {
            amounts: amounts
                .map(|a| Amount {
                    name: a.name.clone(),
                    min: a.min,
                    max: a.max,
                })
                .collect(),
            attributes: attributes
                .map(|a| Attribute {
                    name: a.name.clone(),
                    any_of: a.any_of.clone().unwrap_or_default(),
                    all_of: a.all_of.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Whether the step asks for at least one GPU.
    pub fn needs_gpu(&self) -> bool {
        self.amounts
            .iter()
            .any(|a| a.name == "amount.worker.gpu" && a.min.unwrap_or(0.0) >= 1.0)
    }

    pub fn matches(&self, worker: &WorkerCapabilities) -> bool {
        self.amounts.iter().all(|a| a.matches(worker)) && self.attributes_match(worker)
    }

    /// The requirements the worker does not meet, each described for people
    /// ("amount.worker.gpu >= 1", "attr.pool all of fx, fast").
    pub fn unmet(&self, worker: &WorkerCapabilities) -> Vec<String> {
        let amounts = self
            .amounts
            .iter()
            .filter(|a| !a.matches(worker))
            .map(Amount::describe);
        let attributes = self
            .attributes
            .iter()
            .filter(|a| !a.matches(&worker_attribute(&worker.attributes, &worker.os, &a.name)))
            .map(Attribute::describe);
        amounts.chain(attributes).collect()
    }

    fn attributes_match(&self, worker: &WorkerCapabilities) -> bool {
        self.attributes
            .iter()
            .all(|a| a.matches(&worker_attribute(&worker.attributes, &worker.os, &a.name)))
    }
}

impl Amount {
    fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("{} between {min} and {max}", self.name),
            (Some(min), None) => format!("{} >= {min}", self.name),
            (None, Some(max)) => format!("{} <= {max}", self.name),
            (None, None) => self.name.clone(),
        }
    }

    fn matches(&self, worker: &WorkerCapabilities) -> bool {
        let have = match self.name.as_str() {
            "amount.worker.vcpu" => f64::from(worker.cpu_cores),
            "amount.worker.memory" => worker.memory_bytes as f64 / MIB,
            "amount.worker.gpu" => f64::from(worker.gpus),
            "amount.worker.gpu.memory" => worker.gpu_memory_bytes as f64 / MIB,
            // An amount the worker does not declare is zero.
            other => custom_amount(&worker.attributes, other).unwrap_or(0.0),
        };
        self.min.is_none_or(|min| have >= min) && self.max.is_none_or(|max| have <= max)
    }
}

impl Attribute {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.any_of.is_empty() {
            parts.push(format!("any of {}", self.any_of.join(", ")));
        }
        if !self.all_of.is_empty() {
            parts.push(format!("all of {}", self.all_of.join(", ")));
        }
        format!("{} {}", self.name, parts.join(" and "))
    }

    fn matches(&self, values: &[String]) -> bool {
        let has = |wanted: &String| values.iter().any(|v| v.eq_ignore_ascii_case(wanted));
        (self.any_of.is_empty() || self.any_of.iter().any(has)) && self.all_of.iter().all(has)
    }
}

fn worker_attribute(attributes: &HashMap<String, String>, os: &str, name: &str) -> Vec<String> {
    if name == "attr.worker.os.family" {
        return vec![os.to_owned()];
    }
    let key = name.strip_prefix("attr.").unwrap_or(name);
    attributes
        .get(key)
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default()
}

fn custom_amount(attributes: &HashMap<String, String>, name: &str) -> Option<f64> {
    let key = name.strip_prefix("amount.").unwrap_or(name);
    attributes.get(key)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_jobmodel::{AmountRequirement, AttributeRequirement};

    fn worker(gpus: u32, attributes: &[(&str, &str)]) -> WorkerCapabilities {
        WorkerCapabilities {
            cpu_cores: 8,
            memory_bytes: 16 * 1024 * 1024 * 1024,
            gpus,
            gpu_memory_bytes: u64::from(gpus) * 8 * 1024 * 1024 * 1024,
            os: "linux".into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn named_renderers_need_registering_and_other_programs_a_sandboxing_worker() {
        let mut worker = worker(0, &[]);
        worker.renderers = vec![kiln_proto::v1::Renderer {
            name: "blender".into(),
            version: "3.4.1".into(),
        }];
        assert!(runs_command(&worker, "blender"));
        assert!(
            !runs_command(&worker, "bash"),
            "this worker runs only its renderers"
        );
        worker.any_command = true;
        assert!(runs_command(&worker, "bash"));
        assert!(runs_command(&worker, "/usr/bin/python3"));
        assert!(
            !runs_command(&worker, "ffmpeg"),
            "a named renderer still needs the worker to have it"
        );
    }

    fn amount(name: &str, min: f64) -> AmountRequirement {
        AmountRequirement {
            name: name.into(),
            min: Some(min),
            max: None,
        }
    }

    fn requirements(
        amounts: Vec<AmountRequirement>,
        attributes: Vec<AttributeRequirement>,
    ) -> Requirements {
        Requirements::from_openjd(Some(&HostRequirements {
            amounts: Some(amounts),
            attributes: Some(attributes),
        }))
    }

    #[test]
    fn gpu_steps_need_gpu_workers() {
        let gpu_step = requirements(vec![amount("amount.worker.gpu", 1.0)], vec![]);
        assert!(gpu_step.needs_gpu());
        assert!(!gpu_step.matches(&worker(0, &[])));
        assert!(gpu_step.matches(&worker(1, &[])));
        assert!(!Requirements::default().needs_gpu());
        assert!(Requirements::default().matches(&worker(0, &[])));
    }

    #[test]
    fn amounts_compare_in_openjd_units() {
        let big = requirements(vec![amount("amount.worker.memory", 32.0 * 1024.0)], vec![]);
        assert!(!big.matches(&worker(0, &[])));
        let small = requirements(vec![amount("amount.worker.vcpu", 4.0)], vec![]);
        assert!(small.matches(&worker(0, &[])));
    }

    #[test]
    fn attributes_match_os_and_tags() {
        let wants = requirements(
            vec![],
            vec![
                AttributeRequirement {
                    name: "attr.worker.os.family".into(),
                    any_of: Some(vec!["linux".into()]),
                    all_of: None,
                },
                AttributeRequirement {
                    name: "attr.pool".into(),
                    any_of: None,
                    all_of: Some(vec!["fx".into(), "fast".into()]),
                },
            ],
        );
        assert!(wants.matches(&worker(0, &[("pool", "fx, fast")])));
        assert!(!wants.matches(&worker(0, &[("pool", "fx")])));
        assert_eq!(
            wants.unmet(&worker(0, &[("pool", "fx")])),
            vec!["attr.pool all of fx, fast".to_owned()]
        );
        assert!(wants.unmet(&worker(0, &[("pool", "fast,fx")])).is_empty());
        assert!(!wants.matches(&worker(0, &[])));
    }
}
